// Hostile or damaged on-disk input: whatever a checkpoint folder holds, verification reports
// a problem, never follows a link out of the folder, never blocks and never crashes; resume
// falls back to the previous valid checkpoint. And the writer refuses what it must not commit.
#include <doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "support/store_fixtures.h"

using namespace lifeline;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

void write_manifest(const std::string& ckpt, const std::string& text) {
  fs::remove(ckpt + "/MANIFEST");
  std::ofstream(ckpt + "/MANIFEST", std::ios::binary) << text;
}

// The problem verification reports for `ckpt` (which must be invalid in both modes), after
// checking that resume falls back to the valid step 10.
std::string problem_of(const std::string& dir, const std::string& ckpt) {
  CheckpointInfo quick = verify_checkpoint(ckpt, VerifyMode::quick);
  CheckpointInfo full = verify_checkpoint(ckpt, VerifyMode::full);
  CHECK_FALSE(full.valid);
  CHECK_FALSE(full.problem.empty());
  ResumeChoice c = choose_resume(dir);
  REQUIRE(c.resume);
  CHECK(c.resume->step == 10);
  return full.problem;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("a manifest path through a symlinked parent folder is invalid and the link is not followed") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  fs::create_directories(d / "elsewhere");
  fs::copy_file(p + "/sub/state.bin", d / "elsewhere/state.bin");
  fs::remove_all(p + "/sub");
  fs::create_directory_symlink(d / "elsewhere", p + "/sub");
  CHECK(contains(problem_of(d.path(), p), "file sub/state.bin goes through a symbolic link"));
  CHECK_FALSE(verify_checkpoint(p, VerifyMode::quick).valid);
}

TEST_CASE("a MANIFEST that is a symbolic link is never followed, even to a valid manifest") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  fs::rename(p + "/MANIFEST", d / "real-manifest");
  fs::create_symlink(d / "real-manifest", p + "/MANIFEST");
  CHECK(problem_of(d.path(), p) == "MANIFEST is a symbolic link (never followed)");
}

TEST_CASE("a MANIFEST or a data file that is a FIFO is reported without blocking") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  SUBCASE("MANIFEST") {
    fs::remove(p + "/MANIFEST");
    REQUIRE(mkfifo((p + "/MANIFEST").c_str(), 0644) == 0);
    CHECK(contains(problem_of(d.path(), p), "not a regular file"));
  }
  SUBCASE("data file") {
    fs::remove(p + "/weights.bin");
    REQUIRE(mkfifo((p + "/weights.bin").c_str(), 0644) == 0);
    CHECK(problem_of(d.path(), p) == "file weights.bin is not a regular file");
  }
}

TEST_CASE("a MANIFEST that is a directory is reported") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  fs::remove(p + "/MANIFEST");
  fs::create_directory(p + "/MANIFEST");
  CHECK(contains(problem_of(d.path(), p), "not a regular file"));
}

TEST_CASE("a checkpoint folder that is a symbolic link is never followed, even to a valid checkpoint") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string real = commit_step(d.path(), 20, "payload");
  fs::rename(real, d / "hidden");
  fs::create_directory_symlink(d / "hidden", real);
  CHECK(contains(problem_of(d.path(), real), "symbolic link"));
  auto list = list_checkpoints(d.path(), VerifyMode::full);
  REQUIRE(list.size() == 2);
  CHECK_FALSE(list[1].valid);
}

TEST_CASE("a checkpoint name that is a regular file, or a step that overflows, is not a checkpoint") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::ofstream(d / "step-000000000030") << "not a folder";
  CHECK(problem_of(d.path(), d / "step-000000000030") == "not a directory (or a symbolic link)");
  fs::create_directory(d / "step-99999999999999999999");
  CHECK_FALSE(step_from_folder_name("step-99999999999999999999"));
  CHECK(step_from_folder_name("step-18446744073709551615") == UINT64_MAX);
  CHECK(list_checkpoints(d.path(), VerifyMode::quick).size() == 2);
}

TEST_CASE("a huge MANIFEST is refused without reading it") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  fs::resize_file(p + "/MANIFEST", uint64_t(65) << 20);  // sparse: costs no disk
  CHECK(contains(problem_of(d.path(), p), "over the limit of 4 MiB"));
}

TEST_CASE("a MANIFEST over 4 MiB is invalid without being read, and the problem names the limit") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  fs::resize_file(p + "/MANIFEST", (uint64_t(4) << 20) + 1);  // sparse: costs no disk
  std::string problem = problem_of(d.path(), p);
  CHECK(problem == "MANIFEST is 4194305 bytes, over the limit of 4 MiB (kMaxManifestBytes): not read");
}

TEST_CASE("a MANIFEST with invalid UTF-8 is reported with its bytes as \\xNN and its JSON can be written") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  std::string text = read_file(p + "/MANIFEST");
  text.replace(text.find("\"host\""), 6, "\"h\xff\xfe\"");  // a raw byte inside a key: the parser stops there
  write_manifest(p, text);
  std::string problem = problem_of(d.path(), p);
  CHECK(contains(problem, "not valid JSON"));
  CHECK(contains(problem, "\\xff"));
  CHECK_NOTHROW(nlohmann::json(problem).dump());  // valid UTF-8: nlohmann serialises it
  for (const auto& c : list_checkpoints(d.path(), VerifyMode::full)) {
    std::string j;
    REQUIRE_NOTHROW(j = checkpoint_json(c));
    CHECK(nlohmann::json::parse(j)["step"] == c.step);
  }
}

TEST_CASE("a MANIFEST that lists no files is invalid and resume falls back to the older checkpoint") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  edit_manifest(p, [](nlohmann::json& j) { j["files"] = nlohmann::json::array(); });
  CHECK(contains(problem_of(d.path(), p), "MANIFEST lists no files"));
  CHECK_FALSE(verify_checkpoint(p, VerifyMode::quick).valid);
}

TEST_CASE("the writer refuses to commit a checkpoint without files and removes its staging folder") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  CheckpointWriter w(default_file_system(), d.path(), 20, CheckpointMeta{});
  fs::create_directory(w.path() + "/empty-sub");  // a folder is not a file
  CHECK_THROWS_WITH(w.commit(), doctest::Contains("has no files"));
  CHECK_FALSE(fs::exists(w.path()));
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->step == 10);
}

TEST_CASE("the writer refuses to commit a checkpoint whose MANIFEST would exceed 4 MiB") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  CheckpointWriter w(default_file_system(), d.path(), 20, CheckpointMeta{});
  w.write_file("weights.bin", "w", 1);
  std::map<std::string, double> metrics;  // ~4.4 MB of metric names
  for (int i = 0; metrics.size() < 40000; ++i) metrics["metric_" + std::string(100, 'x') + std::to_string(i)] = i;
  CHECK_THROWS_WITH(w.commit(metrics), doctest::Contains("over the limit of 4 MiB"));
  CHECK_FALSE(fs::exists(w.path()));
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
}

TEST_CASE("a metric name that is not valid UTF-8 is committed as \\xNN; a file name that is not is refused") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  SUBCASE("metric name") {
    CheckpointWriter w(default_file_system(), d.path(), 20, CheckpointMeta{});
    w.write_file("weights.bin", "w", 1);
    REQUIRE_NOTHROW(w.commit({{"loss\xff", 0.5}}));
    CheckpointInfo info = verify_checkpoint(d / "step-000000000020", VerifyMode::full);
    CHECK(info.valid);
    CHECK(info.metrics.count("loss\\xff") == 1);
    CHECK(nlohmann::json::parse(checkpoint_json(info))["metrics"]["loss\\xff"] == 0.5);
  }
  SUBCASE("file name") {
    CheckpointWriter w(default_file_system(), d.path(), 20, CheckpointMeta{});
    w.write_file("weights.bin", "w", 1);
    std::ofstream(w.path() + "/state\xff.bin") << "s";
    CHECK_THROWS_WITH(w.commit(), doctest::Contains("state\\xff.bin"));
    CHECK_FALSE(fs::exists(w.path()));
    CHECK_FALSE(fs::exists(d / "step-000000000020"));
  }
}

TEST_CASE("a checkpoint directory whose path is not valid UTF-8 is shown with \\xNN in the checkpoint JSON") {
  TempDir d;
  std::string dir = d / "run-\xff\xfe";
  fs::create_directory(dir);
  commit_step(dir, 10, "good");
  auto list = list_checkpoints(dir, VerifyMode::full);
  REQUIRE(list.size() == 1);
  CHECK(list[0].valid);
  CHECK(list[0].path == dir + "/step-000000000010");  // the real path, to open it
  std::string j;
  REQUIRE_NOTHROW(j = checkpoint_json(list[0]));
  CHECK(nlohmann::json::parse(j)["path"] == d / "run-\\xff\\xfe/step-000000000010");
}

TEST_CASE("deeply nested, empty, binary or truncated JSON in a MANIFEST is reported, never fatal") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  SUBCASE("nested a million deep") {
    write_manifest(p, std::string(1000000, '[') + std::string(1000000, ']'));
    CHECK(problem_of(d.path(), p) == "MANIFEST is not a JSON object");
  }
  SUBCASE("nested and unterminated") {
    write_manifest(p, std::string(1000000, '{'));
    CHECK(contains(problem_of(d.path(), p), "not valid JSON"));
  }
  SUBCASE("empty") {
    write_manifest(p, "");
    CHECK(contains(problem_of(d.path(), p), "not valid JSON"));
  }
  SUBCASE("binary") {
    write_manifest(p, std::string("\0\xff\xfe{\"format\"", 13));
    CHECK(contains(problem_of(d.path(), p), "not valid JSON"));
  }
  SUBCASE("truncated") {
    std::string text;
    std::getline(std::ifstream(p + "/MANIFEST"), text, '\0');
    write_manifest(p, text.substr(0, text.size() / 2));
    CHECK(contains(problem_of(d.path(), p), "not valid JSON"));
  }
  SUBCASE("foreign format") {
    write_manifest(p, R"({"format":"something-else"})");
    CHECK(problem_of(d.path(), p) == "MANIFEST format is not lifeline-checkpoint");
  }
}

TEST_CASE("manifest entries with wrong sizes, types, paths or algorithms are reported") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  std::string p = commit_step(d.path(), 20, "payload");
  SUBCASE("size larger than any file") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["bytes"] = UINT64_MAX; });
    CHECK(contains(problem_of(d.path(), p), "the manifest says 18446744073709551615"));
  }
  SUBCASE("negative size") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["bytes"] = -1; });
    CHECK(contains(problem_of(d.path(), p), "wrong type"));
  }
  SUBCASE("unknown algorithm") {
    edit_manifest(p, [](nlohmann::json& j) { j["checksum_algorithm"] = "crc32"; });
    CHECK(problem_of(d.path(), p) == "unknown checksum algorithm 'crc32'");
  }
  SUBCASE("checksum of the wrong type") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["checksum"] = 12; });
    CHECK(contains(problem_of(d.path(), p), "wrong type"));
  }
  SUBCASE("a file entry that is not an object") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"].push_back("weights.bin"); });
    CHECK(problem_of(d.path(), p) == "manifest file entry is not an object");
  }
  SUBCASE("the manifest lists itself") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["path"] = "MANIFEST"; });
    CHECK(problem_of(d.path(), p) == "manifest lists itself");
  }
  SUBCASE("a path with a NUL byte") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["path"] = std::string("weights.bin\0x", 13); });
    CHECK(contains(problem_of(d.path(), p), "NUL"));
  }
  SUBCASE("a path that is not normalized") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["path"] = "sub//state.bin"; });
    CHECK(contains(problem_of(d.path(), p), "not normalized"));
  }
  SUBCASE("absolute") {
    edit_manifest(p, [&](nlohmann::json& j) { j["files"][0]["path"] = p + "/weights.bin"; });
    CHECK(contains(problem_of(d.path(), p), "absolute path"));
  }
  SUBCASE("dot-dot inside the folder") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["path"] = "sub/../weights.bin"; });
    CHECK(contains(problem_of(d.path(), p), "'..'"));
  }
  SUBCASE("thirty thousand entries for files that do not exist") {  // ~1.3 MB, under kMaxManifestBytes
    edit_manifest(p, [](nlohmann::json& j) {
      for (int i = 0; i < 30000; ++i) j["files"].push_back({{"path", "f" + std::to_string(i)}, {"bytes", 1}, {"checksum", "0"}});
    });
    CHECK(problem_of(d.path(), p) == "file f0 is missing");
  }
}

TEST_CASE("the writer refuses unsafe names, links and special files, and leaves older checkpoints alone") {
  TempDir d;
  commit_step(d.path(), 10, "good");
  CheckpointWriter w(default_file_system(), d.path(), 20, CheckpointMeta{});
  CHECK_THROWS_AS(w.write_file("../escape.bin", "x", 1), std::invalid_argument);
  CHECK_THROWS_AS(w.write_file("/tmp/escape.bin", "x", 1), std::invalid_argument);
  CHECK_THROWS_AS(w.write_file("MANIFEST", "x", 1), std::invalid_argument);
  CHECK_FALSE(fs::exists(d / "escape.bin"));
  SUBCASE("a symbolic link") {
    fs::create_symlink(d / "step-000000000010/weights.bin", w.path() + "/link.bin");
    CHECK_THROWS_WITH(w.commit(), "checkpoint file link.bin is a symbolic link: not allowed");
  }
  SUBCASE("a FIFO") {
    REQUIRE(mkfifo((w.path() + "/pipe").c_str(), 0644) == 0);
    CHECK_THROWS_WITH(w.commit(), "checkpoint file pipe is not a regular file");
  }
  SUBCASE("a MANIFEST of its own") {
    std::ofstream(w.path() + "/MANIFEST") << "{}";
    CHECK_THROWS_WITH(w.commit(), "the trainer wrote a file named MANIFEST");
  }
  CHECK_FALSE(fs::exists(w.path()));
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->step == 10);
}
