// The checkpoint store: commit protocol, verification, and the resume choice with fallback.
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "support/store_fixtures.h"

using namespace lifeline;
using lifeline::test::edit_manifest;
using lifeline::test::flip_byte;
using lifeline::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string commit_step(const std::string& dir, uint64_t step, const std::string& payload,
                        const std::string& algorithm = "xxh3-64") {
  CheckpointMeta meta;
  meta.checksum_algorithm = algorithm;
  CheckpointWriter w(default_file_system(), dir, step, meta);
  std::ofstream(w.path() + "/weights.bin", std::ios::binary) << payload;
  fs::create_directories(w.path() + "/sub");
  w.write_file("sub/state.bin", payload.data(), payload.size());
  return w.commit({{"val_loss", 1.0 / double(step)}}).path;
}

// The fraction of a file's pages in the page cache (mincore of a mapping, which faults nothing in).
double cached_fraction(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  size_t size = size_t(fs::file_size(path));
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  REQUIRE(map != MAP_FAILED);
  size_t page = size_t(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  REQUIRE(::mincore(map, size, resident.data()) == 0);
  ::munmap(map, size);
  size_t in_cache = 0;
  for (unsigned char r : resident) in_cache += r & 1;
  return double(in_cache) / double(resident.size());
}

// Drops a file's clean pages from the page cache.
void evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Whether files in `dir` can be opened with O_DIRECT (tmpfs: no).
bool takes_o_direct(const std::string& dir) {
  int fd = ::open((dir + "/probe").c_str(), O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd >= 0) ::close(fd);
  fs::remove(dir + "/probe");
  return fd >= 0;
}

}  // namespace

TEST_CASE("a committed checkpoint verifies, records its files, and is chosen for resume") {
  TempDir d;
  std::string p = commit_step(d.path(), 20, std::string(100000, 'x'));
  CHECK(fs::path(p).filename() == "step-000000000020");
  CheckpointInfo info = verify_checkpoint(p, VerifyMode::full);
  CHECK(info.valid);
  CHECK(info.step == 20);
  CHECK(info.bytes == 200000);
  CHECK(info.metrics.at("val_loss") == doctest::Approx(0.05));
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->path == p);
  CHECK(c.skipped.empty());
  CHECK_FALSE(fs::exists(d / (".staging-step-000000000020")));
}

TEST_CASE("both checksum algorithms verify: xxh3-64 and sha256") {
  TempDir d;
  CHECK(verify_checkpoint(commit_step(d.path(), 1, "abc", "xxh3-64"), VerifyMode::full).valid);
  CHECK(verify_checkpoint(commit_step(d.path(), 2, "abc", "sha256"), VerifyMode::full).valid);
}

TEST_CASE("a truncated file makes a checkpoint invalid and resume falls back to the previous one") {
  TempDir d;
  std::string older = commit_step(d.path(), 20, std::string(5000, 'a'));
  std::string newer = commit_step(d.path(), 40, std::string(5000, 'b'));
  fs::resize_file(newer + "/weights.bin", 4000);
  CheckpointInfo info = verify_checkpoint(newer, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem.find("weights.bin") != std::string::npos);
  CHECK(info.problem.find("truncated") != std::string::npos);
  CHECK_FALSE(verify_checkpoint(newer, VerifyMode::quick).valid);
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->path == older);
  REQUIRE(c.skipped.size() == 1);
  CHECK(c.skipped[0].step == 40);
}

TEST_CASE("one flipped byte makes a checkpoint invalid and resume falls back to the previous one") {
  TempDir d;
  std::string older = commit_step(d.path(), 20, std::string(5000, 'a'));
  std::string newer = commit_step(d.path(), 40, std::string(5000, 'b'));
  flip_byte(newer + "/sub/state.bin", 1234);
  CheckpointInfo info = verify_checkpoint(newer, VerifyMode::full);
  CHECK_FALSE(info.valid);
  CHECK(info.problem == "file sub/state.bin does not match its xxh3-64 checksum");
  CHECK(verify_checkpoint(newer, VerifyMode::quick).valid);  // sizes alone cannot see it
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->step == 20);
}

TEST_CASE("a staging folder left by a killed writer is never selected") {
  TempDir d;
  commit_step(d.path(), 20, "committed");
  // A real writer process, killed with SIGKILL after writing its files and its manifest but
  // before the rename: the most complete staging folder there can be.
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    CheckpointWriter w(default_file_system(), d.path(), 40, CheckpointMeta{});
    w.write_file("weights.bin", "newer", 5);
    std::ofstream(w.path() + "/MANIFEST") << R"({"format":"lifeline-checkpoint","step":40,"checksum_algorithm":"xxh3-64","files":[]})";
    (void)!write(ready[1], "x", 1);
    pause();
    _exit(0);
  }
  char x;
  REQUIRE(read(ready[0], &x, 1) == 1);
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  int staging = 0;
  for (auto& e : fs::directory_iterator(d.path()))
    if (is_staging_name(e.path().filename().string())) ++staging;
  CHECK(staging == 1);
  ResumeChoice c = choose_resume(d.path());
  REQUIRE(c.resume);
  CHECK(c.resume->step == 20);
  CHECK(list_checkpoints(d.path(), VerifyMode::full).size() == 1);
}

TEST_CASE("manifest paths that are absolute, contain .. or go through a symlink are invalid and not followed") {
  TempDir d;
  std::string p = commit_step(d.path(), 10, "payload");
  std::ofstream(d / "outside.bin") << "payload";
  SUBCASE("absolute") {
    edit_manifest(p, [&](nlohmann::json& j) { j["files"][0]["path"] = d / "outside.bin"; });
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("absolute path") != std::string::npos);
  }
  SUBCASE("dot-dot") {
    edit_manifest(p, [&](nlohmann::json& j) { j["files"][0]["path"] = "../outside.bin"; });
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("'..'") != std::string::npos);
  }
  SUBCASE("symlink") {
    fs::remove(p + "/weights.bin");
    fs::create_symlink(d / "outside.bin", p + "/weights.bin");
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("symbolic link") != std::string::npos);
  }
  CHECK_FALSE(verify_checkpoint(p, VerifyMode::full).valid);
}

TEST_CASE("garbage, wrong types and unknown algorithms in a manifest are reported, never fatal") {
  TempDir d;
  std::string p = commit_step(d.path(), 10, "payload");
  SUBCASE("garbage") {
    std::ofstream(p + "/MANIFEST", std::ios::trunc) << "{not json";
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("not valid JSON") != std::string::npos);
  }
  SUBCASE("unknown algorithm") {
    edit_manifest(p, [](nlohmann::json& j) { j["checksum_algorithm"] = "md5"; });
    CHECK(verify_checkpoint(p, VerifyMode::full).problem == "unknown checksum algorithm 'md5'");
  }
  SUBCASE("wrong type") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["bytes"] = "many"; });
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("wrong type") != std::string::npos);
  }
  SUBCASE("wrong size") {
    edit_manifest(p, [](nlohmann::json& j) { j["files"][0]["bytes"] = 3; });
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("manifest says 3") != std::string::npos);
  }
  SUBCASE("step disagrees with the folder") {
    edit_manifest(p, [](nlohmann::json& j) { j["step"] = 11; });
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("says step 11") != std::string::npos);
  }
  SUBCASE("missing manifest") {
    fs::remove(p + "/MANIFEST");
    CHECK(verify_checkpoint(p, VerifyMode::full).problem.find("no MANIFEST") != std::string::npos);
  }
  CHECK_FALSE(verify_checkpoint(p, VerifyMode::full).valid);
  CHECK_FALSE(choose_resume(d.path()).resume);
}

TEST_CASE("committing a step again keeps the valid checkpoint and replaces an invalid one") {
  TempDir d;
  std::string first = commit_step(d.path(), 30, "first");
  {
    CheckpointWriter w(default_file_system(), d.path(), 30, CheckpointMeta{});
    w.write_file("weights.bin", "second", 6);
    CHECK(w.commit().already_present);
  }
  CHECK(verify_checkpoint(first, VerifyMode::full).valid);
  fs::resize_file(first + "/weights.bin", 1);
  {
    CheckpointWriter w(default_file_system(), d.path(), 30, CheckpointMeta{});
    w.write_file("weights.bin", "third", 5);
    CHECK_FALSE(w.commit().already_present);
  }
  CHECK(verify_checkpoint(first, VerifyMode::full).valid);
  CHECK(fs::file_size(first + "/weights.bin") == 5);
}

TEST_CASE("a writer that is dropped without commit leaves nothing behind") {
  TempDir d;
  std::string staging;
  {
    CheckpointWriter w(default_file_system(), d.path(), 5, CheckpointMeta{});
    staging = w.path();
    w.write_file("a.bin", "aaa", 3);
  }
  CHECK_FALSE(fs::exists(staging));
  CHECK(fs::is_empty(d.path()));
}

TEST_CASE("the contract's checkpoint JSON has step, path, valid, bytes, created, metrics and problem") {
  TempDir d;
  std::string p = commit_step(d.path(), 7, "xyz");
  auto j = nlohmann::json::parse(checkpoint_json(verify_checkpoint(p, VerifyMode::full)));
  CHECK(j["step"] == 7);
  CHECK(j["path"] == p);
  CHECK(j["valid"] == true);
  CHECK(j["bytes"] == 6);
  CHECK(j["created"].get<std::string>().size() == 24);
  CHECK(j["metrics"].is_object());
  CHECK_FALSE(j.contains("problem"));
  fs::remove(p + "/weights.bin");
  j = nlohmann::json::parse(checkpoint_json(verify_checkpoint(p, VerifyMode::full)));
  CHECK(j["valid"] == false);
  CHECK(j["problem"] == "file weights.bin is missing");
}

TEST_CASE("a big checkpoint file leaves at most three 8 MiB chunks of itself in the page cache") {
  TempDir d(fs::current_path());  // the build folder's disk: $TMPDIR may be a tmpfs, whose pages are the data
  REQUIRE(!d.path().empty());
  std::string bytes((96u << 20) + 4321, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char((i * 2654435761u) >> 7);
  CheckpointWriter w(default_file_system(), d.path(), 5, CheckpointMeta{});
  // In pieces, as a serializer writes: each written-back chunk is dropped two chunks later.
  StagedFile f = w.open_file("model.bin");
  for (size_t off = 0; off < bytes.size(); off += 3u << 20) f.append(bytes.data() + off, std::min<size_t>(3u << 20, bytes.size() - off));
  f.close();
  std::string p = w.commit({}).path;
  std::string file = p + "/model.bin";
  struct statfs sf {};
  REQUIRE(::statfs(file.c_str(), &sf) == 0);
  if (sf.f_type == TMPFS_MAGIC) {
    MESSAGE("a tmpfs keeps its pages: nothing to drop");
  } else {
    CHECK(cached_fraction(file) * double(bytes.size()) <= double(24u << 20) + 8192);
  }
  std::ifstream in(file, std::ios::binary);
  CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == bytes);  // all there, from the disk
  CHECK(verify_checkpoint(p, VerifyMode::full).valid);

  // One append of the whole file, straight to the file system: written behind all the same.
  auto whole = default_file_system().create_file(d.path() + "/whole.bin");
  whole->append(bytes.data(), bytes.size());
  whole->sync();
  whole->close();
  if (sf.f_type != TMPFS_MAGIC) CHECK(cached_fraction(d.path() + "/whole.bin") * double(bytes.size()) <= double(24u << 20) + 8192);
}

TEST_CASE("retention's full verify reads a big file that is not cached around the page cache; other verifies through it") {
  TempDir d(fs::current_path());  // the build folder's disk: $TMPDIR may be a tmpfs, which refuses O_DIRECT
  REQUIRE(!d.path().empty());
  // 24 MiB and an unaligned tail: whole O_DIRECT reads, then a short last one.
  std::string bytes((24u << 20) + 777, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char((i * 2654435761u) >> 13);
  CheckpointWriter w(default_file_system(), d.path(), 3, CheckpointMeta{});
  w.write_file("model.bin", bytes.data(), bytes.size());
  std::string p = w.commit({}).path;
  std::string file = p + "/model.bin";

  evict(file);
  REQUIRE(cached_fraction(file) < 0.01);
  CHECK(verify_checkpoint(p, VerifyMode::full_around_cache).valid);
  if (takes_o_direct(d.path())) {
    CHECK(cached_fraction(file) < 0.01);  // read, checked, and still not cached
  } else {
    MESSAGE("this file system refuses O_DIRECT: the verify read through the cache");
  }
  CHECK(verify_checkpoint(p, VerifyMode::full).valid);
  CHECK(cached_fraction(file) > 0.99);  // the resume's verify leaves the data for the load
  // Mostly cached: read through the cache, no disk read.
  CHECK(verify_checkpoint(p, VerifyMode::full_around_cache).valid);

  // Damage in the middle and in the tail is found either way.
  for (size_t offset : {size_t(13u << 20) + 5, bytes.size() - 3}) {
    flip_byte(file, offset);
    evict(file);
    CheckpointInfo info = verify_checkpoint(p, VerifyMode::full_around_cache);
    CHECK_FALSE(info.valid);
    CHECK(info.problem.find("does not match") != std::string::npos);
    flip_byte(file, offset);
    evict(file);
    CHECK(verify_checkpoint(p, VerifyMode::full_around_cache).valid);
  }
}
