// The Python client (python/lifeline_client.py) against the C++ side: the same control-block
// layout, constant for constant, and a real C++-created block driven by a Python trainer.
#include <doctest.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "control/control_block.h"
#include "lifeline/control_layout.h"
#include "store/checkpoint_store.h"
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
  X(kFailedSavesOff) X(kClientStateOff) X(kStepsSeenOff)
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

// The layout from the compiled header, in the shape of lifeline_client.layout_table().
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
  return t;
}

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
    CHECK_MESSAGE(t["offsets"].contains(snake(name)), name << " is missing from tests/python_test.cc");
  }
  CHECK(offsets == t["offsets"].size());
  for (const char* e : {"Reason", "ClientState"}) {
    std::smatch m;
    REQUIRE(std::regex_search(header, m, std::regex(std::string("enum class ") + e + "[^{]*\\{([^}]*)\\}")));
    std::string body = m[1];
    size_t n = size_t(std::count(body.begin(), body.end(), '='));
    CHECK_MESSAGE(n == t[std::string(e) == "Reason" ? "reasons" : "client_states"].size(), e);
  }
}

TEST_CASE("python/lifeline_client.py declares exactly the C++ control-block layout") {
  json py = json::parse(run_python("import json, lifeline_client; print(json.dumps(lifeline_client.layout_table()))"));
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
  CHECK_MESSAGE(out.find("has layout version 2, this client speaks 1") != std::string::npos, out);
}
