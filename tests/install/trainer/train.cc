// A minimal trainer built against an *installed* lifeline (tests/install/install_test.sh): the public
// client API only (lifeline/client.h, lifeline/version.h), as README.md shows it. Its state is a
// deterministic hash chain over the steps, so a run stopped, resumed and finished ends with the
// same state as one that ran straight through.
//
//   train STEPS DELAY_MS RESULT_FILE
// prints "step N" after each step, "resumed from step N" / "starting at step 0", and writes the
// final state as 16 hex digits to RESULT_FILE.
#include <lifeline/client.h>
#include <lifeline/version.h>

#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

namespace {

// One training step: splitmix64 of the state and the step.
uint64_t advance(uint64_t state, uint64_t step) {
  uint64_t z = state + step * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Reads the state a checkpoint holds (state.bin: 8 bytes); exits 1 when it cannot.
uint64_t load(const std::string& folder) {
  std::ifstream in(folder + "/state.bin", std::ios::binary);
  uint64_t state = 0;
  if (!in.read(reinterpret_cast<char*>(&state), sizeof state)) {
    std::fprintf(stderr, "train: cannot read %s/state.bin\n", folder.c_str());
    std::exit(1);
  }
  return state;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: train STEPS DELAY_MS RESULT_FILE (lifeline %s)\n", LIFELINE_VERSION);
    return 2;
  }
  const uint64_t total = std::strtoull(argv[1], nullptr, 10);
  const auto delay = std::chrono::milliseconds(std::strtoull(argv[2], nullptr, 10));
  const std::string result_file = argv[3];

  lifeline::Client c = lifeline::Client::from_env();
  uint64_t step = 0;
  uint64_t state = 42;
  if (auto r = c.resume()) {
    state = load(r->path);
    step = r->step;
    std::printf("resumed from step %" PRIu64 "\n", step);
  } else {
    std::printf("starting at step 0\n");
  }
  std::fflush(stdout);
  while (step < total) {
    state = advance(state, step);
    ++step;
    std::printf("step %" PRIu64 "\n", step);
    std::fflush(stdout);
    std::this_thread::sleep_for(delay);
    if (c.should_checkpoint(step)) {
      lifeline::Checkpoint w = c.begin_checkpoint(step);
      w.write_file("state.bin", &state, sizeof state);
      if (!w.commit({{"val_loss", 1.0 / static_cast<double>(step)}})) return 1;
      std::printf("checkpoint committed at step %" PRIu64 "\n", step);
      std::fflush(stdout);
      if (c.should_exit()) {
        std::printf("stopping at step %" PRIu64 "\n", step);
        return 0;
      }
    }
  }
  std::ofstream out(result_file);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016" PRIx64, state);
  out << hex << "\n";
  std::printf("finished %" PRIu64 " steps: %s\n", total, hex);
  return out.good() ? 0 : 1;
}
