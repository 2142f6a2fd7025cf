// Drain benchmark (issue 20, bench/tier_bench.sh): how fast the node-local tier's drain copies a
// committed checkpoint to the shared checkpoint directory, against `dd bs=4M conv=fsync` of the
// same bytes to the same directory.
//   LOCAL  : a folder on the fast local disk; the bench commits one checkpoint of N MiB there
//            (CheckpointWriter::write_file + commit, the store's own writer: one file of
//            incompressible bytes), once;
//   SHARED : a folder on the shared (slow) disk.
// Each run times lifeline::drain_checkpoint(default_file_system(), LOCAL, SHARED, step, token)
// (read + checksum + copy + fsync of the file, manifest, rename, directory fsync) and, alternating
// which goes first, `dd if=LOCAL/step-N/model.bin of=SHARED/dd.bin bs=4M conv=fsync`. Both read
// the same local file; `sync` before each; the copy is removed (and synced) after each. One
// untimed warm-up pair first. The last line is JSON: {"mib":..,"drain_s":[..],"dd_s":[..]}.
// Usage: drain_bench LOCAL SHARED [--mib N] [--runs R]
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "spawn_timing.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/drain.h"

namespace {
using namespace lifeline;
namespace stdfs = std::filesystem;
using lifeline::bench::make_data;
using lifeline::bench::now_s;
using lifeline::bench::run_timed;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string list(const std::vector<double>& v) {
  std::string s;
  for (double x : v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.4f", s.empty() ? "" : ",", x);
    s += buf;
  }
  return "[" + s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: drain_bench LOCAL SHARED [--mib N] [--runs R]\n");
    return 2;
  }
  const std::string local = stdfs::absolute(argv[1]).string(), shared = stdfs::absolute(argv[2]).string();
  size_t mib = 256, runs = 3;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const size_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--mib") mib = v;
    else if (k == "--runs") runs = v;
    else {
      std::fprintf(stderr, "drain_bench: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (mib % 4 != 0 || mib == 0 || runs == 0) {
    std::fprintf(stderr, "drain_bench: --mib must be a positive multiple of 4, --runs positive\n");
    return 2;
  }
  try {
    stdfs::create_directories(local);
    stdfs::create_directories(shared);
    const uint64_t step = 1;
    const std::vector<char> data = make_data(mib << 20);
    CommitResult c;
    {
      CheckpointWriter w(default_file_system(), local, step, CheckpointMeta{});
      w.write_file("model.bin", data.data(), data.size());
      c = w.commit();
    }
    const std::string source = c.path + "/model.bin", dd_out = shared + "/dd.bin";
    const std::string shared_ckpt = shared + "/" + checkpoint_folder_name(step);
    std::mt19937_64 rng{std::random_device{}()};
    const uint64_t pid_high = uint64_t(::getpid()) << 32;
    std::printf("drain_bench: %zu MiB, %zu runs each after a warm-up pair; local %s, shared %s\n", mib, runs,
                local.c_str(), shared.c_str());
    std::fflush(stdout);

    std::vector<double> drain_t, dd_t;
    for (size_t r = 0; r <= runs; ++r) {
      for (int turn = 0; turn < 2; ++turn) {
        const bool drain = (turn == 0) == (r % 2 == 0);
        ::sync();  // the previous run's writeback and deletions do not leak into this one
        double t = 0;
        if (drain) {
          const double t0 = now_s();
          const uint64_t token = pid_high | (rng() & 0xffffffffull);
          DrainResult d = drain_checkpoint(default_file_system(), local, shared, step, token);
          t = now_s() - t0;
          if (d.already_present || d.bytes != data.size())
            throw std::runtime_error("the drain did not copy the checkpoint (" + std::to_string(d.bytes) + " bytes)");
          if (r == runs) {  // the last copy: it must verify in full on the shared disk
            CheckpointInfo info = verify_checkpoint(shared_ckpt, VerifyMode::full);
            if (!info.valid) throw std::runtime_error("the drained checkpoint does not verify: " + info.problem);
          }
          stdfs::remove_all(shared_ckpt);
        } else {
          t = run_timed({"dd", "if=" + source, "of=" + dd_out, "bs=4M", "count=" + std::to_string(mib / 4),
                         "conv=fsync", "status=none"});
          stdfs::remove(dd_out);
        }
        ::sync();
        if (r > 0) (drain ? drain_t : dd_t).push_back(t);  // run 0: warm-up
        std::printf("drain_bench: run %zu %s %.3f s%s\n", r, drain ? "drain" : "dd   ", t, r == 0 ? " (warm-up)" : "");
        std::fflush(stdout);
      }
    }
    stdfs::remove_all(c.path);

    const double mb = double(mib);
    std::printf("\n| measurement | drain MiB/s (median) | dd MiB/s (median) | ratio |\n|---|---|---|---|\n");
    std::printf("| drain %zu MiB local -> shared vs `dd bs=4M conv=fsync` | %.1f | %.1f | %.2f |\n", mib,
                mb / median(drain_t), mb / median(dd_t), median(dd_t) / median(drain_t));
    std::printf("{\"mib\": %zu, \"drain_s\": %s, \"dd_s\": %s}\n", mib, list(drain_t).c_str(), list(dd_t).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "drain_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
