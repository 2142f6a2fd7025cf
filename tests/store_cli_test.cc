// The checkpoint directory commands (checkpoints, verify, gc, history, status, request, run) of
// the real lifeline binary on damaged or hostile directories: invalid UTF-8, empty manifests,
// FIFOs in place of lifeline's files, unsafe or missing directories. Nothing here needs
// LibTorch: the "trainer" of a run is printenv, which shows what it was told to resume.
#include <doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/process.h"
#include "support/store_fixtures.h"
#include "support/table_text.h"

using namespace lifeline;
using namespace lifeline::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// `lifeline ARGS...` under timeout(1): a command that blocks (on a FIFO, say) exits 124
// instead of hanging the test.
std::vector<std::string> cli(const std::vector<std::string>& args, int seconds = 60) {
  std::vector<std::string> v = {"timeout", "-s", "KILL", std::to_string(seconds), binary("LIFELINE_BIN")};
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A command whose stdout is JSON (the commands print nothing else there).
json run_json(const std::vector<std::string>& args, int* status) {
  std::string out;
  *status = run(cli(args), &out);
  json j = json::parse(out, nullptr, false);
  if (j.is_discarded()) FAIL_CHECK("not JSON (exit " << *status << "): " << out);
  return j;
}

// `lifeline run` with printenv as its trainer: exits 0, printing the resume step it was given.
std::vector<std::string> printenv_run(const std::string& dir) {
  return cli({"run", "--ckpt-dir", dir, "--", "/usr/bin/printenv", "LIFELINE_RESUME_STEP"});
}

std::string write_keep_last_policy(const TempDir& d, int keep_last) {
  std::string path = d / "policy.yaml";
  std::ofstream(path) << "version: 1\nretention:\n  keep_last: " << keep_last << "\n  keep_best: 0\n";
  return path;
}

std::vector<uint64_t> steps_in(const std::string& dir) {
  std::vector<uint64_t> out;
  for (const auto& [step, name] : checkpoint_folders(dir)) out.push_back(step);
  return out;
}

}  // namespace

TEST_CASE("a MANIFEST with invalid UTF-8 is reported in verify --json and checkpoints --json, and an older checkpoint is resumed") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  commit_step(dir, 10, "good");
  std::string bad = commit_step(dir, 20, "payload");
  std::string text = read_file(bad + "/MANIFEST");
  text.replace(text.find("\"host\""), 6, "\"h\xff\xfe\"");
  std::ofstream(bad + "/MANIFEST", std::ios::trunc | std::ios::binary) << text;

  int status = -1;
  json v = run_json({"verify", dir, "--json"}, &status);
  CHECK(status == 0);
  CHECK(v["resume"]["step"] == 10);
  REQUIRE(v["skipped"].size() == 1);
  CHECK(v["skipped"][0]["step"] == 20);
  CHECK(contains(v["skipped"][0]["problem"].get<std::string>(), "\\xff"));

  json list = run_json({"checkpoints", dir, "--json"}, &status);
  CHECK(status == 0);
  REQUIRE(list.size() == 2);
  CHECK(list[0]["valid"] == true);
  CHECK(list[1]["valid"] == false);
  CHECK(contains(list[1]["problem"].get<std::string>(), "not valid JSON"));

  std::string out;
  CHECK_MESSAGE(run(printenv_run(dir), &out) == 0, out);
  CHECK(contains(out, "resuming from step 10"));
  CHECK(contains(out, "\n10\n"));  // what the trainer was told
  json h = run_json({"history", dir, "--json"}, &status);
  CHECK(status == 0);
  REQUIRE(h.size() == 1);
  CHECK(h[0]["resumed_from_step"] == 10);
  REQUIRE(h[0]["skipped_at_resume"].size() == 1);
  CHECK(contains(h[0]["skipped_at_resume"][0]["problem"].get<std::string>(), "\\xff"));
}

TEST_CASE("a checkpoint directory whose path is not valid UTF-8 is shown with \\xNN by checkpoints, verify and status --json") {
  TempDir d;
  std::string dir = d / "run-\xff";
  fs::create_directory(dir);
  commit_step(dir, 10, "good");
  int status = -1;
  json list = run_json({"checkpoints", dir, "--json"}, &status);
  CHECK(status == 0);
  REQUIRE(list.size() == 1);
  CHECK(list[0]["path"] == d / "run-\\xff/step-000000000010");
  json v = run_json({"verify", dir, "--json"}, &status);
  CHECK(status == 0);
  CHECK(v["resume"]["path"] == d / "run-\\xff/step-000000000010");
  json s = run_json({"status", dir, "--json"}, &status);
  CHECK(status == 1);
  CHECK(s["dir"] == d / "run-\\xff");
  CHECK(s["newest_checkpoint"]["step"] == 10);
}

TEST_CASE("checkpoints, verify, gc, history, status and request exit 2 naming a missing checkpoint directory") {
  TempDir d;
  std::string dir = d / "missing";
  for (std::vector<std::string> args : {std::vector<std::string>{"checkpoints", dir}, {"checkpoints", dir, "--json"},
                                        {"verify", dir, "--json"}, {"gc", dir}, {"gc", dir, "--dry-run"},
                                        {"history", dir, "--json"}, {"status", dir}, {"request", dir}}) {
    CAPTURE(args[0]);
    CAPTURE(args.back());
    std::string out;
    CHECK(run(cli(args), &out) == 2);
    CHECK(contains(out, "no checkpoint directory " + dir));
  }
  CHECK_FALSE(fs::exists(dir));
}

TEST_CASE("policy check and policy explain answer in JSON with --json, errors included") {
  TempDir d;
  std::string out;
  std::ofstream(d / "p.yaml") << "version: 1\ncheckpoint:\n  every_steps: 50\nretention:\n  keep_last: 7\n";
  REQUIRE(run(cli({"policy", "check", d / "p.yaml", "--json"}), &out) == 0);
  nlohmann::json j = nlohmann::json::parse(out);
  CHECK(j["ok"] == true);
  CHECK(j["policy"]["checkpoint"]["every_steps"] == 50);
  CHECK(j["policy"]["retention"]["keep_last"] == 7);
  CHECK(j["policy"]["stop"]["signals"] == nlohmann::json({"USR1", "TERM", "INT"}));
  std::ofstream(d / "bad.yaml") << "version: 1\ncheckpoint:\n  every_step: 5\n";
  CHECK(run(cli({"policy", "check", d / "bad.yaml", "--json"}), &out) == 2);
  j = nlohmann::json::parse(out);
  CHECK(j["ok"] == false);
  CHECK(j["error"].get<std::string>().find("bad.yaml:3:3") != std::string::npos);
  REQUIRE(run(cli({"policy", "explain", d / "p.yaml", "--json", "--checkpoint-size", "1GiB", "--step-time", "500ms"}),
              &out) == 0);
  j = nlohmann::json::parse(out);
  CHECK(j["explanation"]["interval_seconds"] == 25.0);  // 50 steps x 0.5 s
  CHECK(j["text"].get<std::string>().find("Work lost") != std::string::npos);
}

TEST_CASE("policy check, --json and run --policy report every bad key of a file, not only the first") {
  TempDir d;
  std::string file = d / "bad.yaml";
  std::ofstream(file) << "version: 1\ncheckpoint:\n  every_steps: ten\n  every_step: 5\nretention:\n  mode: lowest\n";
  const std::vector<std::string> expected = {
      file + ":3:16: key 'checkpoint.every_steps': expected a whole number, got 'ten'",
      file + ":4:3: key 'checkpoint.every_step': unknown key; did you mean 'every_steps'?",
      file + ":6:9: key 'retention.mode': expected one of min, max; got 'lowest'"};
  std::string out;
  CHECK(run(cli({"policy", "check", file}), &out) == 2);
  CHECK(out == expected[0] + "\n" + expected[1] + "\n" + expected[2] + "\n");
  int status = 0;
  json j = run_json({"policy", "check", file, "--json"}, &status);
  CHECK(status == 2);
  CHECK(j["ok"] == false);
  CHECK(j["errors"] == json(expected));
  CHECK(j["error"] == expected[0] + "\n" + expected[1] + "\n" + expected[2]);  // the whole text, as before
  CHECK(run(cli({"run", "--policy", file, "--ckpt-dir", d / "ckpt", "--", "/bin/true"}), &out) == 2);
  for (const auto& e : expected) CHECK(contains(out, e));
  // A good file: no errors.
  std::ofstream(d / "good.yaml") << "version: 1\n";
  j = run_json({"policy", "check", d / "good.yaml", "--json"}, &status);
  CHECK(status == 0);
  CHECK(j["errors"] == json::array());
}

TEST_CASE("an unknown or missing subcommand is named with the list of subcommands; `lifeline help` prints the help") {
  std::string out;
  CHECK(run(cli({"frobnicate"}), &out) == 2);
  CHECK(contains(out, "unknown subcommand 'frobnicate'"));
  CHECK(contains(out, "run, checkpoints, verify, policy, gc, history, status, request"));
  CHECK(run(cli({}), &out) == 2);
  CHECK(contains(out, "a subcommand is required: run, checkpoints"));
  CHECK(run(cli({"help"}), &out) == 0);
  CHECK(contains(out, "Usage: lifeline [OPTIONS] SUBCOMMAND"));
  CHECK(contains(out, "status"));
}

TEST_CASE("gc refuses a checkpoint directory writable by every user or owned by another user, and deletes nothing") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  for (uint64_t s : {1, 2, 3}) commit_step(dir, s, "w");
  std::string policy = write_keep_last_policy(d, 1);
  std::string out;
  SUBCASE("o+w") {
    REQUIRE(chmod(dir.c_str(), 0777) == 0);
    CHECK(run(cli({"gc", dir, "--policy", policy}), &out) == 2);
    CHECK(contains(out, "chmod o-w " + dir));
    CHECK(run(cli({"gc", dir, "--policy", policy, "--dry-run"}), &out) == 2);
    CHECK(steps_in(dir) == std::vector<uint64_t>{1, 2, 3});
    REQUIRE(chmod(dir.c_str(), 01777) == 0);  // sticky, like /tmp: allowed
  }
  SUBCASE("another owner") {
    REQUIRE(chown(dir.c_str(), 65534, gid_t(-1)) == 0);
    CHECK(run(cli({"gc", dir, "--policy", policy}), &out) == 2);
    CHECK(contains(out, "is owned by uid 65534"));
    CHECK(steps_in(dir) == std::vector<uint64_t>{1, 2, 3});
    REQUIRE(chown(dir.c_str(), geteuid(), gid_t(-1)) == 0);
  }
  CHECK_MESSAGE(run(cli({"gc", dir, "--policy", policy}), &out) == 0, out);
  CHECK(steps_in(dir) == std::vector<uint64_t>{3});
}

TEST_CASE("gc keeps the older valid checkpoint when the newest MANIFEST lists no files, and resume uses it") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  for (uint64_t s : {10, 20}) commit_step(dir, s, "w");
  std::string empty = commit_step(dir, 30, "w");
  edit_manifest(empty, [](json& j) { j["files"] = json::array(); });
  std::string out;
  CHECK_MESSAGE(run(cli({"gc", dir, "--policy", write_keep_last_policy(d, 1)}), &out) == 0, out);
  CHECK(steps_in(dir) == std::vector<uint64_t>{20, 30});
  int status = -1;
  json v = run_json({"verify", dir, "--json"}, &status);
  CHECK(status == 0);
  CHECK(v["resume"]["step"] == 20);
  CHECK(contains(v["skipped"][0]["problem"].get<std::string>(), "MANIFEST lists no files"));
}

TEST_CASE("a FIFO named history.jsonl or supervisor.json never hangs history, status, request or run") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  commit_step(dir, 10, "good");
  std::string out;
  SUBCASE("history.jsonl") {
    REQUIRE(mkfifo((dir + "/history.jsonl").c_str(), 0644) == 0);
    std::string named = dir + "/history.jsonl is not a regular file (a FIFO)";
    CHECK(run(cli({"history", dir}), &out) == 2);
    CHECK(contains(out, named));
    CHECK(run(cli({"status", dir, "--json"}), &out) == 2);
    CHECK(contains(out, named));
    CHECK(run(cli({"request", dir}), &out) == 1);  // no supervisor.json: nobody to ask
    CHECK_MESSAGE(run(printenv_run(dir), &out) == 0, out);  // training goes on without a history
    CHECK(contains(out, "history.jsonl is not a regular file"));
    CHECK(contains(out, "\n10\n"));
  }
  SUBCASE("supervisor.json") {
    REQUIRE(mkfifo((dir + "/supervisor.json").c_str(), 0644) == 0);
    std::string named = dir + "/supervisor.json is not a regular file (a FIFO)";
    CHECK(run(cli({"history", dir}), &out) == 1);  // no history yet; the record is only a warning
    CHECK(contains(out, named));
    CHECK(run(cli({"status", dir}), &out) == 2);
    CHECK(contains(out, named));
    CHECK(run(cli({"request", dir}), &out) == 2);
    CHECK(contains(out, named));
  }
}

TEST_CASE("checkpoints lines its columns up with long steps, a TIER column and a long problem; a narrow terminal cuts the problem") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  {
    CheckpointWriter w(default_file_system(), dir, 7, CheckpointMeta{});
    w.write_file("weights.bin", std::string(35456, 'w').data(), 35456);
    w.commit({{"val_loss", 0.25}});
  }
  std::string damaged = commit_step(dir, 123456789012, std::string(2000, 'x'));
  flip_byte(damaged + "/weights.bin", 10);  // same size: only the full check finds it
  const std::vector<std::string> names = {"STEP", "VALID", "SIZE", "CREATED", "METRICS / PROBLEM"};
  std::string out;
  REQUIRE(run(cli({"checkpoints", dir}), &out, {{"COLUMNS", ""}}) == 0);
  std::vector<std::string> lines = screen_lines(out);
  REQUIRE(lines.size() == 3);
  std::vector<size_t> starts = column_starts(lines[0], names);
  REQUIRE_MESSAGE(starts.size() == names.size(), out);
  for (size_t r = 1; r < 3; ++r) CHECK_MESSAGE(aligned(lines[r], starts), out);
  CHECK(cell(lines[1], starts, 0) == "7");
  CHECK(cell(lines[1], starts, 2) == "34.6 KiB");  // not a bare byte count
  CHECK(cell(lines[1], starts, 4) == "val_loss=0.25");
  CHECK(cell(lines[2], starts, 0) == "123456789012");
  CHECK(cell(lines[2], starts, 1) == "NO");
  const std::string problem = cell(lines[2], starts, 4);
  CHECK(problem.size() > 30);

  // A node-local tier on another host: the TIER column, and the note under the table.
  std::ofstream(dir + "/tier.json") << R"({"host": "gpu-node-0123.cluster.example.org", "local_dir": "/tmp/x"})";
  REQUIRE(run(cli({"checkpoints", dir}), &out, {{"COLUMNS", ""}}) == 0);
  lines = screen_lines(out);
  REQUIRE(lines.size() == 4);
  starts = column_starts(lines[0], {"STEP", "VALID", "TIER", "SIZE", "CREATED", "METRICS / PROBLEM"});
  REQUIRE_MESSAGE(starts.size() == 6, out);
  for (size_t r = 1; r < 3; ++r) CHECK_MESSAGE(aligned(lines[r], starts), out);
  CHECK(cell(lines[1], starts, 2) == "shared");
  CHECK(contains(lines[3], "the node-local tier is on gpu-node-0123.cluster.example.org"));

  // A terminal of 90 columns: the problem is cut with an ellipsis, the rest stays whole and aligned.
  REQUIRE(run(cli({"checkpoints", dir}), &out, {{"COLUMNS", "90"}}) == 0);
  lines = screen_lines(out);
  REQUIRE(lines.size() == 4);
  starts = column_starts(lines[0], {"STEP", "VALID", "TIER", "SIZE", "CREATED", "METRICS / PROBLEM"});
  REQUIRE_MESSAGE(starts.size() == 6, out);
  for (size_t r = 0; r < 3; ++r) {
    CHECK_MESSAGE(lines[r].size() <= 90, out);
    if (r > 0) CHECK_MESSAGE(aligned(lines[r], starts), out);
  }
  CHECK(cell(lines[2], starts, 0) == "123456789012");
  std::string cut = cell(lines[2], starts, 5);
  CHECK(cut.back() == '~');
  CHECK(problem.rfind(cut.substr(0, cut.size() - 1), 0) == 0);
}

TEST_CASE("gc names its rules in human units (max_total_bytes as a size) and the policy file they come from") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  commit_step(dir, 1, "w");
  std::ofstream(d / "p.yaml") << "version: 1\nretention:\n  keep_best: 0\n  max_total_bytes: 2GiB\n";
  std::string out;
  REQUIRE_MESSAGE(run(cli({"gc", dir, "--policy", d / "p.yaml", "--dry-run"}), &out) == 0, out);
  CHECK_MESSAGE(contains(out, "max_total_bytes 2 GiB, from " + d / "p.yaml" + ")"), out);
  CHECK_FALSE(contains(out, "2147483648"));
}
