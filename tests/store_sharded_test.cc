// Sharded checkpoints (docs/distributed.md): parts written by ranks, the leader's commit, the
// version-2 MANIFEST and its verification, and the resume choice around them.
#include <doctest.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/clock.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/checksum.h"
#include "store/manifest.h"
#include "store/retention.h"
#include "store/sharded.h"
#include "support/fault_injection_fs.h"
#include "support/store_fixtures.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

const bool scratch_on_tmpfs = prefer_tmpfs_scratch();

const std::string kStaging20 = shared_staging_name(20, (4242ULL << 32) | 0x1234abcdULL);

// The payload rank `rank` writes into file `name` of the checkpoint of `step`.
std::string payload(uint64_t step, uint32_t rank, const std::string& name) {
  return "step " + std::to_string(step) + " rank " + std::to_string(rank) + " " + name + ";";
}

// Writes and commits the part of `rank` (its files `names`) into `staging` of `dir`.
CommitResult write_part(const std::string& dir, const std::string& staging, uint64_t step, uint32_t rank,
                        uint32_t world, const std::vector<std::string>& names, FileSystem& fsys = disk()) {
  CheckpointWriter w(fsys, dir, step, CheckpointMeta{}, PartOf{staging, rank, world});
  for (const auto& n : names) {
    std::string p = payload(step, rank, n);
    w.write_file(n, p.data(), p.size());
  }
  return w.commit();
}

// The bytes every rank of `world_files` writes, in all.
uint64_t total_bytes(uint64_t step, const std::vector<std::vector<std::string>>& world_files) {
  uint64_t sum = 0;
  for (uint32_t r = 0; r < world_files.size(); ++r)
    for (const auto& n : world_files[r]) sum += payload(step, r, n).size();
  return sum;
}

// A committed sharded checkpoint of `step` in `dir`: three ranks, rank 1 writes no file.
const std::vector<std::vector<std::string>> kThreeRanks = {{"model.pt", "optim/state.pt"}, {}, {"model.pt"}};

CommitResult commit_three(const std::string& dir, uint64_t step) {
  std::string staging = shared_staging_name(step, (4242ULL << 32) | step);
  for (uint32_t r = 0; r < 3; ++r) write_part(dir, staging, step, r, 3, kThreeRanks[r]);
  CheckpointMeta meta;
  meta.job_id = "77";
  meta.attempt = 2;
  meta.host = "node1";
  return commit_sharded(disk(), dir, staging, step, 3, meta, mono_ns(), {{"loss", 0.5}});
}

// Rewrites part manifest `rank` of checkpoint `ckpt` after `edit`, and its entry in the top
// MANIFEST to the new size and checksum, so only the edit itself can make it invalid.
void edit_part(const std::string& ckpt, uint32_t rank, const std::function<void(nlohmann::json&)>& edit) {
  std::string rel = part_folder_name(rank) + "/MANIFEST";
  nlohmann::json j = nlohmann::json::parse(read_file(ckpt + "/" + rel));
  edit(j);
  std::string text = j.dump();
  std::ofstream(ckpt + "/" + rel, std::ios::trunc) << text;
  edit_manifest(ckpt, [&](nlohmann::json& top) {
    auto hasher = make_hasher(top["checksum_algorithm"].get<std::string>());
    hasher->update(text.data(), text.size());
    top["parts"][rank]["bytes"] = text.size();
    top["parts"][rank]["checksum"] = hasher->hex_digest();
  });
}

}  // namespace

TEST_CASE("names: rank folders have 5 digits or more; the shared staging name is one gc parses") {
  CHECK(part_folder_name(0) == "rank-00000");
  CHECK(part_folder_name(3) == "rank-00003");
  CHECK(part_folder_name(123456) == "rank-123456");
  std::string name = shared_staging_name(40, (4242ULL << 32) | 0x0000abcdULL);
  CHECK(name == ".staging-step-000000000040-4242-0000abcd");
  CHECK(is_staging_name(name));
  CHECK(staging_writer_pid(name) == pid_t(4242));
  CHECK_FALSE(step_from_folder_name(name));
}

TEST_CASE("three ranks (one without files) write parts; the leader commits a valid version-2 checkpoint") {
  TempDir d;
  std::string staging = d / kStaging20;
  std::vector<CommitResult> parts;
  for (uint32_t r = 0; r < 3; ++r) {
    CheckpointWriter w(disk(), d.path(), 20, CheckpointMeta{}, PartOf{kStaging20, r, 3});
    CHECK(w.is_part());
    CHECK(w.path() == staging + "/" + part_folder_name(r));
    for (const auto& n : kThreeRanks[r]) {
      std::string p = payload(20, r, n);
      w.write_file(n, p.data(), p.size());
    }
    parts.push_back(w.commit());
  }
  CHECK(parts[0].bytes == total_bytes(20, {kThreeRanks[0]}));
  CHECK(parts[1].bytes == 0);
  CHECK(parts[1].path == fs::absolute(staging + "/rank-00001").lexically_normal().string());
  CHECK(fs::exists(staging + "/rank-00001/MANIFEST"));
  CHECK_FALSE(fs::exists(d / "step-000000000020"));  // a part renames nothing

  CheckpointMeta meta;
  meta.job_id = "77";
  meta.lineage = "lin";
  CommitResult c = commit_sharded(disk(), d.path(), kStaging20, 20, 3, meta, mono_ns(), {{"loss", 0.25}});
  CHECK_FALSE(c.already_present);
  CHECK(c.path == fs::absolute(d / "step-000000000020").lexically_normal().string());
  CHECK(c.bytes == total_bytes(20, kThreeRanks));
  CHECK_FALSE(fs::exists(staging));

  nlohmann::json top = nlohmann::json::parse(read_file(c.path + "/MANIFEST"));
  CHECK(top["format_version"] == 2);
  CHECK(top["world_size"] == 3);
  CHECK(top["files"] == nlohmann::json::array());
  CHECK(top["parts"].size() == 3);
  CHECK(top["parts"][2]["path"] == "rank-00002/MANIFEST");
  CHECK(top["job_id"] == "77");
  CHECK(top["lineage"] == "lin");
  nlohmann::json part = nlohmann::json::parse(read_file(c.path + "/rank-00001/MANIFEST"));
  CHECK(part["format"] == "lifeline-checkpoint-part");
  CHECK(part["files"] == nlohmann::json::array());

  for (VerifyMode mode : {VerifyMode::full, VerifyMode::quick, VerifyMode::full_around_cache}) {
    CheckpointInfo info = verify_checkpoint(c.path, mode);
    CHECK_MESSAGE(info.valid, info.problem);
    CHECK(info.world_size == 3);
    CHECK(info.bytes == total_bytes(20, kThreeRanks));
    CHECK(info.step == 20);
    CHECK(info.metrics.at("loss") == 0.25);
  }
  nlohmann::json obj = checkpoint_object(verify_checkpoint(c.path, VerifyMode::full));
  CHECK(obj["world_size"] == 3);
  CHECK(obj["valid"] == true);
  ResumeChoice choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 20);
  CHECK(choice.resume->world_size == 3);
}

TEST_CASE("a version-1 checkpoint still reports world_size 1 and is written as before") {
  TempDir d;
  std::string p = commit_step(d.path(), 5, "abc", disk());
  CheckpointInfo info = verify_checkpoint(p, VerifyMode::full);
  CHECK(info.valid);
  CHECK(info.world_size == 1);
  CHECK(checkpoint_object(info)["world_size"] == 1);
  nlohmann::json top = nlohmann::json::parse(read_file(p + "/MANIFEST"));
  CHECK(top["format_version"] == 1);
  CHECK_FALSE(top.contains("world_size"));
  CHECK_FALSE(top.contains("parts"));
}

TEST_CASE("a missing part: commit_sharded names the rank, commits nothing and leaves the staging folder") {
  TempDir d;
  write_part(d.path(), kStaging20, 20, 0, 3, {"a"});
  write_part(d.path(), kStaging20, 20, 2, 3, {"a"});
  CHECK_THROWS_WITH_AS(commit_sharded(disk(), d.path(), kStaging20, 20, 3, CheckpointMeta{}, mono_ns()),
                       doctest::Contains("rank 1"), std::runtime_error);
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
  CHECK(fs::exists(d / kStaging20 + "/rank-00000/MANIFEST"));
  // A part folder without its MANIFEST (the rank is still writing) is missing too.
  fs::create_directories(d / kStaging20 + "/rank-00001");
  CHECK_THROWS_WITH_AS(commit_sharded(disk(), d.path(), kStaging20, 20, 3, CheckpointMeta{}, mono_ns()),
                       doctest::Contains("rank 1 has no rank-00001/MANIFEST"), std::runtime_error);
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
  // Abandoned: the whole shared folder goes.
  remove_staging(disk(), d.path(), kStaging20);
  CHECK_FALSE(fs::exists(d / kStaging20));
  remove_staging(disk(), d.path(), "step-000000000001");  // not a staging name: left alone
}

TEST_CASE("a part of another step or world size is refused by the leader") {
  TempDir d;
  write_part(d.path(), kStaging20, 20, 0, 2, {"a"});
  write_part(d.path(), kStaging20, 19, 1, 2, {"a"});  // a rank that wrote the wrong step's part
  CHECK_THROWS_WITH_AS(commit_sharded(disk(), d.path(), kStaging20, 20, 2, CheckpointMeta{}, mono_ns()),
                       doctest::Contains("names step 19, rank 1 of 2, not step 20"), std::runtime_error);
  write_part(d.path(), kStaging20, 20, 1, 3, {"a"});  // the retry of rank 1, with a wrong world
  CHECK_THROWS_WITH_AS(commit_sharded(disk(), d.path(), kStaging20, 20, 2, CheckpointMeta{}, mono_ns()),
                       doctest::Contains("rank 1 of 3"), std::runtime_error);
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
}

TEST_CASE("no rank wrote a file: the leader refuses the empty checkpoint") {
  TempDir d;
  for (uint32_t r = 0; r < 2; ++r) write_part(d.path(), kStaging20, 20, r, 2, {});
  CHECK_THROWS_WITH_AS(commit_sharded(disk(), d.path(), kStaging20, 20, 2, CheckpointMeta{}, mono_ns()),
                       doctest::Contains("none of its 2 ranks wrote a file"), std::runtime_error);
  CHECK_FALSE(fs::exists(d / "step-000000000020"));
}

TEST_CASE("a corrupted part file makes the checkpoint invalid, naming the file") {
  TempDir d;
  std::string p = commit_three(d.path(), 20).path;
  flip_byte(p + "/rank-00002/model.pt", 3);
  CheckpointInfo info = verify_checkpoint(p, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem == "file rank-00002/model.pt does not match its xxh3-64 checksum");
  CHECK(verify_checkpoint(p, VerifyMode::quick).valid);  // same size: only a checksum sees it
  std::ofstream(p + "/rank-00000/optim/state.pt", std::ios::app) << "more";
  info = verify_checkpoint(p, VerifyMode::quick);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("file rank-00000/optim/state.pt has") == 0);
  // A damaged part manifest: its listed checksum no longer matches.
  std::string q = commit_three(d.path(), 30).path;
  std::ofstream(q + "/rank-00001/MANIFEST", std::ios::app) << " ";
  info = verify_checkpoint(q, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("part manifest rank-00001/MANIFEST has") == 0);
  fs::remove(q + "/rank-00001/MANIFEST");
  info = verify_checkpoint(q, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("rank 1: file rank-00001/MANIFEST is missing") == 0);
}

TEST_CASE("a part manifest naming another step, rank or world size is invalid even with the right checksum") {
  TempDir d;
  std::string p = commit_three(d.path(), 20).path;
  REQUIRE(verify_checkpoint(p, VerifyMode::full).valid);
  edit_part(p, 1, [](nlohmann::json& j) { j["step"] = 19; });
  CheckpointInfo info = verify_checkpoint(p, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("names step 19") != std::string::npos);
  edit_part(p, 1, [](nlohmann::json& j) {
    j["step"] = 20;
    j["world_size"] = 4;
  });
  info = verify_checkpoint(p, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("rank 1 of 4") != std::string::npos);
  edit_part(p, 1, [](nlohmann::json& j) {
    j["world_size"] = 3;
    j["rank"] = 2;
  });
  CHECK_FALSE(verify_checkpoint(p, VerifyMode::full).valid);
  edit_part(p, 1, [](nlohmann::json& j) { j["rank"] = 1; });
  CHECK(verify_checkpoint(p, VerifyMode::full).valid);  // the edits undone: valid again
  edit_part(p, 1, [](nlohmann::json& j) { j["files"] = {{{"path", "../x"}, {"bytes", 0}, {"checksum", "0"}}}; });
  info = verify_checkpoint(p, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("unsafe") != std::string::npos);
}

TEST_CASE("a top manifest with a duplicate, missing, extra or misplaced rank is invalid") {
  TempDir d;
  std::string p = commit_three(d.path(), 20).path;
  std::string original = read_file(p + "/MANIFEST");
  auto restore = [&] { std::ofstream(p + "/MANIFEST", std::ios::trunc) << original; };
  auto problem = [&] {
    CheckpointInfo info = verify_checkpoint(p, VerifyMode::full);
    CHECK_FALSE(info.valid);
    return info.problem;
  };
  edit_manifest(p, [](nlohmann::json& j) { j["parts"][2] = j["parts"][0]; });
  CHECK(problem() == "MANIFEST lists rank 0 twice");
  restore();
  edit_manifest(p, [](nlohmann::json& j) { j["parts"].erase(2); });
  CHECK(problem() == "MANIFEST lists 2 parts for a world of 3 ranks");
  restore();
  edit_manifest(p, [](nlohmann::json& j) { j["world_size"] = 2; });
  CHECK(problem() == "MANIFEST lists 3 parts for a world of 2 ranks");
  restore();
  edit_manifest(p, [](nlohmann::json& j) { j["parts"][1]["path"] = "rank-1/MANIFEST"; });
  CHECK(problem().find("not rank-00001/MANIFEST") != std::string::npos);
  restore();
  edit_manifest(p, [](nlohmann::json& j) { j["world_size"] = 0; });
  CHECK(problem() == "MANIFEST has world_size 0");
  restore();
  edit_manifest(p, [](nlohmann::json& j) { j.erase("parts"); });
  CHECK(problem() == "manifest lacks 'parts'");
  restore();
  edit_manifest(p, [](nlohmann::json& j) { j["files"] = {{{"path", "x"}, {"bytes", 0}, {"checksum", "0"}}}; });
  CHECK(problem().find("files outside its parts") != std::string::npos);
  restore();
  CHECK(verify_checkpoint(p, VerifyMode::full).valid);
}

TEST_CASE("manifest JSON: version 2 and part manifests round-trip; version 1 is unchanged") {
  Manifest m;
  m.step = 7;
  m.checksum_algorithm = "sha256";
  m.format_version = 2;
  m.world_size = 2;
  m.parts = {{0, "rank-00000/MANIFEST", 10, "aa"}, {1, "rank-00001/MANIFEST", 11, "bb"}};
  Manifest back = manifest_from_json(manifest_to_json(m));
  CHECK(back.format_version == 2);
  CHECK(back.world_size == 2);
  REQUIRE(back.parts.size() == 2);
  CHECK(back.parts[1].bytes == 11);
  CHECK(back.parts[1].checksum == "bb");
  CHECK(back.files.empty());

  PartManifest p;
  p.step = 7;
  p.rank = 1;
  p.world_size = 2;
  p.checksum_algorithm = "xxh3-64";
  PartManifest pb = part_manifest_from_json(part_manifest_to_json(p));
  CHECK(pb.rank == 1);
  CHECK(pb.files.empty());
  p.files = {{"sub/a.bin", 3, "0123"}};
  CHECK(part_manifest_from_json(part_manifest_to_json(p)).files.at(0).path == "sub/a.bin");
  p.rank = 2;
  CHECK_THROWS_WITH_AS(part_manifest_from_json(part_manifest_to_json(p)), doctest::Contains("rank 2 in a world of 2"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(part_manifest_from_json(std::string(kMaxManifestBytes + 1, ' ')),
                       doctest::Contains("over the limit"), std::runtime_error);
  CHECK_THROWS_AS(part_manifest_from_json(manifest_to_json(m)), std::runtime_error);  // not a part

  Manifest v1;
  v1.step = 3;
  v1.checksum_algorithm = "xxh3-64";
  v1.files = {{"a", 1, "00"}};
  nlohmann::json j = nlohmann::json::parse(manifest_to_json(v1));
  CHECK(j["format_version"] == 1);
  CHECK_FALSE(j.contains("parts"));
  CHECK(manifest_from_json(manifest_to_json(v1)).format_version == 1);
  v1.files.clear();
  CHECK_THROWS_WITH_AS(manifest_from_json(manifest_to_json(v1)), doctest::Contains("lists no files"),
                       std::runtime_error);
}

TEST_CASE("parts written but never committed: resume takes the previous checkpoint") {
  TempDir d;
  commit_three(d.path(), 10);
  // The crash came between the parts: two of three written, no top MANIFEST, no rename.
  std::string staging = shared_staging_name(20, (4242ULL << 32) | 99);
  write_part(d.path(), staging, 20, 0, 3, {"a"});
  write_part(d.path(), staging, 20, 2, 3, {"a"});
  ResumeChoice choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 10);
  CHECK(choice.skipped.empty());  // a staging folder is never a candidate
  // A step-N folder whose part went missing is skipped, naming it.
  commit_three(d.path(), 30);
  fs::remove_all(d / "step-000000000030/rank-00002");
  choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 10);
  REQUIRE(choice.skipped.size() == 1);
  CHECK(choice.skipped[0].problem.find("rank 2") == 0);
  CHECK(choice.skipped[0].world_size == 3);
}

TEST_CASE("the same step committed again: a valid one is kept, an invalid one replaced") {
  TempDir d;
  std::string first = commit_three(d.path(), 20).path;
  std::string before = read_file(first + "/MANIFEST");
  CommitResult again = commit_three(d.path(), 20);
  CHECK(again.already_present);
  CHECK(read_file(first + "/MANIFEST") == before);
  CHECK(dot_names(d.path()).empty());  // the new staging folder went
  flip_byte(first + "/rank-00000/model.pt", 0);
  REQUIRE_FALSE(verify_checkpoint(first, VerifyMode::full).valid);
  CommitResult replaced = commit_three(d.path(), 20);
  CHECK_FALSE(replaced.already_present);
  CHECK(verify_checkpoint(first, VerifyMode::full).valid);
  CHECK(dot_names(d.path()).empty());  // the trash went too
}

TEST_CASE("part mode: a rank's leftover folder is emptied, a failed or dropped part removes only its folder") {
  TempDir d;
  std::string staging = d / kStaging20;
  write_part(d.path(), kStaging20, 20, 0, 2, {"a"});
  // An earlier try of rank 1 left a folder with a stray file.
  fs::create_directories(staging + "/rank-00001");
  std::ofstream(staging + "/rank-00001/stale") << "old";
  CommitResult r1 = write_part(d.path(), kStaging20, 20, 1, 2, {"b"});
  CHECK_FALSE(fs::exists(staging + "/rank-00001/stale"));
  CHECK(r1.bytes == payload(20, 1, "b").size());
  {
    CheckpointWriter dropped(disk(), d.path(), 21, CheckpointMeta{}, PartOf{shared_staging_name(21, (1ULL << 32) | 1), 0, 2});
    dropped.write_file("x", "x", 1);
  }
  CHECK(fs::exists(d / shared_staging_name(21, (1ULL << 32) | 1)));  // the shared folder stays
  CHECK(names_in(d / shared_staging_name(21, (1ULL << 32) | 1)).empty());
  CHECK_THROWS_AS(CheckpointWriter(disk(), d.path(), 20, CheckpointMeta{}, PartOf{kStaging20, 2, 2}),
                  std::invalid_argument);
  CHECK_THROWS_AS(CheckpointWriter(disk(), d.path(), 20, CheckpointMeta{}, PartOf{"step-000000000020", 0, 2}),
                  std::invalid_argument);
  {
    // A link in the part is refused at commit; only the part folder goes.
    CheckpointWriter w(disk(), d.path(), 20, CheckpointMeta{}, PartOf{kStaging20, 0, 2});
    fs::create_symlink("/etc/passwd", w.path() + "/link");
    CHECK_THROWS_WITH_AS(w.commit(), doctest::Contains("symbolic link"), std::runtime_error);
    CHECK_FALSE(fs::exists(staging + "/rank-00000"));
    CHECK(fs::exists(staging + "/rank-00001/MANIFEST"));
  }
}

TEST_CASE("a part whose fsync fails: its commit fails and only its rank folder is removed") {
  TempDir d;
  write_part(d.path(), kStaging20, 20, 0, 2, {"a"});
  FaultInjectionFileSystem ffs(disk(), d.path());
  CheckpointWriter w(ffs, d.path(), 20, CheckpointMeta{}, PartOf{kStaging20, 1, 2});
  w.write_file("b", "bb", 2);
  uint64_t n = ffs.op_count();
  ffs.fail_at(n + 3, EIO);  // create, write, fsync of the part MANIFEST
  CHECK_THROWS_WITH_AS(w.commit(), doctest::Contains("Input/output error"), std::exception);
  REQUIRE(ffs.op_log().size() >= n + 3);
  CHECK(ffs.op_log()[n + 2].find("fsync " + d / kStaging20 + "/rank-00001/MANIFEST") != std::string::npos);
  CHECK_FALSE(fs::exists(d / kStaging20 + "/rank-00001"));
  CHECK(fs::exists(d / kStaging20 + "/rank-00000/MANIFEST"));
  CHECK_THROWS_WITH_AS(commit_sharded(disk(), d.path(), kStaging20, 20, 2, CheckpointMeta{}, mono_ns()),
                       doctest::Contains("rank 1"), std::runtime_error);
}
