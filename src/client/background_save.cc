#include "client/background_save.h"

namespace lifeline {

BackgroundSave::~BackgroundSave() { wait(); }

void BackgroundSave::start(std::function<bool()> job) {
  wait();
  busy_.store(true, std::memory_order_release);
  try {
    thread_ = std::thread([this, job = std::move(job)] {
      last_ok_ = job();
      busy_.store(false, std::memory_order_release);
    });
  } catch (...) {
    busy_.store(false, std::memory_order_release);
    throw;
  }
}

bool BackgroundSave::wait() {
  if (thread_.joinable()) thread_.join();
  return last_ok_;
}

}  // namespace lifeline
