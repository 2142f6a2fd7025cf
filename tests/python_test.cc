// The Python client (python/lifeline_client.py) against the C++ side: the same control-block
// layout, constant for constant, and a real C++-created block driven by a Python trainer.
#include <doctest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "control/control_block.h"
#include "lifeline/control_layout.h"
#include "store/checkpoint_store.h"
#include "store/writers_lock.h"
#include "support/process.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::layout;
using namespace lifeline::test;
using json = nlohmann::json;

namespace {

// Every constant of control_layout.h, by its C++ name; the test below checks none is missing.
#define LIFELINE_OFFSETS(X)                                                                        \
  X(kMagicOff) X(kVersionOff) X(kSizeOff) X(kOwnerUidOff) X(kSupervisorPidOff) X(kTrainerPidOff)   \
  X(kTrainerSignalOff) X(kRequestSeqOff) X(kRequestReasonOff) X(kRequestFlagsOff) X(kDeadlineOff)  \
  X(kAckSeqOff) X(kAckStepOff) X(kCurrentStepOff) X(kEveryStepsOff) X(kSkipFirstStepsOff)         \
  X(kCommitCountOff) X(kLastCommitStepOff) X(kLastCommitNsOff) X(kLastCommitBytesOff)             \
  X(kFailedSavesOff) X(kClientStateOff) X(kStepsSeenOff) X(kAgreementSeqOff) X(kAgreedStepOff)       \
  X(kStagingTokenOff) X(kAbandonedStepOff) X(kAgreedStopOff)
// A rank slot's fields (offsets within the slot), and where the slots start.
#define LIFELINE_SLOT_OFFSETS(X)                                                                  \
  X(kSlotPidOff) X(kSlotRankOff) X(kSlotWorldSizeOff) X(kSlotStateOff) X(kSlotCurrentStepOff)      \
  X(kSlotSeenSeqOff) X(kSlotPromisedStepOff) X(kSlotPartStepOff) X(kSlotPartBytesOff)             \
  X(kSlotFailedStepOff) X(kSlotFailedSavesOff) X(kSlotPartNsOff)
#define LIFELINE_REASONS(X) X(none) X(periodic) X(stop_signal) X(time_limit) X(manual) X(trainer_signal)
#define LIFELINE_STATES(X) X(absent) X(attached) X(saving) X(exiting)

// kOwnerUidOff -> owner_uid: the Python table's field names.
std::string snake(const std::string& constant) {
  std::string core = constant.substr(1, constant.size() - 4), out;
  for (char c : core) {
    if (std::isupper(static_cast<unsigned char>(c))) {
      if (!out.empty()) out += '_';
      out += char(std::tolower(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out;
}

// The layout from the compiled header, in the shape of lifeline_client.layout_table(slots=True).
json cpp_table() {
  json t;
  t["magic"] = kMagic;
  t["version"] = kVersion;
  t["size"] = kSize;
  t["flag_stop"] = kFlagStop;
#define OFFSET(name) t["offsets"][snake(#name)] = name;
  LIFELINE_OFFSETS(OFFSET)
#define REASON(name) t["reasons"][#name] = uint32_t(Reason::name);
  LIFELINE_REASONS(REASON)
#define STATE(name) t["client_states"][#name] = uint32_t(ClientState::name);
  LIFELINE_STATES(STATE)
  t["header_size"] = kHeaderSize;
  t["max_local_ranks"] = kMaxLocalRanks;
  t["rank_slot_size"] = kRankSlotSize;
  t["rank_slots_off"] = kRankSlotsOff;
#define SLOT_OFFSET(name) t["slot_offsets"][snake(#name)] = name;  // kSlotPidOff -> slot_pid
  LIFELINE_SLOT_OFFSETS(SLOT_OFFSET)
  return t;
}

// A supervisor for the watch tests: this binary run again (LIFELINE_PY_SUPERVISOR_HELPER) makes a
// control block, says its name, and waits to be killed.
const bool kIsSupervisorHelper = [] {
  if (!std::getenv("LIFELINE_PY_SUPERVISOR_HELPER")) return false;
  ControlBlock block = ControlBlock::create("pywatch");
  std::printf("block %s\n", block.name().c_str());
  std::fflush(stdout);
  for (;;) pause();
}();

std::string python() { return binary("PYTHON"); }
std::string python_dir() { return std::string(LIFELINE_SOURCE_DIR) + "/python"; }

// Runs a Python snippet with python/ importable; returns its output.
std::string run_python(const std::string& code, int* status = nullptr,
                       const std::map<std::string, std::string>& env = {}) {
  std::string out;
  int rc = run({python(), "-c", "import sys; sys.path.insert(0, '" + python_dir() + "')\n" + code}, &out, env);
  if (status) *status = rc;
  else REQUIRE_MESSAGE(rc == 0, out);
  return out;
}

}  // namespace

TEST_CASE("the test's list covers every offset, reason and state the header declares") {
  std::ifstream in(std::string(LIFELINE_SOURCE_DIR) + "/include/lifeline/control_layout.h");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string header = ss.str();
  REQUIRE(!header.empty());
  json t = cpp_table();
  std::regex off_re("constexpr size_t (k\\w+Off) = ");
  size_t offsets = 0;
  for (std::sregex_iterator it(header.begin(), header.end(), off_re), end; it != end; ++it) {
    ++offsets;
    std::string name = (*it)[1];
    bool known = t["offsets"].contains(snake(name)) || name == "kRankSlotsOff" ||
                 (name.rfind("kSlot", 0) == 0 && t["slot_offsets"].contains(snake(name)));
    CHECK_MESSAGE(known, name << " is missing from tests/python_test.cc");
  }
  CHECK(offsets == t["offsets"].size() + 1 + t["slot_offsets"].size());
  for (const char* e : {"Reason", "ClientState"}) {
    std::smatch m;
    REQUIRE(std::regex_search(header, m, std::regex(std::string("enum class ") + e + "[^{]*\\{([^}]*)\\}")));
    std::string body = m[1];
    size_t n = size_t(std::count(body.begin(), body.end(), '='));
    CHECK_MESSAGE(n == t[std::string(e) == "Reason" ? "reasons" : "client_states"].size(), e);
  }
}

TEST_CASE("python/lifeline_client.py declares exactly the C++ control-block layout") {
  json py = json::parse(run_python("import json, lifeline_client; print(json.dumps(lifeline_client.layout_table(slots=True)))"));
  json cpp = cpp_table();
  CHECK_MESSAGE(py == cpp, "python: " << py.dump() << "\nc++:    " << cpp.dump());
  // Widths: every Python field is naturally aligned and inside the block, none overlap.
  std::string check = run_python(
      "import lifeline_client as l\n"
      "end = 0\n"
      "for name, (off, width) in sorted(l.FIELDS.items(), key=lambda f: f[1]):\n"
      "    assert width in (4, 8) and off % width == 0 and off >= end, name\n"
      "    end = off + width\n"
      "assert end <= l.SIZE\n"
      "print('ok')");
  CHECK(check.find("ok") != std::string::npos);
}

TEST_CASE("a Python trainer answers a C++ request through a real control block and its checkpoint verifies") {
  TempDir d;
  ControlBlock block = ControlBlock::create("pytest");
  block.u64(kEveryStepsOff).store(0);
  uint64_t seq = block.request(Reason::manual, false, 0);
  Process p({python(), "-c",
             "import sys; sys.path.insert(0, '" + python_dir() + "')\n"
             "import lifeline_client as l\n"
             "c = l.Client.from_env()\n"
             "assert c.active and not c.should_exit()\n"
             "assert c.should_checkpoint(3)\n"
             "ck = c.begin_checkpoint(3)\n"
             "ck.write_file('sub/a.bin', b'x' * 1000)\n"
             "open(ck.path + '/b.bin', 'wb').write(b'y' * 24)\n"
             "assert ck.commit({'loss': 0.5})\n"
             "assert not c.should_checkpoint(4)\n"
             "print('done', flush=True)\n"},
            {{"LIFELINE_CONTROL", block.name()}, {"LIFELINE_CKPT_DIR", d / "ckpt"}});
  pid_t pid = p.pid();
  int rc = p.wait();
  REQUIRE_MESSAGE(rc == 0, p.output());
  CHECK(block.u32(kTrainerPidOff).load() == uint32_t(pid));
  CHECK(block.u64(kAckSeqOff).load() == seq);
  CHECK(block.u64(kAckStepOff).load() == 3);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK(block.u64(kLastCommitStepOff).load() == 3);
  CHECK(block.u64(kLastCommitBytesOff).load() == 1024);
  CHECK(block.u64(kCurrentStepOff).load() == 4);
  CHECK(block.u32(kClientStateOff).load() == uint32_t(ClientState::exiting));
  CheckpointInfo info = verify_checkpoint(d / "ckpt/step-000000000003", VerifyMode::full);
  CHECK_MESSAGE(info.valid, info.problem);
  CHECK(info.bytes == 1024);
  CHECK(info.metrics.at("loss") == 0.5);
}

TEST_CASE("the Python client refuses a block of another layout version") {
  ControlBlock block = ControlBlock::create("pytest");
  block.u32(kVersionOff).store(kVersion + 1);
  int rc = 0;
  std::string out = run_python("import lifeline_client as l\nl.Client.from_env()", &rc, {{"LIFELINE_CONTROL", block.name()}});
  CHECK(rc != 0);
  CHECK_MESSAGE(out.find("has layout version " + std::to_string(kVersion + 1) + ", this client speaks " +
                         std::to_string(kVersion)) != std::string::npos,
                out);
}

namespace {

// True once `pid` has exited: a child of ours (not reaped here), or any process (gone or zombie).
bool exited(pid_t pid, bool our_child) {
  if (our_child) {
    siginfo_t info{};
    return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
  }
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return true;
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

// Waits up to 10 s for `pid` to exit; false if it did not.
bool wait_exit(pid_t pid, bool our_child) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < until) {
    if (exited(pid, our_child)) return true;
    struct timespec ms {0, 2'000'000};
    nanosleep(&ms, nullptr);
  }
  return false;
}

// A supervisor helper and the name of its block.
struct Supervisor {
  Process process{{"/proc/self/exe"}, {{"LIFELINE_PY_SUPERVISOR_HELPER", "1"}, {"LIFELINE_CONTROL", ""}}};
  std::string block;
  Supervisor() {
    std::string line = process.wait_for_line("block ");
    REQUIRE_MESSAGE(!line.empty(), process.output());
    block = line.substr(6);
  }
  ~Supervisor() { shm_unlink(block.c_str()); }  // killed: it could not unlink its block
};

// A Python trainer in a process group of its own (as lifeline run gives it), with a forked
// worker that closes its copy of the client and stays, as a data-loader worker would.
Process python_trainer(const std::string& block, const std::string& ckpt) {
  return Process({python(), "-c",
                  "import os, signal, sys, time; sys.path.insert(0, '" + python_dir() + "')\n"
                  "os.setpgid(0, 0)\n"
                  "import lifeline_client as l\n"
                  "c = l.Client.from_env()\n"
                  "worker = os.fork()\n"
                  "if worker == 0:\n"
                  "    c.close()\n"
                  "    while True: signal.pause()\n"
                  "print('attached, worker', worker, flush=True)\n"
                  "step = 0\n"
                  "while True:\n"
                  "    step += 1\n"
                  "    c.should_checkpoint(step)\n"
                  "    time.sleep(0.001)\n"},
                 {{"LIFELINE_CONTROL", block}, {"LIFELINE_CKPT_DIR", ckpt}, {"LIFELINE_PY_SUPERVISOR_HELPER", ""}});
}

}  // namespace

TEST_CASE("a Python trainer whose supervisor is killed with SIGKILL is stopped with its process group, and frees the writers' lock") {
  TempDir d;
  std::string ckpt = d / "ckpt";
  Supervisor sup;
  Process trainer = python_trainer(sup.block, ckpt);
  std::string line = trainer.wait_for_line("attached, worker ");
  REQUIRE_MESSAGE(!line.empty(), trainer.output());
  pid_t worker = pid_t(std::stoi(line.substr(line.rfind(' ') + 1)));
  CHECK(getpgid(worker) == trainer.pid());
  std::vector<LockHolder> holders;
  CHECK_FALSE(no_writers(ckpt, &holders));  // registered as a writer while it lives
  CHECK_MESSAGE(describe_holders(holders).find("pid " + std::to_string(trainer.pid())) != std::string::npos,
                describe_holders(holders));
  {
    ControlBlock view = ControlBlock::attach(sup.block);  // the worker's close() left it alone
    CHECK(ClientState(view.u32(kClientStateOff).load()) == ClientState::attached);
  }

  auto t0 = std::chrono::steady_clock::now();
  sup.process.signal(SIGKILL);
  CHECK(sup.process.wait() == 128 + SIGKILL);
  bool trainer_gone = wait_exit(trainer.pid(), true);
  bool worker_gone = wait_exit(worker, false);
  CHECK_MESSAGE(trainer_gone, "the Python trainer outlived its supervisor");
  CHECK_MESSAGE(worker_gone, "the Python trainer's worker outlived its supervisor");
  if (!worker_gone) kill(worker, SIGKILL);  // so that a failure fails, not hangs
  if (!trainer_gone) trainer.signal(SIGKILL);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));  // a pidfd wakes the watch at once
  CHECK(trainer.wait() == 128 + SIGKILL);
  CHECK_MESSAGE(trainer.output().find("lifeline: supervisor pid " + std::to_string(sup.process.pid()) +
                                      " is gone: stopping this trainer") != std::string::npos,
                trainer.output());
  CHECK(no_writers(ckpt));
}

TEST_CASE("a Python trainer that attaches after its supervisor is gone stops at once") {
  TempDir d;
  Supervisor sup;
  sup.process.signal(SIGKILL);
  REQUIRE(sup.process.wait() == 128 + SIGKILL);
  Process trainer = python_trainer(sup.block, d / "ckpt");
  bool gone = wait_exit(trainer.pid(), true);
  CHECK_MESSAGE(gone, "the Python trainer runs on without its supervisor");
  if (!gone) {  // so that a failure fails, not hangs: the trainer and its worker
    std::string line = trainer.wait_for_line("attached, worker ");
    if (!line.empty()) kill(pid_t(std::stoi(line.substr(line.rfind(' ') + 1))), SIGKILL);
    trainer.signal(SIGKILL);
  }
  CHECK(trainer.wait() == 128 + SIGKILL);
  CHECK_MESSAGE(trainer.output().find("is gone: stopping this trainer") != std::string::npos, trainer.output());
  CHECK(trainer.output().find("attached") == std::string::npos);
  CHECK(no_writers(d / "ckpt"));
}
