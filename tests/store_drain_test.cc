// The drain of a node-local checkpoint to the shared directory (store/drain.h, issue 20): a
// byte-exact, verified copy committed as atomically as a checkpoint; a damaged local copy is
// never published; a crash at any operation or a full shared disk leaves the shared directory
// with what it had (and at most a staging folder the next start removes).
#include <doctest.h>

#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/drain.h"
#include "store/retention.h"
#include "store/sharded.h"
#include "support/fault_injection_fs.h"
#include "support/store_fixtures.h"
#include "support/temp_dir.h"
#include "support/text_file.h"

using namespace lifeline;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

const uint64_t kToken = (uint64_t(4242) << 32) | 0xd7a1;

// A version-1 checkpoint of `step` in `dir` with a nested file, committed as a trainer does.
CommitResult commit_local(const std::string& dir, uint64_t step) {
  CheckpointWriter w(disk(), dir, step, CheckpointMeta{});
  std::string model(100000, 'm'), optim = "optimizer of step " + std::to_string(step);
  for (size_t i = 0; i < model.size(); ++i) model[i] = char('a' + (i * 7 + step) % 26);
  w.write_file("model.pt", model.data(), model.size());
  w.write_file("optim/state.pt", optim.data(), optim.size());
  return w.commit();
}

// A sharded checkpoint of `step`: rank 0 with a file, rank 1 without.
void commit_local_sharded(const std::string& dir, uint64_t step) {
  std::string staging = shared_staging_name(step, (uint64_t(77) << 32) | step);
  for (uint32_t r = 0; r < 2; ++r) {
    CheckpointWriter w(disk(), dir, step, CheckpointMeta{}, PartOf{staging, r, 2});
    if (r == 0) w.write_file("model.pt", "rank zero", 9);
    w.commit();
  }
  commit_sharded(disk(), dir, staging, step, 2, CheckpointMeta{}, mono_ns());
}

struct Tiers {
  TempDir t;
  std::string local = t / "local", shared = t / "shared";
  Tiers() {
    fs::create_directories(local);
    fs::create_directories(shared);
  }
};

}  // namespace

TEST_CASE("a drain copies a committed checkpoint byte for byte, verified, and it is valid in the shared directory") {
  Tiers d;
  commit_local(d.local, 40);
  std::vector<uint64_t> seen;
  DrainResult r = drain_checkpoint(disk(), d.local, d.shared, 40, kToken,
                                   [&](uint64_t done, uint64_t total) { seen.push_back(done * 1000 + total % 1000); });
  CHECK(r.path == d.shared + "/step-000000000040");
  CHECK(r.files == 2);
  CHECK(r.bytes == 100000 + std::string("optimizer of step 40").size());
  CHECK_FALSE(seen.empty());
  CheckpointInfo info = verify_checkpoint(r.path, VerifyMode::full);
  CHECK(info.valid);
  for (const char* f : {"MANIFEST", "model.pt", "optim/state.pt"})
    CHECK(slurp(d.shared + "/step-000000000040/" + f) == slurp(d.local + "/step-000000000040/" + f));
  CHECK(names_in(d.shared) == std::vector<std::string>{"step-000000000040"});  // no staging left
  // Again: already there, nothing copied.
  CHECK(drain_checkpoint(disk(), d.local, d.shared, 40, kToken).already_present);
}

TEST_CASE("a sharded checkpoint drains with every part, a part without files included") {
  Tiers d;
  commit_local_sharded(d.local, 12);
  DrainResult r = drain_checkpoint(disk(), d.local, d.shared, 12, kToken);
  CheckpointInfo info = verify_checkpoint(r.path, VerifyMode::full);
  CHECK(info.valid);
  CHECK(info.world_size == 2);
  CHECK(fs::is_directory(r.path + "/rank-00001"));
  CHECK(slurp(r.path + "/rank-00000/model.pt") == "rank zero");
}

TEST_CASE("a local copy damaged after its commit is never published; the shared directory keeps what it had") {
  Tiers d;
  commit_local(d.local, 20);
  drain_checkpoint(disk(), d.local, d.shared, 20, kToken);
  commit_local(d.local, 40);
  {
    std::fstream f(d.local + "/step-000000000040/model.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(500);
    f.put('#');  // same size: only the checksum sees it
  }
  CHECK_THROWS_WITH(drain_checkpoint(disk(), d.local, d.shared, 40, kToken), doctest::Contains("does not match its manifest"));
  CHECK(names_in(d.shared) == std::vector<std::string>{"step-000000000020"});
  ResumeChoice c = choose_resume(d.shared);
  REQUIRE(c.resume);
  CHECK(c.resume->step == 20);
}

TEST_CASE("an I/O error (a full shared disk) at any operation fails the drain naming the path; nothing partial stays") {
  uint64_t total = 0;
  {
    Tiers d;
    commit_local(d.local, 40);
    FaultInjectionFileSystem ffs(disk(), d.t.path());
    drain_checkpoint(ffs, d.local, d.shared, 40, kToken);
    total = ffs.op_count();
  }
  for (uint64_t n = 1; n <= total; ++n) {
    CAPTURE(n);
    Tiers d;
    commit_local(d.local, 40);
    FaultInjectionFileSystem ffs(disk(), d.t.path());
    ffs.fail_at(n, ENOSPC);
    std::string error;
    try {
      drain_checkpoint(ffs, d.local, d.shared, 40, kToken);
    } catch (const std::exception& e) {
      error = e.what();
    }
    CHECK(error.find(d.shared) != std::string::npos);
    std::vector<std::string> left = names_in(d.shared);
    if (n < total) {
      CHECK(left.empty());  // no staging folder, no step folder
    } else {                // only the directory's fsync after the rename failed: the copy is whole
      REQUIRE(left.size() == 1);
      CHECK(verify_checkpoint(d.shared + "/" + left[0], VerifyMode::full).valid);
    }
    CHECK(verify_checkpoint(d.local + "/step-000000000040", VerifyMode::full).valid);  // the local one is untouched
  }
}

TEST_CASE("power lost at every operation of a drain: the shared directory holds the older checkpoint or the whole new one") {
  // Count the operations of one drain.
  uint64_t total = 0;
  {
    Tiers d;
    commit_local(d.local, 40);
    FaultInjectionFileSystem ffs(disk(), d.t.path());
    drain_checkpoint(ffs, d.local, d.shared, 40, kToken);
    total = ffs.op_count();
  }
  CHECK(total >= 10);
  for (uint64_t n = 1; n <= total; ++n) {
    for (size_t keep : {size_t(0), size_t(100)}) {
      Tiers d;
      commit_local(d.local, 20);
      drain_checkpoint(disk(), d.local, d.shared, 20, kToken);
      commit_local(d.local, 40);
      FaultInjectionFileSystem ffs(disk(), d.t.path());
      ffs.crash_at(n);
      bool lost = false;
      try {
        drain_checkpoint(ffs, d.local, d.shared, 40, kToken);
      } catch (const PowerLoss&) {
        lost = true;
      }
      CAPTURE(n);
      CAPTURE(keep);
      REQUIRE(lost);
      ffs.lose_power(keep);
      // The newest valid checkpoint is 20 or a whole 40; never a partial one.
      ResumeChoice c = choose_resume(d.shared);
      REQUIRE(c.resume);
      CHECK((c.resume->step == 20 || c.resume->step == 40));
      if (fs::exists(d.shared + "/step-000000000040")) CHECK(verify_checkpoint(d.shared + "/step-000000000040", VerifyMode::full).valid);
      // After the reboot the leftovers go, and the drain is done again.
      for (const auto& name : names_in(d.shared))
        if (name[0] == '.') CHECK(name.rfind(".staging-", 0) == 0);
      std::vector<std::string> errors;
      remove_all_leftovers(disk(), d.shared, &errors);
      CHECK(errors.empty());
      DrainResult again = drain_checkpoint(disk(), d.local, d.shared, 40, kToken);
      CHECK(verify_checkpoint(again.path, VerifyMode::full).valid);
    }
  }
}

// ---- the drain queue --------------------------------------------------------------------------

namespace {

// A file system whose first file creation in the shared tier waits until released: a drain that
// is slow for as long as the test needs.
class GatedFileSystem final : public ForwardingFileSystem {
 public:
  GatedFileSystem(FileSystem& base, std::string gated_dir) : ForwardingFileSystem(base), dir_(std::move(gated_dir)) {}
  std::unique_ptr<WritableFile> create_file(const std::string& path) override {
    std::unique_lock<std::mutex> l(mu_);
    if (path.rfind(dir_, 0) == 0 && !passed_) {
      waiting_ = true;
      cv_.notify_all();
      cv_.wait(l, [&] { return open_; });
      passed_ = true;
    }
    l.unlock();
    return ForwardingFileSystem::create_file(path);
  }
  void wait_until_blocked() {
    std::unique_lock<std::mutex> l(mu_);
    REQUIRE(cv_.wait_for(l, std::chrono::seconds(20), [&] { return waiting_; }));
  }
  void release() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::string dir_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool waiting_ = false, open_ = false, passed_ = false;
};

// Events as the queue reported them, in order.
struct Recorder {
  std::mutex mu;
  std::vector<DrainQueue::Event> events;
  DrainQueue::Report report() {
    return [this](const DrainQueue::Event& e) {
      std::lock_guard<std::mutex> l(mu);
      events.push_back(e);
    };
  }
  std::string kinds() {
    std::lock_guard<std::mutex> l(mu);
    std::string s;
    for (const auto& e : events) {
      const char* k = e.kind == DrainQueue::Event::Kind::drained ? "drained" : e.kind == DrainQueue::Event::Kind::skipped ? "skipped" : "failed";
      s += (s.empty() ? "" : ", ") + std::string(k) + " " + std::to_string(e.step);
    }
    return s;
  }
};

}  // namespace

TEST_CASE("the drain queue drains one at a time, newest first, and skips what a newer checkpoint superseded before it started") {
  Tiers d;
  for (uint64_t s : {20, 40, 60, 80}) commit_local(d.local, s);
  GatedFileSystem gated(disk(), d.shared);
  Recorder rec;
  DrainQueue q(gated, d.local, d.shared, kToken, rec.report());
  q.add(20);
  gated.wait_until_blocked();  // 20 is being drained
  CHECK(q.progress().step == std::optional<uint64_t>(20));
  q.add(60);
  q.add(40);  // older than 60, queued with it: superseded
  q.add(80);
  CHECK_FALSE(q.wait_idle(std::chrono::steady_clock::now() + std::chrono::milliseconds(50)));
  gated.release();
  REQUIRE(q.wait_idle(std::chrono::steady_clock::now() + std::chrono::seconds(30)));
  CHECK(rec.kinds() == "drained 20, skipped 40, skipped 60, drained 80");
  CHECK(q.progress().newest_drained == std::optional<uint64_t>(80));
  CHECK(verify_checkpoint(d.shared + "/step-000000000080", VerifyMode::full).valid);
  CHECK_FALSE(fs::exists(d.shared + "/step-000000000060"));
}

TEST_CASE("a failed drain is reported with its reason and the next checkpoint still drains") {
  Tiers d;
  commit_local(d.local, 20);
  commit_local(d.local, 40);
  fs::remove(d.local + "/step-000000000020/model.pt");  // the local copy of 20 lost a file
  Recorder rec;
  DrainQueue q(disk(), d.local, d.shared, kToken, rec.report());
  q.add(20);
  REQUIRE(q.wait_idle(std::chrono::steady_clock::now() + std::chrono::seconds(30)));
  q.add(40);
  REQUIRE(q.wait_idle(std::chrono::steady_clock::now() + std::chrono::seconds(30)));
  CHECK(rec.kinds() == "failed 20, drained 40");
  std::lock_guard<std::mutex> l(rec.mu);
  CHECK(rec.events[0].error.find("model.pt") != std::string::npos);
  CHECK(names_in(d.shared) == std::vector<std::string>{"step-000000000040"});
}

TEST_CASE("a drain queue going away lets the drain in flight finish and reports the queued ones as skipped") {
  Tiers d;
  for (uint64_t s : {20, 40}) commit_local(d.local, s);
  GatedFileSystem gated(disk(), d.shared);
  Recorder rec;
  {
    DrainQueue q(gated, d.local, d.shared, kToken, rec.report());
    q.add(20);
    gated.wait_until_blocked();
    q.add(40);
    q.close();  // as the destructor starts
    gated.release();
  }
  CHECK(rec.kinds() == "drained 20, skipped 40");
  CHECK(verify_checkpoint(d.shared + "/step-000000000020", VerifyMode::full).valid);
}

namespace {

// Two "nodes" of one job, each with its own local dir holding one rank's part of `step` (rank 0:
// a nested file, rank 1: none), as their ranks write them with a node-local tier.
struct PartNodes {
  TempDir t;
  std::string shared = t / "shared";
  std::string local[2] = {t / "node-0", t / "node-1"};
  std::string staging;
  explicit PartNodes(uint64_t step) : staging(shared_staging_name(step, kToken)) {
    fs::create_directories(shared);
    for (uint32_t r = 0; r < 2; ++r) {
      fs::create_directories(local[r]);
      CheckpointWriter w(disk(), local[r], step, CheckpointMeta{}, PartOf{staging, r, 2});
      if (r == 0) {
        std::string model(70000, 'p');
        for (size_t i = 0; i < model.size(); ++i) model[i] = char('a' + (i * 11 + step) % 26);
        w.write_file("model/shard.pt", model.data(), model.size());
      }
      w.commit();
    }
  }
};

}  // namespace

TEST_CASE("several nodes drain their parts into one shared staging folder and the leader's commit of it is valid") {
  PartNodes d(30);
  DrainResult r0 = drain_parts(disk(), d.local[0], d.shared, d.staging, 30);
  DrainResult r1 = drain_parts(disk(), d.local[1], d.shared, d.staging, 30);
  CHECK(r0.path == d.shared + "/" + d.staging);
  CHECK(r0.bytes == 70000);
  CHECK(r1.bytes == 0);  // a part without files is still a part
  CHECK(slurp(d.shared + "/" + d.staging + "/rank-00000/model/shard.pt") ==
        slurp(d.local[0] + "/" + d.staging + "/rank-00000/model/shard.pt"));
  CommitResult c = commit_sharded(disk(), d.shared, d.staging, 30, 2, CheckpointMeta{}, mono_ns());
  CheckpointInfo info = verify_checkpoint(c.path, VerifyMode::full);
  CHECK(info.valid);
  CHECK(info.world_size == 2);
  // A part damaged on its node after it was made durable is never drained.
  PartNodes e(60);
  {
    std::fstream f(e.local[0] + "/" + e.staging + "/rank-00000/model/shard.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('#');
  }
  CHECK_THROWS_WITH(drain_parts(disk(), e.local[0], e.shared, e.staging, 60), doctest::Contains("does not match its manifest"));
  CHECK_FALSE(fs::exists(e.shared + "/" + e.staging + "/rank-00000"));
}

TEST_CASE("an I/O error at any operation of a node's part drain leaves no part of that node in shared storage; the leader cannot commit and the other node's part is intact") {
  uint64_t total = 0;
  {
    PartNodes d(40);
    drain_parts(disk(), d.local[1], d.shared, d.staging, 40);  // as below: the other node's part first
    FaultInjectionFileSystem ffs(disk(), d.t.path());
    drain_parts(ffs, d.local[0], d.shared, d.staging, 40);
    total = ffs.op_count();
  }
  REQUIRE(total > 5);
  for (uint64_t n = 1; n <= total; ++n) {
    CAPTURE(n);
    PartNodes d(40);
    drain_parts(disk(), d.local[1], d.shared, d.staging, 40);  // the other node's part is there
    FaultInjectionFileSystem ffs(disk(), d.t.path());
    ffs.fail_at(n, EIO);
    std::string error;
    try {
      drain_parts(ffs, d.local[0], d.shared, d.staging, 40);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (error.empty()) {  // every operation's failure is an error, the last fsync's included
      FAIL("the drain succeeded with an I/O error at operation " << n);
      continue;
    }
    CHECK_FALSE(fs::exists(d.shared + "/" + d.staging + "/rank-00000"));
    CHECK(fs::exists(d.shared + "/" + d.staging + "/rank-00001/MANIFEST"));
    CHECK_THROWS(commit_sharded(disk(), d.shared, d.staging, 40, 2, CheckpointMeta{}, mono_ns()));
    CHECK(choose_resume(d.shared).resume == std::nullopt);
    // The node's local part is untouched: a retry drains it whole.
    drain_parts(disk(), d.local[0], d.shared, d.staging, 40);
    CHECK(verify_checkpoint(commit_sharded(disk(), d.shared, d.staging, 40, 2, CheckpointMeta{}, mono_ns()).path,
                            VerifyMode::full).valid);
  }
}
