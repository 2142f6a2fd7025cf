// A full disk, a read-only remount and I/O errors, injected at every operation of a commit:
// the commit fails with a message naming the error, cleans its staging folder when the file
// system still lets it, and never touches an older checkpoint.
#include <doctest.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "common/errors.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/retention.h"
#include "support/fault_injection_fs.h"
#include "support/store_fixtures.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

// Faults are injected, not provoked: no disk needed, so /dev/shm keeps hundreds of runs fast.
const bool scratch_on_tmpfs = prefer_tmpfs_scratch();

// A checkpoint with a file the trainer wrote itself (in its own subfolder) and one written
// through the writer (in a folder the writer creates).
const TaggedCheckpoint ckpt{{"sub/weights.bin", "opt/state.bin"},
                            /*file_bytes=*/2000, /*trainer_appends=*/1, /*val_loss_metric=*/false};

// What the directory holds before the failing commit, and which checkpoints must survive it.
struct Scenario {
  const char* name;
  std::function<void(const std::string&)> setup;
  uint64_t new_step;
  std::vector<uint64_t> older_valid;  // newest last
};

std::vector<Scenario> scenarios() {
  return {
      {"a new step", [](const std::string& d) { ckpt.save(disk(), d, 10, "old"), ckpt.save(disk(), d, 20, "old"); }, 30, {10, 20}},
      {"the same step over an invalid folder",
       [](const std::string& d) {
         ckpt.save(disk(), d, 10, "old");
         fs::resize_file(ckpt.save(disk(), d, 20, "old").path + "/opt/state.bin", 7);
       },
       20,
       {10}},
  };
}

void require_older_intact_and_resumable(const std::string& dir, const Scenario& s) {
  for (uint64_t step : s.older_valid) {
    std::string p = dir + "/" + checkpoint_folder_name(step);
    CHECK(verify_checkpoint(p, VerifyMode::full).valid);
    for (const auto& f : ckpt.files) CHECK(read_file(p + "/" + f) == ckpt.content(step, "old", f));
  }
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  bool is_new = c.resume->step == s.new_step;
  CHECK((is_new || c.resume->step == s.older_valid.back()));
  for (const auto& f : ckpt.files)
    CHECK(read_file(c.resume->path + "/" + f) == ckpt.content(c.resume->step, is_new ? "new" : "old", f));
}

uint64_t count_ops(const Scenario& s) {
  return count_operations(
      s.setup, [&](FileSystem& fsys, const std::string& dir) { ckpt.save(fsys, dir, s.new_step, "new"); });
}

// Fails operation `n` with `err`, once or from then on; checks what the commit leaves.
void fail_commit(const Scenario& s, uint64_t n, int err, bool persistent) {
  CheckpointDir t;
  const std::string& dir = t.dir;
  s.setup(dir);
  FaultInjectionFileSystem ffs(disk(), t.tmp.path());
  if (persistent)
    ffs.fail_from(n, err);
  else
    ffs.fail_at(n, err);
  std::string error;
  try {
    ckpt.save(ffs, dir, s.new_step, "new");
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::string op = ffs.op_log().at(n - 1);
  INFO(s.name << ": " << std::strerror(err) << (persistent ? " from " : " at ") << "operation " << op
              << "; error: " << error);
  if (error.empty()) {
    // Only removing the replaced folder comes after the commit is durable.
    CHECK(op.find(" remove_tree ") != std::string::npos);
    CHECK(op.find("/.trash-") != std::string::npos);
  } else {
    CHECK(error.find(std::strerror(err)) != std::string::npos);
  }
  if (!persistent) {
    for (const auto& name : dot_names(dir)) CHECK(name.rfind(".trash-", 0) == 0);  // no staging garbage
  }
  require_older_intact_and_resumable(dir, s);

  // The disk is writable again: leftovers go, and the next commit succeeds.
  CHECK(remove_leftovers_after_reboot(dir).errors.empty());
  CHECK(dot_names(dir).empty());
  ckpt.save(disk(), dir, s.new_step, "new");
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  CHECK(c.resume->step == s.new_step);
}

void fail_every_operation(bool persistent) {
  for (const auto& s : scenarios()) {
    uint64_t total = count_ops(s);
    for (int err : {ENOSPC, EROFS, EIO})
      for (uint64_t n = 1; n <= total; ++n) fail_commit(s, n, err, persistent);
  }
}

}  // namespace

TEST_CASE("a commit that meets ENOSPC, EROFS or EIO once fails clearly, leaves no staging folder and keeps older checkpoints valid") {
  fail_every_operation(false);
}

TEST_CASE("a commit on a disk that stays full or read-only fails clearly and keeps older checkpoints valid; its leftovers go once the disk recovers") {
  fail_every_operation(true);
}

TEST_CASE("an injected error reads like the real one: operation, path and errno text") {
  TempDir t;
  FaultInjectionFileSystem ffs(disk(), t.path());
  ffs.fail_at(1, ENOSPC);
  try {
    ffs.make_dir(t / "x");
    FAIL("no error");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()) == "mkdir " + (t / "x") + ": " + std::strerror(ENOSPC));
  }
  CHECK_FALSE(fs::exists(t / "x"));
}

TEST_CASE("make_dirs creates every missing parent and fsyncs each one's parent, so a power loss keeps them") {
  TempDir d;
  PosixFileSystem posix;
  FaultInjectionFileSystem faults(posix, d.path());
  faults.make_dirs(d / "runs/a/ckpt/");
  CHECK(faults.pending_count() == 0);
  faults.lose_power();
  CHECK(fs::is_directory(d / "runs/a/ckpt"));
  // An existing directory: nothing made, nothing synced.
  faults.make_dirs(d / "runs/a/ckpt");
  CHECK(faults.op_count() == 0);
  // A file in the way is refused.
  std::ofstream(d / "runs/file") << "x";
  CHECK_THROWS_WITH_AS(faults.make_dirs(d / "runs/file/sub"), doctest::Contains("Not a directory"), SystemError);
}

TEST_CASE("read_file reads a small regular file and says why it did not read anything else") {
  TempDir d;
  FileSystem& posix = default_file_system();
  std::ofstream(d / "small") << "hello";
  FileRead r = posix.read_file(d / "small", 5);
  CHECK(r.error == 0);
  CHECK(r.content == "hello");
  r = posix.read_file(d / "small", 4);
  CHECK(r.error == EFBIG);
  CHECK(r.size == 5);
  CHECK(r.content.empty());
  CHECK(posix.read_file(d / "missing", 100).error == ENOENT);
  fs::create_symlink(d / "small", d / "link");
  CHECK(posix.read_file(d / "link", 100).error == ELOOP);
  CHECK(posix.read_file(d.path(), 100).error == EINVAL);
}
