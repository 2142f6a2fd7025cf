// Retention: each rule, their union, what is never deleted, the byte budget, and deletion
// that no crash can turn into a damaged checkpoint under a committed name.
#include <doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/clock.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/retention.h"
#include "support/fault_injection_fs.h"
#include "support/store_fixtures.h"

using namespace lifeline;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

// The crash enumeration below runs a few hundred setups: /dev/shm keeps them fast.
const bool scratch_on_tmpfs = prefer_tmpfs_scratch();

CheckpointInfo ckpt(uint64_t step, bool valid = true, uint64_t bytes = 100, std::map<std::string, double> metrics = {}) {
  CheckpointInfo c;
  c.step = step;
  c.path = "/ckpt/" + checkpoint_folder_name(step);
  c.valid = valid;
  c.bytes = bytes;
  c.metrics = std::move(metrics);
  if (!valid) c.problem = "file weights.bin does not match its xxh3-64 checksum";
  return c;
}

Policy::Retention rules(uint64_t keep_last, uint64_t keep_best = 0, uint64_t every = 0, uint64_t max_bytes = 0) {
  Policy::Retention r;
  r.keep_last = keep_last;
  r.keep_best = keep_best;
  r.metric = "val_loss";
  r.mode = Policy::Mode::min;
  r.keep_every_steps = every;
  r.max_total_bytes = max_bytes;
  return r;
}

const RetentionDecision& at(const RetentionReport& r, uint64_t step) {
  for (const auto& d : r.decisions)
    if (d.checkpoint.step == step) return d;
  FAIL("no decision for step " << step);
  throw std::logic_error("unreachable");
}

std::vector<uint64_t> kept_steps(const RetentionReport& r) {
  std::vector<uint64_t> out;
  for (const auto& d : r.decisions)
    if (d.keep) out.push_back(d.checkpoint.step);
  return out;
}

bool has_reason(const RetentionDecision& d, const std::string& prefix) {
  for (const auto& r : d.reasons)
    if (r.rfind(prefix, 0) == 0) return true;
  return false;
}

// Commits weights.bin and sub/state.bin, each holding `payload`, without real fsyncs.
std::string commit(const std::string& dir, uint64_t step, const std::string& payload = "weights") {
  return commit_step(dir, step, payload, disk());
}

}  // namespace

TEST_CASE("keep_last keeps the newest N valid checkpoints and deletes the rest") {
  RetentionReport r = plan_retention({ckpt(1), ckpt(2), ckpt(3), ckpt(4), ckpt(5)}, rules(3), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{3, 4, 5});
  CHECK(at(r, 5).reasons == std::vector<std::string>{"newest valid", "keep_last 3"});
  CHECK(at(r, 3).reasons == std::vector<std::string>{"keep_last 3"});
  CHECK(at(r, 1).reasons == std::vector<std::string>{"not kept by any rule"});
  CHECK(r.bytes_freed == 200);
  CHECK(r.bytes_kept == 300);
}

TEST_CASE("keep_best keeps the best N by the metric, lowest for min and highest for max") {
  std::vector<CheckpointInfo> list = {ckpt(1, true, 100, {{"val_loss", 0.5}}), ckpt(2, true, 100, {{"val_loss", 0.2}}),
                                      ckpt(3, true, 100, {{"val_loss", 0.9}}), ckpt(4, true, 100, {{"val_loss", 0.3}}),
                                      ckpt(5, true, 100, {{"val_loss", 0.7}})};
  Policy::Retention r = rules(1, 2);
  CHECK(kept_steps(plan_retention(list, r, std::nullopt)) == std::vector<uint64_t>{2, 4, 5});
  CHECK(has_reason(at(plan_retention(list, r, std::nullopt), 2), "best val_loss"));
  r.mode = Policy::Mode::max;
  CHECK(kept_steps(plan_retention(list, r, std::nullopt)) == std::vector<uint64_t>{3, 5});
}

TEST_CASE("a tie for best goes to the newer checkpoint") {
  std::vector<CheckpointInfo> list = {ckpt(10, true, 1, {{"val_loss", 0.25}}), ckpt(20, true, 1, {{"val_loss", 0.25}}),
                                      ckpt(30, true, 1, {{"val_loss", 0.25}}), ckpt(40, true, 1, {{"val_loss", 0.8}})};
  RetentionReport r = plan_retention(list, rules(1, 1), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{30, 40});
  CHECK(has_reason(at(r, 30), "best val_loss"));
  r = plan_retention(list, rules(1, 2), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{20, 30, 40});
}

TEST_CASE("a checkpoint without the metric, or with NaN or infinity, is never best") {
  double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  std::vector<CheckpointInfo> list = {ckpt(1, true, 1, {{"loss", 0.0}}), ckpt(2, true, 1, {{"val_loss", nan}}),
                                      ckpt(3, true, 1, {{"val_loss", -inf}}), ckpt(4, true, 1, {{"val_loss", 0.7}}),
                                      ckpt(5, true, 1, {})};
  RetentionReport r = plan_retention(list, rules(1, 3), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{4, 5});
  CHECK(has_reason(at(r, 4), "best val_loss"));
  CHECK_FALSE(has_reason(at(r, 5), "best"));
  for (uint64_t s : {1, 2, 3}) CHECK(at(r, s).reasons == std::vector<std::string>{"not kept by any rule"});
}

TEST_CASE("keep_every_steps keeps the steps that are multiples of it") {
  std::vector<CheckpointInfo> list;
  for (uint64_t s = 500; s <= 3000; s += 500) list.push_back(ckpt(s));
  RetentionReport r = plan_retention(list, rules(1, 0, 1000), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{1000, 2000, 3000});
  CHECK(at(r, 1000).reasons == std::vector<std::string>{"every 1000"});
}

TEST_CASE("the rules keep their union and each kept checkpoint lists every rule that keeps it") {
  std::vector<CheckpointInfo> list = {ckpt(1000, true, 1, {{"val_loss", 0.1}}), ckpt(1500, true, 1, {{"val_loss", 0.9}}),
                                      ckpt(2000, true, 1, {{"val_loss", 0.5}}), ckpt(2500, true, 1, {{"val_loss", 0.4}}),
                                      ckpt(3000, true, 1, {{"val_loss", 0.3}})};
  RetentionReport r = plan_retention(list, rules(2, 1, 1000), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{1000, 2000, 2500, 3000});
  CHECK(at(r, 1000).reasons == std::vector<std::string>{"best val_loss", "every 1000"});
  CHECK(at(r, 3000).reasons == std::vector<std::string>{"newest valid", "keep_last 2", "every 1000"});
  CHECK(at(r, 1500).reasons == std::vector<std::string>{"not kept by any rule"});
}

TEST_CASE("the newest valid checkpoint is kept even when every rule is off") {
  RetentionReport r = plan_retention({ckpt(1), ckpt(2)}, rules(0, 0, 0), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{2});
  CHECK(at(r, 2).reasons == std::vector<std::string>{"newest valid"});
}

TEST_CASE("the step the running attempt resumed from is kept until a newer valid checkpoint exists") {
  SUBCASE("newer folders are invalid: protected") {
    RetentionReport r = plan_retention({ckpt(1), ckpt(2), ckpt(3, false), ckpt(4, false)}, rules(0), 1);
    CHECK(kept_steps(r) == std::vector<uint64_t>{2, 3, 4});  // 2 is the newest valid
    r = plan_retention({ckpt(1), ckpt(2, false)}, rules(0), 1);
    CHECK(kept_steps(r) == std::vector<uint64_t>{1, 2});
    CHECK(at(r, 1).reasons == std::vector<std::string>{"newest valid", "resumed from by the running attempt"});
  }
  SUBCASE("it no longer verifies and nothing newer is valid: still kept") {
    RetentionReport r = plan_retention({ckpt(1), ckpt(2, false), ckpt(3, false)}, rules(0), 2);
    CHECK(at(r, 2).keep);
    CHECK(has_reason(at(r, 2), "resumed from by the running attempt"));
  }
  SUBCASE("a newer valid checkpoint ends the protection") {
    RetentionReport r = plan_retention({ckpt(1), ckpt(2), ckpt(3)}, rules(1), 2);
    CHECK(kept_steps(r) == std::vector<uint64_t>{3});
  }
  SUBCASE("even the byte budget does not delete it") {
    RetentionReport r = plan_retention({ckpt(1), ckpt(2, false)}, rules(5, 0, 0, 10), 1);
    CHECK(at(r, 1).keep);
  }
}

TEST_CASE("an invalid checkpoint never takes a rule's place: older ones are deleted, newer ones left for inspection") {
  std::vector<CheckpointInfo> list = {ckpt(1, true, 100, {{"val_loss", 0.1}}), ckpt(2), ckpt(3, false, 100, {{"val_loss", 0.0}}),
                                      ckpt(4), ckpt(5, false), ckpt(6, false)};
  RetentionReport r = plan_retention(list, rules(2, 1, 0), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{1, 2, 4, 5, 6});
  CHECK(at(r, 2).reasons == std::vector<std::string>{"keep_last 2"});  // not 3
  CHECK(at(r, 3).reasons == std::vector<std::string>{"invalid: file weights.bin does not match its xxh3-64 checksum"});
  CHECK(has_reason(at(r, 1), "best val_loss"));  // 3's better score does not count
  CHECK(has_reason(at(r, 5), "invalid and newer than the newest valid: left for inspection, not counted"));
  CHECK(r.bytes_kept == 300);  // valid ones only
}

TEST_CASE("with no valid checkpoint nothing is deleted") {
  RetentionReport r = plan_retention({ckpt(1, false), ckpt(2, false)}, rules(0), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{1, 2});
  CHECK(has_reason(at(r, 1), "invalid, and no valid checkpoint yet"));
}

TEST_CASE("max_total_bytes deletes the oldest kept checkpoints until the rest fits, never the newest valid") {
  std::vector<CheckpointInfo> list = {ckpt(1, true, 100, {{"val_loss", 0.1}}), ckpt(2), ckpt(3), ckpt(4), ckpt(5, false, 5000)};
  RetentionReport r = plan_retention(list, rules(4, 1, 0, 250), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{3, 4, 5});  // invalid 5 is not counted
  CHECK(at(r, 1).reasons ==
        std::vector<std::string>{"over max_total_bytes 250 B (would be kept by keep_last 4, best val_loss)"});
  CHECK(r.bytes_kept == 200);
  r = plan_retention(list, rules(4, 1, 0, 10), std::nullopt);
  CHECK(kept_steps(r) == std::vector<uint64_t>{4, 5});  // the newest valid alone is over: kept anyway
}

TEST_CASE("retention finds the newest valid checkpoint with a full verify, so a damaged newest one protects the older ones") {
  TempDir d;
  commit(d.path(), 1);
  commit(d.path(), 2);
  std::string newest = commit(d.path(), 3);
  // Same size, one byte different: only a full verify sees it.
  flip_byte(newest + "/weights.bin", 0);
  REQUIRE(verify_checkpoint(newest, VerifyMode::quick).valid);
  RetentionReport r = apply_retention(disk(), d.path(), rules(1), std::nullopt, false);
  CHECK(kept_steps(r) == std::vector<uint64_t>{2, 3});
  CHECK(at(r, 2).reasons == std::vector<std::string>{"newest valid", "keep_last 1"});
  CHECK(verify_checkpoint(d / "step-000000000002", VerifyMode::full).valid);
  CHECK_FALSE(fs::exists(d / "step-000000000001"));
}

TEST_CASE("apply_retention deletes by renaming to a trash folder, fsyncing the directory, then removing") {
  CheckpointDir d;
  const std::string& dir = d.dir;
  for (uint64_t s = 1; s <= 4; ++s) commit(dir, s);
  FaultInjectionFileSystem ffs(disk(), d.tmp.path());
  RetentionReport r = apply_retention(ffs, dir, rules(2), std::nullopt, false);
  CHECK(r.errors.empty());
  CHECK(r.bytes_freed == 2 * 14);
  const auto& log = ffs.op_log();
  REQUIRE(log.size() == 5);
  CHECK(log[0].find("rename " + dir + "/step-000000000001 -> " + dir + "/.trash-step-000000000001-") != std::string::npos);
  CHECK(log[1].find("rename " + dir + "/step-000000000002 -> " + dir + "/.trash-step-000000000002-") != std::string::npos);
  CHECK(log[2] == "3 sync_dir " + dir);
  CHECK(log[3].find(" remove_tree " + dir + "/.trash-step-000000000001-") != std::string::npos);
  CHECK(log[4].find(" remove_tree " + dir + "/.trash-step-000000000002-") != std::string::npos);
  CHECK(names_in(dir) == std::vector<std::string>{"step-000000000003", "step-000000000004"});
}

TEST_CASE("a crash at any point of a retention pass never leaves a damaged checkpoint under a committed name") {
  auto setup = [](const std::string& dir) {
    for (uint64_t s = 1; s <= 4; ++s) commit(dir, s);
    fs::resize_file(dir + "/step-000000000002/weights.bin", 1);  // invalid, older than the newest valid
  };
  uint64_t total = count_operations(
      setup, [](FileSystem& fsys, const std::string& dir) { apply_retention(fsys, dir, rules(1), std::nullopt, false); });
  CHECK(total == 7);  // 3 renames, 1 sync_dir, 3 removals
  for (uint64_t n = 1; n <= total + 1; ++n) {
    for (size_t keep = 0; keep < 4; ++keep) {
      CheckpointDir d;
      const std::string& dir = d.dir;
      setup(dir);
      FaultInjectionFileSystem ffs(disk(), d.tmp.path());
      ffs.crash_at(n);
      try {
        apply_retention(ffs, dir, rules(1), std::nullopt, false);
      } catch (const PowerLoss&) {
      }
      ffs.lose_power(keep);
      INFO("power lost at operation " << n << ", " << keep << " pending changes kept");
      for (const auto& c : list_checkpoints(dir, VerifyMode::full)) {
        INFO(c.path << ": " << c.problem);
        CHECK((c.valid || c.step == 2));  // only the folder that was already damaged
      }
      ResumeChoice c = choose_resume(dir);
      REQUIRE(c.resume);
      CHECK(c.resume->step == 4);
      // The next pass finishes the job.
      LeftoverRules now;
      now.writer_alive = [](pid_t) { return false; };
      CHECK(apply_retention(disk(), dir, rules(1), std::nullopt, false, now).errors.empty());
      CHECK(names_in(dir) == std::vector<std::string>{"step-000000000004"});
    }
  }
}

TEST_CASE("a dry run changes nothing and reports what would be deleted") {
  TempDir d;
  for (uint64_t s = 1; s <= 3; ++s) commit(d.path(), s);
  fs::create_directory(d / ".trash-step-000000000009-1-abc");
  auto before = names_in(d.path());
  RetentionReport r = apply_retention(default_file_system(), d.path(), rules(1), std::nullopt, true);
  CHECK(names_in(d.path()) == before);
  CHECK(kept_steps(r) == std::vector<uint64_t>{3});
  REQUIRE(r.leftovers_removed.size() == 1);
  std::string text = retention_report_text(r, true);
  INFO(text);
  CHECK(text.find("would delete step 1 ") != std::string::npos);
  CHECK(text.find("keep         step 3 ") != std::string::npos);
  CHECK(text.find("newest valid; keep_last 1") != std::string::npos);
  CHECK(text.find("would remove       .trash-step-000000000009-1-abc (trash)") != std::string::npos);
  CHECK(text.find("kept 1 checkpoint (14 B valid), would delete 2 (28 B), would remove 1 leftover folder") !=
        std::string::npos);
}

TEST_CASE("abandoned staging and trash folders are removed; a live writer's staging and other files are not") {
  TempDir d;
  commit(d.path(), 1);
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);  // a pid that no longer runs
  std::string live_name = ".staging-step-000000000002-" + std::to_string(getpid()) + "-0000abcd";
  std::string dead_name = ".staging-step-000000000002-" + std::to_string(dead) + "-0000abcd";
  for (const auto& n : {live_name, dead_name, std::string(".trash-step-000000000001-1-ff"), std::string("foreign-folder")})
    fs::create_directories(d / n + "/sub");
  for (const auto& n : {"lock", "history.jsonl", "supervisor.json", ".supervisor.json.tmp"}) std::ofstream(d / n) << "x";
  auto all = names_in(d.path());

  LeftoverRules rules_now;  // everything was just touched
  RetentionReport r = apply_retention(default_file_system(), d.path(), rules(1), std::nullopt, true, rules_now);
  REQUIRE(r.leftovers_removed.size() == 1);
  CHECK(r.leftovers_removed[0].name == ".trash-step-000000000001-1-ff");

  LeftoverRules later = rules_now;  // two minutes on: past the grace for a dead writer
  later.now_ns = wall_ns() + 120ull * 1000000000ull;
  r = apply_retention(default_file_system(), d.path(), rules(1), std::nullopt, true, later);
  REQUIRE(r.leftovers_removed.size() == 2);
  CHECK(r.leftovers_removed[0].name == dead_name);
  CHECK(r.leftovers_removed[0].why == "writer pid " + std::to_string(dead) + " is not running");

  LeftoverRules much_later = rules_now;  // two hours on: abandoned whatever its pid
  much_later.now_ns = wall_ns() + 7200ull * 1000000000ull;
  r = apply_retention(default_file_system(), d.path(), rules(1), std::nullopt, false, much_later);
  CHECK(r.leftovers_removed.size() == 3);
  CHECK(r.errors.empty());
  std::vector<std::string> expected;
  for (const auto& n : all)
    if (n[0] != '.' || n == ".supervisor.json.tmp") expected.push_back(n);
  CHECK(names_in(d.path()) == expected);
}

TEST_CASE("the writer pid is read from a staging folder name") {
  CHECK(staging_writer_pid(".staging-step-000000000040-1234-9f3a0b1c") == pid_t(1234));
  CHECK_FALSE(staging_writer_pid(".staging-step-000000000040-x1-9f3a0b1c"));
  CHECK_FALSE(staging_writer_pid(".staging-step-000000000040"));
  CHECK_FALSE(staging_writer_pid(".trash-step-000000000040-1234-9f3a0b1c"));
}

namespace {
// Re-commits step 2 (a valid new folder in place of the judged one) just before retention
// renames it: the race retention must detect.
class RecommitBeforeRename : public ForwardingFileSystem {
 public:
  RecommitBeforeRename(std::string victim, std::string replacement)
      : ForwardingFileSystem(disk()), victim_(std::move(victim)), replacement_(std::move(replacement)) {}
  void rename(const std::string& from, const std::string& to) override {
    if (from == victim_ && !replacement_.empty()) {
      fs::rename(victim_, victim_ + ".judged");
      fs::rename(replacement_, victim_);
      replacement_.clear();
    }
    ForwardingFileSystem::rename(from, to);
  }

 private:
  std::string victim_, replacement_;
};
}  // namespace

TEST_CASE("a checkpoint folder replaced while retention runs is put back, not deleted") {
  CheckpointDir d;
  const std::string& dir = d.dir;
  for (uint64_t s = 1; s <= 3; ++s) commit(dir, s);
  fs::resize_file(dir + "/step-000000000002/weights.bin", 1);
  std::string other = d.tmp / "other";
  fs::create_directory(other);
  fs::rename(commit(other, 2, "fresh"), d.tmp / "fresh");
  RecommitBeforeRename racing(dir + "/step-000000000002", d.tmp / "fresh");
  RetentionReport r = apply_retention(racing, dir, rules(1), std::nullopt, false);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0] == "step 2: the folder changed while retention ran; left alone");
  CHECK(verify_checkpoint(dir + "/step-000000000002", VerifyMode::full).valid);
  CHECK_FALSE(fs::exists(dir + "/step-000000000001"));
}

TEST_CASE("a newest checkpoint whose MANIFEST lists no files never makes retention delete the older valid ones") {
  TempDir d;
  commit(d.path(), 10);
  commit(d.path(), 20);
  std::string empty = commit(d.path(), 30);
  edit_manifest(empty, [](nlohmann::json& j) { j["files"] = nlohmann::json::array(); });
  RetentionReport r = apply_retention(disk(), d.path(), rules(1), std::nullopt, false);
  CHECK(r.errors.empty());
  CHECK(kept_steps(r) == std::vector<uint64_t>{20, 30});
  CHECK(has_reason(at(r, 20), "newest valid"));
  CHECK(has_reason(at(r, 30), "invalid and newer than the newest valid"));
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->step == 20);
}

TEST_CASE("remove_all_leftovers removes every staging and trash folder at once, whatever its age or writer, and nothing else") {
  TempDir d;
  commit(d.path(), 1);
  // A staging folder of this very (live) process, touched just now: only proof that no writer
  // is alive (which the caller has) lets it go.
  std::string live = ".staging-step-000000000002-" + std::to_string(getpid()) + "-0000abcd";
  std::vector<std::string> leftovers = {live, ".staging-foreign", ".trash-step-000000000001-1-ff"};
  for (const auto& n : leftovers) fs::create_directories(d / n + "/sub");
  std::ofstream(d / (live + "/sub/state.bin")) << "partial";
  for (const auto& n : {"lock", "history.jsonl", "supervisor.json", "notes"}) std::ofstream(d / n) << "x";
  fs::create_directory(d / "foreign-folder");

  std::vector<std::string> errors;
  std::vector<RemovedLeftover> removed = remove_all_leftovers(disk(), d.path(), &errors);
  CHECK(errors.empty());
  REQUIRE(removed.size() == 3);
  CHECK(removed[0].name == ".staging-foreign");
  CHECK(removed[0].why == "staging folder of a writer that is gone");
  CHECK(removed[1].name == live);
  CHECK(removed[2].name == ".trash-step-000000000001-1-ff");
  CHECK(removed[2].why == "trash");
  CHECK(names_in(d.path()) ==
        std::vector<std::string>{"foreign-folder", "history.jsonl", "lock", "notes", "step-000000000001", "supervisor.json"});
  CHECK(verify_checkpoint(d / "step-000000000001", VerifyMode::full).valid);
  CHECK(remove_all_leftovers(disk(), d.path()).empty());
}
