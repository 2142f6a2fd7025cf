// Microbenchmark: Client::should_checkpoint with no request pending, against a stat() of a
// halt file (what file-based tools poll). Prints ns per call for both and their ratio.
// The fast path must make no system call: bench/run.sh runs `fast_path_bench N --fast-only`
// under `strace -f -c` for two values of N and shows that the syscall count does not grow.
// Usage: fast_path_bench [CALLS] [--fast-only] [--json]
#include <sys/stat.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "control/control_block.h"
#include "lifeline/client.h"

int main(int argc, char** argv) {
  uint64_t n = 200000000ull;
  bool fast_only = false, json = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--fast-only"))
      fast_only = true;
    else if (!std::strcmp(argv[i], "--json"))
      json = true;
    else
      n = std::strtoull(argv[i], nullptr, 10);
  }
  lifeline::ControlBlock block = lifeline::ControlBlock::create("bench");
  block.u64(lifeline::layout::kEveryStepsOff).store(0);
  setenv("LIFELINE_CONTROL", block.name().c_str(), 1);
  setenv("LIFELINE_CKPT_DIR", "/tmp", 1);
  lifeline::Client client = lifeline::Client::from_env();

  using clock = std::chrono::steady_clock;
  uint64_t hits = 0;
  auto t0 = clock::now();
  for (uint64_t i = 1; i <= n; ++i) hits += client.should_checkpoint(i);
  double fast_ns = std::chrono::duration<double, std::nano>(clock::now() - t0).count() / double(n);
  if (fast_only) {
    std::printf("should_checkpoint (no request): %.3f ns/call over %llu calls\n", fast_ns, (unsigned long long)n);
    return hits == 0 ? 0 : 1;
  }

  const uint64_t m = n / 1000 + 1;
  struct stat st {};
  auto t1 = clock::now();
  for (uint64_t i = 0; i < m; ++i) hits += ::stat("/tmp/lifeline-bench-halt-file", &st) == 0;
  double stat_ns = std::chrono::duration<double, std::nano>(clock::now() - t1).count() / double(m);

  if (json) {
    std::printf("{\"fast_ns\": %.4f, \"fast_calls\": %llu, \"stat_ns\": %.2f, \"stat_calls\": %llu}\n", fast_ns,
                (unsigned long long)n, stat_ns, (unsigned long long)m);
  } else {
    std::printf("should_checkpoint (no request): %.3f ns/call over %llu calls\n", fast_ns, (unsigned long long)n);
    std::printf("stat() of a halt file:          %.1f ns/call over %llu calls\n", stat_ns, (unsigned long long)m);
    std::printf("ratio stat/should_checkpoint:   %.0fx\n", stat_ns / fast_ns);
  }
  return hits == 0 ? 0 : 1;
}
