#pragma once
// A memory-bound neighbour for the benchmarks: what a save costs a training step that runs
// beside it. A thread runs a STREAM triad over three 256 MiB arrays and times each pass; the
// time it lost to a run is its passes that overlap the run minus its typical pass just before.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace lifeline::bench {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Runs the triad on a thread of its own from construction until stop().
class Neighbour {
 public:
  struct Pass {
    double start, seconds;
  };
  // One measured run: [from, to] on now_seconds()'s clock, and which kind it was.
  struct Span {
    double from, to;
    int kind;
  };

  Neighbour() : a_(kFloats, 1.f), b_(kFloats, 2.f), c_(kFloats, 3.f) { thread_ = std::thread([this] { run(); }); }
  ~Neighbour() { stop(); }
  Neighbour(const Neighbour&) = delete;
  Neighbour& operator=(const Neighbour&) = delete;

  // Stops the thread; then lost() and median_pass() may be read.
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // The neighbour's time lost to spans[i]: its passes that overlap the span (or begin within
  // 0.5 s after it: writeback outlives the call), each minus the median pass of the 1.5 s
  // just before the span (so a drift of the machine's speed over the run cancels). Callers
  // leave a quiet gap of 2 s before each span, after their own clean-up.
  double lost(const std::vector<Span>& spans, size_t i) const {
    const Span& s = spans[i];
    const double quiet_from = std::max({s.from - 1.5, i ? spans[i - 1].to + 0.5 : 0.0, passes_.front().start + 1.0});
    std::vector<double> quiet;
    for (const auto& p : passes_)
      if (p.start >= quiet_from && p.start + p.seconds <= s.from) quiet.push_back(p.seconds);
    if (quiet.size() < 5) throw std::runtime_error("too few neighbour passes between runs (make the gaps longer)");
    std::nth_element(quiet.begin(), quiet.begin() + long(quiet.size() / 2), quiet.end());
    const double typical = quiet[quiet.size() / 2];
    double lost = 0;
    for (const auto& p : passes_)
      if (p.start + p.seconds > s.from && p.start < s.to + 0.5) lost += p.seconds - typical;
    return lost;
  }

  // The median pass over the whole run, for the table's header.
  double median_pass() const {
    std::vector<double> all;
    for (const auto& p : passes_) all.push_back(p.seconds);
    if (all.empty()) throw std::runtime_error("the neighbour made no pass");
    std::nth_element(all.begin(), all.begin() + long(all.size() / 2), all.end());
    return all[all.size() / 2];
  }

 private:
  static constexpr size_t kFloats = 64u << 20;
  void run() {
    while (!stop_) {
      double t0 = now_seconds();
      for (size_t i = 0; i < kFloats; ++i) a_[i] = b_[i] + 0.5f * c_[i];
      passes_.push_back({t0, now_seconds() - t0});
      std::swap(a_, b_);
    }
  }
  std::vector<float> a_, b_, c_;
  std::vector<Pass> passes_;  // written by the thread; read after stop()
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace lifeline::bench
