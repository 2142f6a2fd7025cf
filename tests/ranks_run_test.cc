// Ranks of one node under `lifeline run` end to end (docs/distributed.md): torchrun (Debian's
// python3-torch) launches examples/train_ddp.py (DDP over gloo) or the real LibTorch example
// trainer (--no_python) three times, the
// supervisor is stopped by a real signal, the ranks checkpoint one agreed step, the supervisor
// commits their parts as one checkpoint, and the resumed run ends bit-exact. Every rank trains
// the same replicated model, so the reference is the trainer alone, uninterrupted.
#include <doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "support/process.h"
#include "support/temp_dir.h"
#include "support/text_file.h"

using namespace lifeline::test;
using json = nlohmann::json;

namespace {

constexpr int kSteps = 120;
constexpr int kRanks = 3;

// A TCP port on loopback that was free a moment ago, for torchrun's rendezvous.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::vector<std::string> train_cmd(const std::string& digest, int delay_ms, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> v = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(kSteps), "--seed", "11",
                                "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1",
                                "--digest-out", digest};
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

// torchrun with kRanks local workers running `cmd` directly. --redirects/--tee: Debian 12's
// torchrun fails at start on Python 3.11 without them (docs/distributed.md).
std::vector<std::string> torchrun(const std::vector<std::string>& cmd) {
  std::vector<std::string> v = {binary("PYTHON"), "-m", "torch.distributed.run", "--nnodes", "1",
                                "--nproc_per_node", std::to_string(kRanks), "--master_addr", "127.0.0.1",
                                "--master_port", std::to_string(free_port()), "--redirects", "1", "--tee", "1",
                                "--no_python"};
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

std::vector<std::string> lifeline_run(const TempDir& d, const std::vector<std::string>& cmd,
                                      const std::string& policy_extra = "") {
  std::string policy = d / "policy.yaml";
  std::ofstream(policy) << "version: 1\n"
                           "checkpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                           "restart:\n  backoff_seconds: 0\n"
                           "retention:\n  keep_last: 1000\n  keep_best: 0\n"
                        << policy_extra;
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", d / "ckpt", "--"};
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

const std::string& reference_digest() {
  static std::string digest = [] {
    TempDir d;
    std::string out;
    int rc = run(train_cmd(d / "digest", 0), &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}});
    REQUIRE_MESSAGE(rc == 0, out);
    return first_line(d / "digest");
  }();
  return digest;
}

json checkpoints(const TempDir& d) {
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", d / "ckpt", "--json"}, &listing) == 0);
  return json::parse(listing);
}

std::vector<uint64_t> resumed_steps(const std::string& output) {
  std::vector<uint64_t> v;
  std::regex re("resumed from step ([0-9]+)");
  for (std::sregex_iterator it(output.begin(), output.end(), re), end; it != end; ++it) v.push_back(std::stoull((*it)[1]));
  return v;
}

// A run of `cmd` under lifeline stopped by SIGUSR1 to the supervisor at a random step: its
// output, and the step the ranks agreed on (REQUIREs exit 75 and an agreement).
struct Stopped {
  std::string output;
  uint64_t agreed = 0;
};
Stopped stop_at_random_step(const TempDir& d, const std::vector<std::string>& cmd, const std::string& policy_extra = "") {
  std::random_device rd;
  int k = std::uniform_int_distribution<int>(25, kSteps - 30)(rd);
  CAPTURE(k);
  Process first(lifeline_run(d, cmd, policy_extra));
  REQUIRE(first.wait_for_line("step " + std::to_string(k) + " ") != "");
  first.signal(SIGUSR1);
  int rc = first.wait();
  Stopped s{first.output()};
  REQUIRE_MESSAGE(rc == 75, s.output);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(s.output, m, std::regex("ranks agreed to checkpoint step ([0-9]+)")), s.output);
  s.agreed = std::stoull(m[1]);
  CHECK(s.agreed > uint64_t(k));
  return s;
}

}  // namespace

TEST_CASE("three ranks under torchrun stopped by SIGUSR1 checkpoint one agreed step and resume to the same digest") {
  TempDir d;
  Stopped first = stop_at_random_step(d, torchrun(train_cmd(d / "digest", 20)));
  const std::string& out1 = first.output;
  uint64_t agreed = first.agreed;
  // Every rank stopped at the agreed step, after its part.
  size_t stops = 0;
  for (std::string::size_type p = 0; (p = out1.find("stopping at step " + std::to_string(agreed), p)) != std::string::npos; ++p) ++stops;
  CHECK(stops == kRanks);
  json list = checkpoints(d);
  REQUIRE(!list.empty());
  CHECK(list.back()["step"] == agreed);
  for (const auto& c : list) {
    CHECK(c["valid"] == true);
    CHECK(c["world_size"] == kRanks);
  }

  std::string out;
  int rc = run(lifeline_run(d, torchrun(train_cmd(d / "digest", 0))), &out);
  CHECK_MESSAGE(rc == 0, out);
  std::vector<uint64_t> resumed = resumed_steps(out);
  CHECK(resumed == std::vector<uint64_t>(kRanks, agreed));
  CHECK(first_line(d / "digest") == reference_digest());
}

TEST_CASE("a rank killed during a save leaves no checkpoint of that save and the restart resumes from the one before") {
  TempDir d;
  // Attempt 0: checkpoints 20 and 40 commit; rank 1 dies (SIGKILL) while writing 60; torchrun
  // ends the others; lifeline restarts the trainer, which must resume from 40.
  Process p(lifeline_run(d, torchrun(train_cmd(d / "digest", 0, {"--die-in-save", "60", "--die-rank", "1", "--crash-once"}))));
  int rc = p.wait();
  std::string out = p.output();
  CHECK_MESSAGE(rc == 0, out);
  CHECK(out.find("dying in the save of step 60") != std::string::npos);
  std::vector<uint64_t> resumed = resumed_steps(out);
  CHECK_MESSAGE(resumed == std::vector<uint64_t>(kRanks, 40), out);
  CHECK(first_line(d / "digest") == reference_digest());
  for (const auto& c : checkpoints(d)) CHECK(c["valid"] == true);
}

namespace {

std::vector<std::string> ddp_cmd(const std::string& digest, int delay_ms) {
  return {std::string(LIFELINE_SOURCE_DIR) + "/examples/train_ddp.py", "--steps", std::to_string(kSteps), "--seed", "5",
          "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1", "--digest-out", digest};
}

// torchrun running a Python script as its kRanks workers.
std::vector<std::string> torchrun_python(const std::vector<std::string>& cmd) {
  std::vector<std::string> v = torchrun(cmd);
  v.erase(std::find(v.begin(), v.end(), "--no_python"));
  return v;
}

}  // namespace

TEST_CASE("DDP over gloo with three ranks under torchrun, stopped by SIGUSR1, resumes to the uninterrupted digest") {
  TempDir ref;
  std::string out;
  // The reference: the same three ranks, uninterrupted, without lifeline (the data depends on the rank).
  int rc = run(torchrun_python(ddp_cmd(ref / "digest", 0)), &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}});
  REQUIRE_MESSAGE(rc == 0, out);
  std::string reference = first_line(ref / "digest");
  REQUIRE(reference.size() == 64);

  TempDir d;
  Stopped first = stop_at_random_step(d, torchrun_python(ddp_cmd(d / "digest", 20)));
  const std::string& out1 = first.output;
  uint64_t agreed = first.agreed;
  CHECK(out1.find("train-ddp: stopping at step " + std::to_string(agreed)) != std::string::npos);
  json list = checkpoints(d);
  REQUIRE(!list.empty());
  CHECK(list.back()["step"] == agreed);
  CHECK(list.back()["world_size"] == kRanks);

  rc = run(lifeline_run(d, torchrun_python(ddp_cmd(d / "digest", 0))), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(out.find("train-ddp: resumed from step " + std::to_string(agreed)) != std::string::npos);
  CHECK(first_line(d / "digest") == reference);
}

TEST_CASE("a DDP rank killed while it writes its part leaves no checkpoint of that save and every rank resumes from the one before") {
  TempDir ref;
  std::string out;
  int rc = run(torchrun_python(ddp_cmd(ref / "digest", 0)), &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}});
  REQUIRE_MESSAGE(rc == 0, out);

  TempDir d;
  std::vector<std::string> cmd = ddp_cmd(d / "digest", 0);
  cmd.insert(cmd.end(), {"--die-in-save", "60", "--crash-rank", "1", "--crash-once"});
  rc = run(lifeline_run(d, torchrun_python(cmd)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(out.find("train-ddp: rank 1 dying in the save of step 60") != std::string::npos);
  CHECK_MESSAGE(out.find("train-ddp: resumed from step 40") != std::string::npos, out);
  CHECK(first_line(d / "digest") == first_line(ref / "digest"));
  for (const auto& c : checkpoints(d)) CHECK(c["valid"] == true);
}

TEST_CASE("a SIGTERM to one rank stops every rank at one agreed step, and the run resumes to the same digest") {
  TempDir d;
  Process first(lifeline_run(d, torchrun(train_cmd(d / "digest", 20))));
  REQUIRE(first.wait_for_line("step 30 ") != "");
  std::string status;
  REQUIRE(run({binary("LIFELINE_BIN"), "status", d / "ckpt", "--json", "--sample", "0"}, &status) == 0);
  json s = json::parse(status);
  REQUIRE_MESSAGE(s["ranks"].is_array(), status);
  REQUIRE(s["ranks"].size() == kRanks);
  pid_t rank1 = 0;
  for (const auto& r : s["ranks"])
    if (r["rank"] == 1) rank1 = r["pid"].get<pid_t>();
  REQUIRE(rank1 > 0);
  ::kill(rank1, SIGTERM);  // the rank's own signal: no signal reaches the supervisor
  int rc = first.wait();
  std::string out1 = first.output();
  REQUIRE_MESSAGE(rc == 75, out1);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(out1, m, std::regex("ranks agreed to checkpoint step ([0-9]+)")), out1);
  uint64_t agreed = std::stoull(m[1]);
  size_t stops = 0;
  for (std::string::size_type p = 0; (p = out1.find("stopping at step " + std::to_string(agreed), p)) != std::string::npos; ++p) ++stops;
  CHECK(stops == kRanks);
  CHECK(checkpoints(d).back()["step"] == agreed);

  std::string out;
  rc = run(lifeline_run(d, torchrun(train_cmd(d / "digest", 0))), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(resumed_steps(out) == std::vector<uint64_t>(kRanks, agreed));
  CHECK(first_line(d / "digest") == reference_digest());
}

TEST_CASE("three ranks with a node-local tier: their sharded checkpoint drains whole, and they resume from it bit-exact with the local dir gone") {
  TempDir d;
  const std::string tier = "storage:\n  local: " + (d / "local") + "\n";
  Stopped first = stop_at_random_step(d, torchrun(train_cmd(d / "digest", 20)), tier);
  json list = checkpoints(d);  // the checkpoint dir: drained checkpoints only
  REQUIRE(!list.empty());
  CHECK(list.back()["step"] == first.agreed);
  for (const auto& c : list) {
    CHECK(c["valid"] == true);
    CHECK(c["world_size"] == kRanks);
  }
  std::filesystem::remove_all(d / "local");
  std::string out;
  int rc = run(lifeline_run(d, torchrun(train_cmd(d / "digest", 0)), tier), &out);
  REQUIRE_MESSAGE(rc == 0, out);
  std::vector<uint64_t> resumed = resumed_steps(out);
  CHECK(resumed.size() == size_t(kRanks));
  for (uint64_t r : resumed) CHECK(r == first.agreed);
  CHECK(first_line(d / "digest") == reference_digest());
}
