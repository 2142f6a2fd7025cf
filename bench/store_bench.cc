// Store benchmark: what a checkpoint costs against what the disk and the page cache allow.
//   save   : CheckpointWriter::write_file + commit of one N MiB file (write, checksum, fsync,
//            manifest, rename, directory fsync) against `dd bs=4M conv=fsync` of the same bytes;
//   verify : a full verify (read + checksum) against `cat FILE > /dev/null`, both warm-cache;
//   resume : choose_resume over M small checkpoints, newest valid / newest 10 corrupt.
//   --neighbour R (only this): what a save costs a memory-bound neighbour, i.e. a training step
//            beside a background save. A thread runs a STREAM triad over three 256 MiB arrays
//            and times each pass; R saves and R `dd` runs alternate, 2 s apart; the table gives
//            the neighbour's time lost per save against per `dd` (its passes that overlap the
//            run, minus the median pass between runs).
// Save and dd alternate (which goes first swaps every run) after one warm-up pair; the
// table gives median and best.
// Usage: store_bench DIR [--mib N] [--runs R] [--many M] [--neighbour R]   (DIR: an empty scratch folder)
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <stdexcept>
#include <string>
#include <vector>

#include "spawn_timing.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/retention.h"
#include "support/fault_injection_fs.h"
#include "neighbour.h"

namespace {
using namespace lifeline;
namespace stdfs = std::filesystem;
using lifeline::bench::make_data;
using lifeline::bench::now_s;
using lifeline::bench::run_timed;

void write_plain(const std::string& path, const std::vector<char>& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  for (size_t off = 0; off < data.size();) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n <= 0) throw std::runtime_error("cannot write " + path);
    off += size_t(n);
  }
  ::fsync(fd);
  ::close(fd);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

std::string fs_type(const std::string& dir) {
  struct statfs s {};
  if (statfs(dir.c_str(), &s) != 0) return "?";
  switch (s.f_type) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs";
    case 0x6969: return "nfs";
    case 0x0BD00BD0: return "lustre";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(s.f_type));
      return buf;
    }
  }
}

// Saves and dd runs alternating beside a Neighbour; prints the neighbour's time lost per run.
void neighbour_bench(const std::string& dir, const std::vector<char>& data, const std::string& source,
                     const std::string& count, size_t runs) {
  std::vector<bench::Neighbour::Span> spans;  // kind 1: a save, 0: a dd run
  std::string ckpt = dir + "/ckpt", dd_out = dir + "/dd.bin";
  stdfs::create_directories(ckpt);
  auto gap = [] { std::this_thread::sleep_for(std::chrono::seconds(2)); };
  bench::Neighbour neighbour;
  gap();
  for (size_t r = 0; r < runs; ++r) {
    for (int turn = 0; turn < 2; ++turn) {
      bool save = (turn == 0) == (r % 2 == 0);
      ::sync();
      gap();
      double t0 = now_s();
      if (save) {
        CheckpointWriter w(default_file_system(), ckpt, r + 1, CheckpointMeta{});
        w.write_file("model.bin", data.data(), data.size());
        std::string path = w.commit().path;
        spans.push_back({t0, now_s(), 1});
        stdfs::remove_all(path);
      } else {
        run_timed({"dd", "if=" + source, "of=" + dd_out, "bs=4M", "count=" + count, "conv=fsync", "status=none"});
        spans.push_back({t0, now_s(), 0});
        stdfs::remove(dd_out);
      }
    }
  }
  gap();
  neighbour.stop();
  const double typical = neighbour.median_pass();
  std::vector<double> lost_save, lost_dd, secs_save, secs_dd;
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto& m = spans[i];
    (m.kind ? lost_save : lost_dd).push_back(neighbour.lost(spans, i));
    (m.kind ? secs_save : secs_dd).push_back(m.to - m.from);
  }
  std::printf("\n| neighbour (STREAM triad, %.0f ms a pass alone) beside a %zu MiB save | lifeline save | `dd bs=4M conv=fsync` | ratio (median) |\n",
              typical * 1e3, data.size() >> 20);
  std::printf("|---|---|---|---|\n");
  std::printf("| neighbour time lost per run, s (median / each) | %.2f /", median(lost_save));
  for (double x : lost_save) std::printf(" %.2f", x);
  std::printf(" | %.2f /", median(lost_dd));
  for (double x : lost_dd) std::printf(" %.2f", x);
  std::printf(" | %.2f |\n", median(lost_save) / std::max(median(lost_dd), 1e-3));
  std::printf("| run time, s (median) | %.2f | %.2f | %.2f |\n", median(secs_save), median(secs_dd),
              median(secs_save) / median(secs_dd));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: store_bench DIR [--mib N] [--runs R] [--many M] [--neighbour R]\n");
    return 2;
  }
  std::string dir = stdfs::absolute(argv[1]).string();
  size_t mib = 1024, runs = 3, many = 10000, neighbour = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    size_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--mib") mib = v;
    else if (k == "--runs") runs = v;
    else if (k == "--many") many = v;
    else if (k == "--neighbour") neighbour = v;
  }
  if (mib % 4 != 0 || mib == 0 || runs == 0) {
    std::fprintf(stderr, "store_bench: --mib must be a positive multiple of 4, --runs positive\n");
    return 2;
  }
  try {
    stdfs::create_directories(dir);
    const size_t bytes = mib << 20;
    std::printf("store_bench: %zu MiB, %zu runs each%s, in %s (%s)\n", mib, neighbour ? neighbour : runs,
                neighbour ? " beside a memory-bound neighbour" : "", dir.c_str(), fs_type(dir).c_str());
    std::vector<char> data = make_data(bytes);
    std::string source = dir + "/source.bin", dd_out = dir + "/dd.bin", ckpt = dir + "/ckpt";
    write_plain(source, data);  // dd's input: the same bytes, in the page cache
    stdfs::create_directories(ckpt);
    const std::string count = std::to_string(mib / 4);
    if (neighbour > 0) {
      neighbour_bench(dir, data, source, count, neighbour);
      stdfs::remove(source);
      return 0;
    }

    // ---- save vs dd, alternating -------------------------------------------------------
    std::vector<double> save_t, dd_t;
    std::string last;
    // Run 0 is a warm-up pair, not counted: the first writes of a fresh folder pay for block
    // allocation and for the writeback of the source file.
    for (size_t r = 0; r <= runs; ++r) {
      for (int turn = 0; turn < 2; ++turn) {
        bool do_save = (turn == 0) == (r % 2 == 0);
        std::vector<double>& times = do_save ? save_t : dd_t;
        size_t before = times.size();
        ::sync();  // the previous run's writeback and deletions do not leak into this one
        if (do_save) {
          if (!last.empty()) stdfs::remove_all(last), ::sync();
          double t0 = now_s();
          CheckpointWriter w(default_file_system(), ckpt, r + 1, CheckpointMeta{});
          w.write_file("model.bin", data.data(), data.size());
          last = w.commit().path;
          save_t.push_back(now_s() - t0);
        } else {
          stdfs::remove(dd_out);
          ::sync();
          dd_t.push_back(run_timed({"dd", "if=" + source, "of=" + dd_out, "bs=4M", "count=" + count, "conv=fsync",
                                    "status=none"}));
        }
        if (r == 0) times.resize(before);  // warm-up
      }
    }
    stdfs::remove(dd_out);

    // ---- verify vs cat, warm cache -------------------------------------------------------
    std::string model = last + "/model.bin";
    run_timed({"cat", model});  // warm
    std::vector<double> verify_t, cat_t;
    for (size_t r = 0; r < runs; ++r) {
      for (int turn = 0; turn < 2; ++turn) {
        if ((turn == 0) == (r % 2 == 0)) {
          double t0 = now_s();
          CheckpointInfo info = verify_checkpoint(last, VerifyMode::full);
          verify_t.push_back(now_s() - t0);
          if (!info.valid) throw std::runtime_error("benchmark checkpoint does not verify: " + info.problem);
        } else {
          cat_t.push_back(run_timed({"cat", model}));
        }
      }
    }
    stdfs::remove_all(last);
    stdfs::remove(source);

    // ---- resume selection over many checkpoints -----------------------------------------
    double list_ms = 0, valid_ms = 0, corrupt_ms = 0, gc_ms = 0, create_s = 0;
    if (many > 0) {
      std::string mdir = dir + "/many";
      stdfs::create_directories(mdir);
      NoSyncFileSystem nosync(default_file_system());  // setup only: durability is not measured here
      std::vector<char> small = make_data(4096);
      double t0 = now_s();
      for (size_t s = 1; s <= many; ++s) {
        CheckpointWriter w(nosync, mdir, s * 10, CheckpointMeta{});
        w.write_file("model.bin", small.data(), small.size());
        w.commit({{"val_loss", 1.0 / double(s)}});
      }
      create_s = now_s() - t0;
      t0 = now_s();
      size_t n = checkpoint_folders(mdir).size();
      list_ms = (now_s() - t0) * 1e3;
      t0 = now_s();
      ResumeChoice c = choose_resume(mdir);
      valid_ms = (now_s() - t0) * 1e3;
      if (n != many || !c.resume || c.resume->step != many * 10) throw std::runtime_error("resume choice is wrong");
      for (size_t s = many; s > many - std::min<size_t>(10, many); --s) {
        std::string f = mdir + "/" + checkpoint_folder_name(s * 10) + "/model.bin";
        int fd = ::open(f.c_str(), O_WRONLY);
        (void)!::pwrite(fd, "X", 1, 100);  // same size: only a full verify sees it
        ::close(fd);
      }
      t0 = now_s();
      c = choose_resume(mdir);
      corrupt_ms = (now_s() - t0) * 1e3;
      if (many > 10 && (!c.resume || c.resume->step != (many - 10) * 10 || c.skipped.size() != 10))
        throw std::runtime_error("resume choice with corrupt checkpoints is wrong");
      Policy::Retention keep3;
      t0 = now_s();
      apply_retention(default_file_system(), mdir, keep3, std::nullopt, /*dry_run=*/true);
      gc_ms = (now_s() - t0) * 1e3;
    }

    // ---- table ---------------------------------------------------------------------------
    double mb = double(bytes) / 1048576.0;
    auto rate = [&](double s) { return mb / s; };
    std::printf("\n| measurement | lifeline MiB/s (median / best) | reference MiB/s (median / best) | ratio (median) | target |\n");
    std::printf("|---|---|---|---|---|\n");
    std::printf("| save %zu MiB: write_file + commit vs `dd bs=4M conv=fsync` | %.0f / %.0f | %.0f / %.0f | %.2f | >= 0.90 |\n",
                mib, rate(median(save_t)), rate(best(save_t)), rate(median(dd_t)), rate(best(dd_t)),
                median(dd_t) / median(save_t));
    std::printf("| full verify (warm cache) vs `cat > /dev/null` | %.0f / %.0f | %.0f / %.0f | %.2f | >= 0.80 |\n",
                rate(median(verify_t)), rate(best(verify_t)), rate(median(cat_t)), rate(best(cat_t)),
                median(cat_t) / median(verify_t));
    if (many > 0) {
      std::printf("\n| %zu checkpoints of 4 KiB (created in %.1f s without fsync) | ms |\n|---|---|\n", many, create_s);
      std::printf("| list folder names (checkpoint_folders) | %.1f |\n", list_ms);
      std::printf("| choose_resume, newest valid | %.1f |\n", valid_ms);
      std::printf("| choose_resume, newest 10 corrupt (11 full verifies) | %.1f |\n", corrupt_ms);
      std::printf("| apply_retention dry run, keep_last 3 (1 full + %zu quick verifies) | %.1f |\n", many - 1, gc_ms);
    }
    std::printf("\nraw seconds: save");
    for (double t : save_t) std::printf(" %.3f", t);
    std::printf("; dd");
    for (double t : dd_t) std::printf(" %.3f", t);
    std::printf("; verify");
    for (double t : verify_t) std::printf(" %.3f", t);
    std::printf("; cat");
    for (double t : cat_t) std::printf(" %.3f", t);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "store_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
