// The store protocol (docs/protocol.md) as both clients speak it: the golden manifests of
// tests/data/manifests judged alike by the C++ and the Python verifier, and checkpoints written by
// one client verified and resumed by the other. Python is /usr/bin/python3 (PYTHON), run with and
// without the xxhash module.
#include <doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/file_system.h"
#include "store/sharded.h"
#include "support/process.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string golden_dir() { return std::string(LIFELINE_SOURCE_DIR) + "/tests/data/manifests"; }

// Python with python/ importable; `without_xxhash` hides the xxhash module, as on a host without
// python3-xxhash. Returns stdout+stderr; REQUIREs success.
std::string run_python(const std::string& code, bool without_xxhash = false) {
  std::string prelude = "import sys; sys.path.insert(0, '" + std::string(LIFELINE_SOURCE_DIR) + "/python')\n";
  if (without_xxhash) prelude += "sys.modules['xxhash'] = None\n";  // import xxhash raises ImportError
  prelude += "import json, lifeline_client as L\n";
  std::string out;
  int rc = run({binary("PYTHON"), "-c", prelude + code}, &out);
  REQUIRE_MESSAGE(rc == 0, out);
  return out;
}

bool python_has_xxhash() {
  return run_python("print(L._xxh3_64 is not None)").find("True") != std::string::npos;
}

// "valid", "invalid" or "unchecked" for each folder, as the Python verifier judges it.
json python_verdicts(const std::vector<std::string>& folders, bool without_xxhash) {
  std::string code = "out = []\nfor f in json.loads(" + json(json(folders).dump()).dump() + "):\n"
                     "    v = L.verify_checkpoint(f)\n"
                     "    out.append('invalid' if v.problem else 'valid' if v.checked else 'unchecked')\n"
                     "print(json.dumps(out))\n";
  std::string out = run_python(code, without_xxhash);
  return json::parse(out.substr(out.rfind('[')));
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A checkpoint of `step` written by the C++ store, as the C++ client commits it.
CommitResult cxx_commit(const std::string& dir, uint64_t step, const std::string& algorithm) {
  CheckpointMeta meta;
  meta.checksum_algorithm = algorithm;
  meta.lineage = "cxx";
  CheckpointWriter w(default_file_system(), dir, step, meta);
  std::string model(4096, 'c'), opt = "optimizer of step " + std::to_string(step);
  w.write_file("model.bin", model.data(), model.size());
  w.write_file("sub/optimizer.bin", opt.data(), opt.size());
  return w.commit({{"val_loss", 0.5}});
}

// Python commits `step` into `dir` (an inert client with LIFELINE_CKPT_DIR) and prints the
// commit's result and the folders it left.
std::string python_commit(const std::string& dir, uint64_t step, bool without_xxhash) {
  return run_python("c = L.Client({'LIFELINE_CKPT_DIR': " + json(dir).dump() + "})\n" +
                        "ck = c.begin_checkpoint(" + std::to_string(step) + ")\n" +
                        "ck.write_file('model.bin', b'python state')\n"
                        "print('committed', ck.commit({'val_loss': 0.75}))\n",
                    without_xxhash);
}

}  // namespace

TEST_CASE("every golden manifest is judged the same by the C++ verifier, the Python verifier and cases.json") {
  json cases = json::parse(read_all(golden_dir() + "/cases.json"));
  REQUIRE(cases.size() >= 10);
  std::vector<std::string> names, folders;
  for (auto& [name, c] : cases.items()) {
    names.push_back(name);
    auto found = checkpoint_folders(golden_dir() + "/" + name);
    REQUIRE_MESSAGE(found.size() == 1, name);
    folders.push_back(golden_dir() + "/" + name + "/" + found[0].second);
  }
  bool xxhash = python_has_xxhash();
  json with = python_verdicts(folders, false), without = python_verdicts(folders, true);
  for (size_t i = 0; i < names.size(); ++i) {
    const json& c = cases[names[i]];
    CAPTURE(names[i]);
    CAPTURE(c["why"].get<std::string>());
    CheckpointInfo info = verify_checkpoint(folders[i], VerifyMode::full);
    CAPTURE(info.problem);
    CHECK((info.valid ? "valid" : "invalid") == c["expect"].get<std::string>());
    std::string expect_without = c.value("without_xxhash", c["expect"].get<std::string>());
    CHECK(with[i] == (xxhash ? c["expect"].get<std::string>() : expect_without));
    CHECK(without[i] == expect_without);
  }
}

TEST_CASE("a C++ xxh3-64 checkpoint is valid for Python, which resumes from it with or without xxhash") {
  TempDir dir;
  cxx_commit(dir.path(), 10, "xxh3-64");
  cxx_commit(dir.path(), 20, "xxh3-64");
  for (bool without : {false, true}) {
    CAPTURE(without);
    std::string out = run_python("r = L.resume_choice(" + json(dir.path()).dump() + ")\n" +
                                     "print(r.resume.step, r.skipped, L.checkpoint_problem(r.resume.path) == '')\n",
                                 without);
    CHECK(out.find("20 [] True") != std::string::npos);
  }
  // Without xxhash, sizes are still checked: a truncated newest one is skipped.
  fs::resize_file(dir / "step-000000000020/model.bin", 10);
  std::string out = run_python("r = L.resume_choice(" + json(dir.path()).dump() + ")\n" +
                                   "print(r.resume.step, [s for s, _, _ in r.skipped])\n",
                               true);
  CHECK(out.find("10 [20]") != std::string::npos);
}

TEST_CASE("a Python commit of a step a valid C++ checkpoint holds keeps the C++ checkpoint, with or without xxhash") {
  for (bool without : {false, true}) {
    for (const char* algorithm : {"xxh3-64", "sha256"}) {
      CAPTURE(without);
      CAPTURE(algorithm);
      TempDir dir;
      cxx_commit(dir.path(), 30, algorithm);
      std::string manifest = read_all(dir / "step-000000000030/MANIFEST");
      std::string model = read_all(dir / "step-000000000030/model.bin");
      std::string out = python_commit(dir.path(), 30, without);
      CHECK(out.find("committed True") != std::string::npos);
      CHECK(read_all(dir / "step-000000000030/MANIFEST") == manifest);
      CHECK(read_all(dir / "step-000000000030/model.bin") == model);
      std::vector<std::string> left;
      for (auto& e : fs::directory_iterator(dir.path())) left.push_back(e.path().filename().string());
      CHECK(left == std::vector<std::string>{"step-000000000030"});  // no staging, no trash
      CHECK(verify_checkpoint(dir / "step-000000000030", VerifyMode::full).valid);
    }
  }
}

TEST_CASE("a Python checkpoint verifies in C++ and is the C++ resume choice") {
  TempDir dir;
  cxx_commit(dir.path(), 10, "xxh3-64");
  std::string out = python_commit(dir.path(), 20, false);
  REQUIRE(out.find("committed True") != std::string::npos);
  CheckpointInfo info = verify_checkpoint(dir / "step-000000000020", VerifyMode::full);
  CHECK_MESSAGE(info.valid, info.problem);
  CHECK(info.metrics == std::map<std::string, double>{{"val_loss", 0.75}});
  ResumeChoice choice = choose_resume(dir.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 20);
  CHECK(choice.skipped.empty());
  // And C++ then commits over it a later step, which Python resumes from in turn.
  cxx_commit(dir.path(), 30, "xxh3-64");
  out = run_python("print('resume', L.resume_choice(" + json(dir.path()).dump() + ").resume.step)");
  CHECK(out.find("resume 30") != std::string::npos);
}

TEST_CASE("a sharded checkpoint committed by the C++ leader is valid for Python, and a damaged part is invalid for both") {
  TempDir d;
  const std::string staging = shared_staging_name(12, (4242ULL << 32) | 0xabcdef01);
  for (uint32_t rank = 0; rank < 3; ++rank) {
    CheckpointMeta meta;
    CheckpointWriter part(default_file_system(), d.path(), 12, meta, PartOf{staging, rank, 3});
    if (rank != 2) {  // rank 2 writes nothing, as a DDP rank that does not save
      std::string data = "state of rank " + std::to_string(rank);
      part.write_file("state.bin", data.data(), data.size());
    }
    part.commit();
  }
  CheckpointMeta meta;
  commit_sharded(default_file_system(), d.path(), staging, 12, 3, meta, 0);
  std::string folder = d / "step-000000000012";
  REQUIRE(verify_checkpoint(folder, VerifyMode::full).valid);
  json expect = json::array({python_has_xxhash() ? "valid" : "unchecked"});
  CHECK(python_verdicts({folder}, false) == expect);

  std::fstream f(folder + "/rank-00001/state.bin", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(0);
  f.put('S');
  f.close();
  CheckpointInfo info = verify_checkpoint(folder, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("state.bin") != std::string::npos);
  if (python_has_xxhash()) CHECK(python_verdicts({folder}, false) == json::array({"invalid"}));
}
