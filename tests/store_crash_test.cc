// Crash consistency of the commit protocol, the leveldb fault_injection_test way: the commit
// runs on a FaultInjectionFileSystem that loses power at every one of its operations in turn;
// whatever was not durable is dropped; then the directory must resume from the previous
// newest valid checkpoint or from the new one (never neither, never a damaged one), and the
// next commit must succeed.
#include <doctest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/retention.h"
#include "support/fault_injection_fs.h"
#include "support/store_fixtures.h"

using namespace lifeline;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

// Durability is simulated, so these runs need no disk: a few hundred setups and teardowns go
// to /dev/shm when it exists (10x faster than a disk mounted with `discard`), unless TMPDIR
// says otherwise.
const bool scratch_on_tmpfs = prefer_tmpfs_scratch();

// A checkpoint of three files in two subfolders: the trainer writes one itself (its own
// subfolder, no fsync: commit must sync it, in two appends) and the writer writes two (one in
// a folder the writer creates); the commit records val_loss.
const TaggedCheckpoint ckpt{{"sub/weights.bin", "opt/state.bin", "meta.json"},
                            /*file_bytes=*/3000, /*trainer_appends=*/2, /*val_loss_metric=*/true};

// One way a commit can meet a crash: what the directory holds before, what is committed, and
// which checkpoint counts as "old".
struct Scenario {
  std::function<void(const std::string& dir)> setup;
  uint64_t new_step;
  uint64_t old_step;
  uint64_t next_step;  // what the commit after the crash saves
};

// Step 10 and 20 valid; the commit saves step 30.
Scenario new_step_scenario() {
  return Scenario{[](const std::string& dir) {
                    ckpt.save(disk(), dir, 10, "old");
                    ckpt.save(disk(), dir, 20, "old");
                  },
                  30, 20, 40};
}

// Step 10 valid, step 20 committed but damaged; the commit saves step 20 again, replacing it.
Scenario replace_invalid_scenario() {
  return Scenario{[](const std::string& dir) {
                    ckpt.save(disk(), dir, 10, "old");
                    std::string p = ckpt.save(disk(), dir, 20, "old").path;
                    fs::resize_file(p + "/sub/weights.bin", 100);
                  },
                  20, 10, 20};
}

// The resume point is the old or the new checkpoint with exactly its files, and every other
// committed folder is either valid or the damaged one the scenario started with.
void require_old_or_new(const std::string& dir, const Scenario& s) {
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  bool is_new = c.resume->step == s.new_step;
  REQUIRE((is_new || c.resume->step == s.old_step));
  for (const auto& f : ckpt.files)
    CHECK(read_file(c.resume->path + "/" + f) == ckpt.content(c.resume->step, is_new ? "new" : "old", f));
  for (const auto& info : list_checkpoints(dir, VerifyMode::full)) {
    if (info.valid) continue;
    INFO("invalid folder after the crash: " << info.path << ": " << info.problem);
    CHECK(info.step == s.new_step);
    CHECK(read_file(info.path + "/meta.json") == ckpt.content(s.new_step, "old", "meta.json"));
  }
}

// Operations one commit of the scenario performs.
uint64_t count_ops(const Scenario& s) {
  return count_operations(
      s.setup, [&](FileSystem& fsys, const std::string& dir) { ckpt.save(fsys, dir, s.new_step, "new"); });
}

// Runs the scenario with power lost at operation `n`, keeping the oldest `keep` pending
// directory changes; returns how many were pending at the crash.
size_t crash_once(const Scenario& s, uint64_t n, size_t keep, std::string& crash_op) {
  CheckpointDir t;
  const std::string& dir = t.dir;
  s.setup(dir);
  FaultInjectionFileSystem ffs(disk(), t.tmp.path());
  ffs.crash_at(n);
  bool lost = false;
  try {
    ckpt.save(ffs, dir, s.new_step, "new");
  } catch (const PowerLoss& p) {
    lost = true;
    CHECK(p.op == n);
  }
  REQUIRE(lost);
  crash_op = ffs.op_log().at(n - 1);
  size_t pending = ffs.pending_count();
  ffs.lose_power(keep);
  INFO("power lost at operation " << crash_op << ", oldest " << keep << " of " << pending
                                  << " pending directory changes kept");
  require_old_or_new(dir, s);

  // Cleanup after the reboot (the writer is gone), then the next commit succeeds.
  RetentionReport r = remove_leftovers_after_reboot(dir);
  CHECK(r.errors.empty());
  for (const auto& name : names_in(dir)) CHECK(name[0] != '.');
  require_old_or_new(dir, s);
  CommitResult next = ckpt.save(disk(), dir, s.next_step, "new");
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  CHECK(c.resume->step == s.next_step);
  CHECK(c.resume->path == next.path);
  return pending;
}

void crash_at_every_operation(const Scenario& s) {
  uint64_t total = count_ops(s);
  CHECK(total >= 20);
  uint64_t runs = 0;
  for (uint64_t n = 1; n <= total; ++n) {
    std::string op;
    size_t pending = crash_once(s, n, 0, op);
    ++runs;
    for (size_t keep = 1; keep <= pending; ++keep, ++runs) crash_once(s, n, keep, op);
  }
  MESSAGE(total << " crash points, " << runs << " power losses simulated");
}

}  // namespace

TEST_CASE("a crash at any operation of a commit leaves the previous or the new checkpoint as resume point") {
  crash_at_every_operation(new_step_scenario());
}

TEST_CASE("a crash at any operation of a commit that replaces an invalid folder of the same step leaves the previous valid or the new checkpoint") {
  crash_at_every_operation(replace_invalid_scenario());
}

TEST_CASE("the fault file system counts every operation of the commit protocol") {
  CheckpointDir t;
  const std::string& dir = t.dir;
  replace_invalid_scenario().setup(dir);
  FaultInjectionFileSystem ffs(disk(), t.tmp.path());
  ckpt.save(ffs, dir, 20, "new");
  std::string log;
  for (const auto& l : ffs.op_log()) log += l + "\n";
  INFO(log);
  for (const char* op : {"create", "write", "fsync", "close", "sync_file", "make_dir", "rename", "sync_dir", "remove_tree"})
    CHECK(log.find(std::string(" ") + op + " ") != std::string::npos);
}

TEST_CASE("power lost after a completed commit keeps the new checkpoint") {
  CheckpointDir t;
  const std::string& dir = t.dir;
  Scenario s = new_step_scenario();
  s.setup(dir);
  FaultInjectionFileSystem ffs(disk(), t.tmp.path());
  ckpt.save(ffs, dir, 30, "new");
  ffs.lose_power();
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  CHECK(c.resume->step == 30);
}

TEST_CASE("without the final directory fsync a commit is not durable, and the simulation shows it") {
  // The model must be able to see a missing fsync, or the tests above prove nothing.
  CheckpointDir t;
  const std::string& dir = t.dir;
  ckpt.save(disk(), dir, 10, "old");
  FaultInjectionFileSystem ffs(disk(), t.tmp.path());
  std::string staging = dir + "/.staging-by-hand";
  ffs.make_dir(staging);
  auto f = ffs.create_file(staging + "/a.bin");
  f->append("abc", 3);
  f->sync();
  f->close();
  ffs.sync_dir(staging);
  ffs.rename(staging, dir + "/step-000000000020");
  CHECK(ffs.pending_count() == 2);  // the mkdir and the rename, both in `dir`
  ffs.lose_power();
  CHECK_FALSE(fs::exists(dir + "/step-000000000020"));
  CHECK_FALSE(fs::exists(staging));
  CHECK(fs::exists(dir + "/step-000000000010"));
}

TEST_CASE("unsynced data is truncated at power loss and synced data survives") {
  TempDir t;
  FaultInjectionFileSystem ffs(disk(), t.path());
  auto f = ffs.create_file(t / "data");
  f->append("durable", 7);
  f->sync();
  f->append("-lost", 5);
  f->close();
  ffs.sync_dir(t.path());
  ffs.lose_power();
  CHECK(read_file(t / "data") == "durable");
}

TEST_CASE("a removal is undone by power loss until its directory is synced") {
  TempDir t;
  fs::create_directory(t / "tree");
  std::ofstream(t / "tree/file") << "x";
  FaultInjectionFileSystem ffs(disk(), t.path());
  ffs.remove_tree(t / "tree");
  CHECK_FALSE(fs::exists(t / "tree"));
  ffs.lose_power();
  CHECK(read_file(t / "tree/file") == "x");
  ffs.remove_tree(t / "tree");
  ffs.sync_dir(t.path());
  ffs.lose_power();
  CHECK_FALSE(fs::exists(t / "tree"));
}
