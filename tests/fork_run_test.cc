// Forking a run (`lifeline run --init-from PATH`, a warm start): a new run whose first attempt
// starts from another run's checkpoint, which is only read. The real lifeline binary, the C++
// example trainer and (when torch imports) examples/train_torch.py.
#include <doctest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/process.h"
#include "support/temp_dir.h"
#include "support/history_file.h"

using namespace lifeline::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Every checkpoint of the source run every 10 steps, all kept: folders to fork from.
const char* kEvery10 = "version: 1\ncheckpoint:\n  every_steps: 10\nretention:\n  keep_last: 20\n  keep_best: 0\n";

std::string policy_file(const TempDir& d) {
  std::string p = d / "every10.yaml";
  std::ofstream(p) << kEvery10;
  return p;
}

std::vector<std::string> run_cmd(const std::string& ckpt, const std::vector<std::string>& opts,
                                 const std::vector<std::string>& trainer_args) {
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--ckpt-dir", ckpt};
  v.insert(v.end(), opts.begin(), opts.end());
  v.push_back("--");
  v.push_back(binary("TRAIN_EXAMPLE_BIN"));
  v.insert(v.end(), trainer_args.begin(), trainer_args.end());
  return v;
}

std::vector<std::string> trainer(int steps, int delay_ms = 0, const std::string& warm = "") {
  std::vector<std::string> v = {"--steps", std::to_string(steps), "--seed", "3", "--log-every", "1",
                                "--step-delay-ms", std::to_string(delay_ms)};
  if (!warm.empty()) v.insert(v.end(), {"--warm-start", warm});
  return v;
}

// The source run: 40 steps, checkpoints at 10, 20, 30, 40; returns its final parameter digest.
std::string source_run(const TempDir& d) {
  std::string out;
  REQUIRE(run(run_cmd(d / "src", {"--policy", policy_file(d)}, trainer(40)), &out) == 0);
  auto at = out.find("digest ");
  REQUIRE(at != std::string::npos);
  return out.substr(at + 7, 64);
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str(), nullptr, false);
}

// Every entry under `dir` (itself included) with its type, size and mtime: what "untouched" means.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  auto add = [&](const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return;
    m[fs::relative(p, dir).string()] = std::to_string(st.st_mode) + " " + std::to_string(st.st_size) + " " +
                                       std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  };
  add(dir);
  for (const auto& e : fs::recursive_directory_iterator(dir)) add(e.path());
  return m;
}

std::string folder(const std::string& dir, int step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%012d", step);
  return dir + "/" + name;
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("a fork from a run's checkpoint dir starts a new lineage from its newest valid checkpoint, kind warm, "
          "with its parent in run.json and history") {
  TempDir d;
  source_run(d);
  std::string src = d / "src";
  // A newer checkpoint that does not verify: skipped, and said so.
  fs::copy(folder(src, 40), folder(src, 50), fs::copy_options::recursive);
  std::ofstream(folder(src, 50) + "/model.pt", std::ios::app) << "garbage";
  std::string src_lineage = events_named(src, "attempt_start").at(0)["lineage"];
  auto before = snapshot(src);

  std::string out;
  REQUIRE_MESSAGE(run(run_cmd(d / "new", {"--init-from", src}, trainer(60, 0, "continue")), &out) == 0, out);
  CHECK_MESSAGE(contains(out, "warm start (continue) from step 40 (" + folder(src, 40) + ")"), out);
  CHECK_MESSAGE(contains(out, "skipping checkpoint " + folder(src, 50)), out);
  CHECK_MESSAGE(contains(out, "step 41 loss"), out);
  CHECK_FALSE(contains(out, "step 40 loss"));
  CHECK(snapshot(src) == before);

  auto starts = events_named(d / "new", "attempt_start");
  REQUIRE(starts.size() == 1);
  CHECK(starts[0]["lineage"] != src_lineage);  // a new lineage
  CHECK(starts[0]["resume_kind"] == "warm");
  CHECK(starts[0]["resumed_from_step"].is_null());
  CHECK(starts[0]["parent"]["dir"] == src);
  CHECK(starts[0]["parent"]["lineage"] == src_lineage);
  CHECK(starts[0]["parent"]["step"] == 40);
  CHECK(starts[0]["parent"]["checkpoint"] == folder(src, 40));
  json id = read_json(d / "new/run.json");
  CHECK(id["parent"]["dir"] == src);
  CHECK(id["parent"]["step"] == 40);
  CHECK(read_json(src + "/run.json")["parent"].is_null());

  out.clear();
  REQUIRE(run({binary("LIFELINE_BIN"), "history", d / "new"}, &out) == 0);
  CHECK_MESSAGE(contains(out, "attempt 0: forked from " + src + " (lineage " + src_lineage + ", step 40)"), out);
  CHECK_MESSAGE(contains(out, "warm 40"), out);
  out.clear();
  REQUIRE(run({binary("LIFELINE_BIN"), "history", d / "new", "--json"}, &out) == 0);
  json h = json::parse(out);
  REQUIRE(h.size() == 1);
  CHECK(h[0]["parent"] == json({{"dir", src}, {"lineage", src_lineage}, {"step", 40}, {"checkpoint", folder(src, 40)}}));
  CHECK(h[0]["resume_kind"] == "warm");
  out.clear();
  REQUIRE(run({binary("LIFELINE_BIN"), "history", src, "--json"}, &out) == 0);
  CHECK(json::parse(out)[0]["parent"].is_null());
  out.clear();
  REQUIRE(run({binary("LIFELINE_BIN"), "history", d / "new", "--timeline", d / "t.svg"}, &out) == 0);
  std::ifstream svg(d / "t.svg");
  std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
  CHECK(contains(text, "class=\"fork\""));
  CHECK(contains(text, "forked from step 40 of " + src));
}

TEST_CASE("a fork from one checkpoint folder starts from that checkpoint, not the dir's newest") {
  TempDir d;
  source_run(d);
  std::string out;
  REQUIRE_MESSAGE(run(run_cmd(d / "new", {"--init-from", folder(d / "src", 20)}, trainer(30, 0, "continue")), &out) == 0,
                  out);
  CHECK_MESSAGE(contains(out, "warm start (continue) from step 20 (" + folder(d / "src", 20) + ")"), out);
  CHECK_MESSAGE(contains(out, "step 21 loss"), out);
  auto starts = events_named(d / "new", "attempt_start");
  REQUIRE(starts.size() == 1);
  CHECK(starts[0]["parent"]["step"] == 20);
  CHECK(starts[0]["parent"]["dir"] == d / "src");
}

TEST_CASE("--warm-start reset loads the source's weights only and restarts at step 0; continue goes on from its step") {
  TempDir d;
  std::string digest = source_run(d);
  std::string out;
  REQUIRE_MESSAGE(run(run_cmd(d / "reset", {"--init-from", d / "src"}, trainer(15, 0, "reset")), &out) == 0, out);
  // The weights the trainer loaded are the source's final ones; its steps start again at 1.
  CHECK_MESSAGE(contains(out, "warm start (reset) from step 40 (" + folder(d / "src", 40) + "): weights digest " +
                                  digest + ", step 0"),
                out);
  CHECK_MESSAGE(contains(out, "step 1 loss"), out);
  CHECK_FALSE(contains(out, "step 41 loss"));
  CHECK(fs::exists(folder(d / "reset", 15)));
  CHECK_FALSE(fs::exists(folder(d / "reset", 40)));

  out.clear();
  REQUIRE_MESSAGE(run(run_cmd(d / "continue", {"--init-from", d / "src"}, trainer(45, 0, "continue")), &out) == 0, out);
  CHECK_MESSAGE(contains(out, "warm start (continue) from step 40 (" + folder(d / "src", 40) + "): weights digest " +
                                  digest),
                out);
  CHECK_MESSAGE(contains(out, "step 41 loss"), out);
  CHECK_FALSE(contains(out, "step 1 loss"));
  CHECK(fs::exists(folder(d / "continue", 45)));
}

TEST_CASE("a stopped fork resumes from its own checkpoints with kind continue; --init-from is then ignored and the "
          "read-only source is untouched") {
  TempDir d;
  source_run(d);
  std::string src = d / "src";
  REQUIRE(std::system(("chmod -R a-w '" + src + "'").c_str()) == 0);
  auto before = snapshot(src);
  auto cmd = run_cmd(d / "new", {"--init-from", src}, trainer(100000, 20, "reset"));
  {
    Process p(cmd);
    REQUIRE(p.wait_for_line("step 10 loss") != "");
    p.signal(SIGUSR1);
    REQUIRE_MESSAGE(p.wait() == 75, p.output());
  }
  CHECK(snapshot(src) == before);
  auto stop = events_named(d / "new", "checkpoint_commit");
  REQUIRE_FALSE(stop.empty());
  uint64_t own_step = stop.back()["step"];

  // The requeued job script repeats the same command line.
  auto again = run_cmd(d / "new", {"--init-from", src}, trainer(int(own_step) + 5, 0, "reset"));
  std::string out;
  REQUIRE_MESSAGE(run(again, &out) == 0, out);
  CHECK_MESSAGE(contains(out, "--init-from " + src + " is ignored: this run already has its own checkpoints"), out);
  CHECK_MESSAGE(contains(out, "train-example: resumed from step " + std::to_string(own_step) + " (" +
                                  folder(d / "new", int(own_step)) + ")"),
                out);
  CHECK_FALSE(contains(out, "warm start"));
  CHECK(snapshot(src) == before);

  auto starts = events_named(d / "new", "attempt_start");
  REQUIRE(starts.size() == 2);
  CHECK(starts[1]["resume_kind"] == "continue");
  CHECK(starts[1]["resumed_from_step"] == own_step);
  CHECK(starts[1]["init_from_ignored"] == src);
  CHECK_FALSE(starts[1].contains("parent"));
  CHECK(starts[1]["lineage"] == starts[0]["lineage"]);
  out.clear();
  REQUIRE(run({binary("LIFELINE_BIN"), "history", d / "new"}, &out) == 0);
  CHECK_MESSAGE(contains(out, "attempt 1: --init-from " + src + " ignored: the run already had its own checkpoints"), out);
  CHECK_MESSAGE(contains(out, "attempt 0: forked from " + src), out);
  REQUIRE(std::system(("chmod -R u+w '" + src + "'").c_str()) == 0);
}

TEST_CASE("bad --init-from input exits 2 naming the path, starts nothing and creates nothing") {
  TempDir d;
  source_run(d);
  std::string src = d / "src";
  // A run dir whose only checkpoint does not verify.
  fs::create_directories(d / "broken");
  fs::copy(folder(src, 20), folder(d / "broken", 20), fs::copy_options::recursive);
  fs::resize_file(folder(d / "broken", 20) + "/model.pt", 3);
  fs::create_directories(d / "empty");
  auto before = snapshot(src);
  auto broken_before = snapshot(d / "broken");

  struct Case {
    std::string name, ckpt, from;
    std::vector<std::string> needles;
    std::map<std::string, std::string> env{};
  };
  std::vector<Case> cases = {
      {"missing", d / "new", d / "nowhere", {"--init-from " + (d / "nowhere") + ": no such"}},
      {"no valid checkpoint", d / "new", d / "broken",
       {"--init-from " + (d / "broken") + ": no valid checkpoint", "skipped " + folder(d / "broken", 20) + " (step 20): "}},
      {"no checkpoint at all", d / "new", d / "empty", {"--init-from " + (d / "empty") + ": no checkpoint in it"}},
      {"its own dir", d / "new", d / "new", {"--init-from " + (d / "new") + ": it is this run's own checkpoint directory"}},
      {"inside its own dir", d / "new", d / "new/step-000000000010",
       {"--init-from " + (d / "new/step-000000000010") + ": it is inside this run's own checkpoint directory"}},
      {"its own dir inside the source", src + "/fork", src, {"--init-from " + src + ": this run's checkpoint directory"}},
      {"another world size", d / "new", src,
       {"checkpoint " + folder(src, 40) + " was written by 1 rank(s), this run has 2"},
       {{"SLURM_STEP_NUM_TASKS", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_STEP_ID", "0"}, {"SLURM_STEP_NUM_NODES", "1"}}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    std::string out;
    CHECK_MESSAGE(run(run_cmd(c.ckpt, {"--init-from", c.from}, trainer(5)), &out, c.env) == 2, out);
    for (const auto& n : c.needles) CHECK_MESSAGE(contains(out, n), out);
    CHECK_MESSAGE(contains(out, "nothing started"), out);
    CHECK_FALSE(contains(out, "train-example"));
    CHECK_FALSE(fs::exists(c.ckpt));
    CHECK(snapshot(src) == before);
    CHECK(snapshot(d / "broken") == broken_before);
  }
  // LIFELINE_INIT_FROM is --init-from's variable.
  std::string out;
  CHECK(run(run_cmd(d / "new", {}, trainer(5)), &out, {{"LIFELINE_INIT_FROM", d / "nowhere"}}) == 2);
  CHECK_MESSAGE(contains(out, "--init-from " + (d / "nowhere") + ": no such"), out);
  CHECK_FALSE(fs::exists(d / "new"));
}

TEST_CASE("python: train_torch.py --warm-start reset under --init-from loads the source's weights and restarts at "
          "step 0") {
  const char* py = std::getenv("PYTHON");
  const char* script = std::getenv("TRAIN_TORCH_PY");
  if (!py || !script || run({py, "-c", "import torch"}) != 0) {
    MESSAGE("skipped: no python3 with torch");
    return;
  }
  TempDir d;
  auto cmd = [&](const std::string& ckpt, const std::vector<std::string>& opts, const std::vector<std::string>& args) {
    std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--ckpt-dir", ckpt};
    v.insert(v.end(), opts.begin(), opts.end());
    v.insert(v.end(), {"--", py, script, "--seed", "3", "--log-every", "1"});
    v.insert(v.end(), args.begin(), args.end());
    return v;
  };
  std::string out;
  REQUIRE_MESSAGE(run(cmd(d / "src", {}, {"--steps", "20"}), &out) == 0, out);
  auto at = out.find("digest ");
  REQUIRE(at != std::string::npos);
  std::string digest = out.substr(at + 7, 64);
  out.clear();
  REQUIRE_MESSAGE(run(cmd(d / "new", {"--init-from", d / "src"}, {"--steps", "8", "--warm-start", "reset"}), &out) == 0,
                  out);
  CHECK_MESSAGE(contains(out, "warm start (reset) from step 20 (" + folder(d / "src", 20) + "): weights digest " +
                                  digest + ", step 0"),
                out);
  CHECK_MESSAGE(contains(out, "step 1 loss"), out);
  CHECK(fs::exists(folder(d / "new", 8)));
  CHECK(events_named(d / "new", "attempt_start").at(0)["parent"]["step"] == 20);
}
