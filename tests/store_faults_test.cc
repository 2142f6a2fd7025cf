// A full disk, a read-only remount and I/O errors, injected at every operation of a commit:
// the commit fails with a message naming the error, cleans its staging folder when the file
// system still lets it, and never touches an older checkpoint.
#include <doctest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/fault_injection_fs.h"
#include "store/retention.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;
namespace fs = std::filesystem;

namespace {

// Faults are injected, not provoked: no disk needed, so /dev/shm keeps hundreds of runs fast.
const bool scratch_on_tmpfs = [] {
  if (std::getenv("TMPDIR") || access("/dev/shm", W_OK) != 0) return false;
  return setenv("TMPDIR", "/dev/shm", 1) == 0;
}();

FileSystem& disk() {
  static NoSyncFileSystem fs(default_file_system());
  return fs;
}

std::string content(uint64_t step, const std::string& tag, const std::string& file) {
  std::string unit = tag + ":" + file + ":" + std::to_string(step) + ";";
  std::string out;
  while (out.size() < 2000) out += unit;
  return out;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::vector<std::string> kFiles = {"sub/weights.bin", "opt/state.bin"};

// A checkpoint with a file the trainer wrote itself (in its own subfolder) and one written
// through the writer (in a folder the writer creates).
CommitResult save(FileSystem& fsys, const std::string& dir, uint64_t step, const std::string& tag) {
  CheckpointWriter w(fsys, dir, step, CheckpointMeta{});
  fsys.make_dir(w.path() + "/sub");
  {
    auto f = fsys.create_file(w.path() + "/sub/weights.bin");
    std::string a = content(step, tag, "sub/weights.bin");
    f->append(a.data(), a.size());
    f->close();
  }
  std::string b = content(step, tag, "opt/state.bin");
  w.write_file("opt/state.bin", b.data(), b.size());
  return w.commit();
}

// What the directory holds before the failing commit, and which checkpoints must survive it.
struct Scenario {
  const char* name;
  std::function<void(const std::string&)> setup;
  uint64_t new_step;
  std::vector<uint64_t> older_valid;  // newest last
};

std::vector<Scenario> scenarios() {
  return {
      {"a new step", [](const std::string& d) { save(disk(), d, 10, "old"), save(disk(), d, 20, "old"); }, 30, {10, 20}},
      {"the same step over an invalid folder",
       [](const std::string& d) {
         save(disk(), d, 10, "old");
         fs::resize_file(save(disk(), d, 20, "old").path + "/opt/state.bin", 7);
       },
       20,
       {10}},
  };
}

std::vector<std::string> dot_names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string()[0] == '.') out.push_back(e.path().filename().string());
  return out;
}

void require_older_intact_and_resumable(const std::string& dir, const Scenario& s) {
  for (uint64_t step : s.older_valid) {
    std::string p = dir + "/" + checkpoint_folder_name(step);
    CHECK(verify_checkpoint(p, VerifyMode::full).valid);
    for (const auto& f : kFiles) CHECK(read(p + "/" + f) == content(step, "old", f));
  }
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  bool is_new = c.resume->step == s.new_step;
  CHECK((is_new || c.resume->step == s.older_valid.back()));
  for (const auto& f : kFiles) CHECK(read(c.resume->path + "/" + f) == content(c.resume->step, is_new ? "new" : "old", f));
}

uint64_t count_ops(const Scenario& s) {
  TempDir t;
  std::string dir = t / "ckpt";
  fs::create_directory(dir);
  s.setup(dir);
  FaultInjectionFileSystem ffs(disk(), t.path());
  save(ffs, dir, s.new_step, "new");
  return ffs.op_count();
}

// Fails operation `n` with `err`, once or from then on; checks what the commit leaves.
void fail_commit(const Scenario& s, uint64_t n, int err, bool persistent) {
  TempDir t;
  std::string dir = t / "ckpt";
  fs::create_directory(dir);
  s.setup(dir);
  FaultInjectionFileSystem ffs(disk(), t.path());
  if (persistent)
    ffs.fail_from(n, err);
  else
    ffs.fail_at(n, err);
  std::string error;
  try {
    save(ffs, dir, s.new_step, "new");
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
  LeftoverRules gone;
  gone.dead_writer_grace_ns = 0;
  gone.writer_alive = [](pid_t) { return false; };
  Policy::Retention keep_all;
  keep_all.keep_last = 100;
  CHECK(apply_retention(disk(), dir, keep_all, std::nullopt, false, gone).errors.empty());
  CHECK(dot_names(dir).empty());
  save(disk(), dir, s.new_step, "new");
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
