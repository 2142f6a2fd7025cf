// supervisor.json is replaced atomically and durably (temporary file, fsync, rename, directory
// fsync): a full disk or any other failure leaves the old record intact and no temporary file
// behind, and a link or FIFO put in its place is replaced, never written through.
#include <doctest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "history/supervisor_record.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Names in `dir` other than supervisor.json and `keep`: temporary files left behind.
std::vector<std::string> others(const std::string& dir, const std::string& keep = "") {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n != kSupervisorRecordName && n != keep) out.push_back(n);
  }
  return out;
}

json record(uint64_t attempt, size_t padding = 0) {
  return {{"pid", 4242}, {"host", "node-a"}, {"attempt", attempt}, {"lineage", std::string(padding, 'x')}};
}

// A small tmpfs mounted on a fresh directory, in a mount namespace of this test process only
// (so nothing outside sees it, and it goes away with the process whatever happens).
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& size) {
    REQUIRE_MESSAGE(unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): " << std::strerror(errno) << " (needs root)");
    REQUIRE(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
    REQUIRE_MESSAGE(mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0,
                    "mount tmpfs: " << std::strerror(errno));
  }
  ~SmallTmpfs() { umount2(dir_.path().c_str(), MNT_DETACH); }
  const std::string& path() const { return dir_.path(); }

 private:
  TempDir dir_;
};

}  // namespace

TEST_CASE("write_supervisor_record_file replaces supervisor.json and leaves no temporary file") {
  TempDir d;
  std::string error;
  REQUIRE(write_supervisor_record_file(d.path(), record(0), &error));
  CHECK(error.empty());
  REQUIRE(write_supervisor_record_file(d.path(), record(1), &error));
  auto r = read_supervisor_record(d.path());
  REQUIRE(r);
  CHECK(r->attempt == 1);
  CHECK(r->pid == 4242);
  CHECK(others(d.path()).empty());
  struct stat st {};
  REQUIRE(stat((d / kSupervisorRecordName).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);
}

TEST_CASE("on a full file system the old supervisor.json survives intact and no temporary file is left") {
  SmallTmpfs disk("64k");
  std::string error;
  REQUIRE(write_supervisor_record_file(disk.path(), record(3), &error));
  std::string before = read_all(disk.path() + "/" + kSupervisorRecordName);
  {  // fill the rest of the file system
    std::ofstream fill(disk.path() + "/fill", std::ios::binary);
    std::string block(4096, 'f');
    for (int i = 0; i < 64 && fill.write(block.data(), block.size()); ++i) {
    }
  }
  CHECK_FALSE(write_supervisor_record_file(disk.path(), record(4), &error));  // smaller than a stream buffer
  CHECK(error.find("cannot write " + disk.path() + "/supervisor.json") == 0);
  CHECK(error.find(std::strerror(ENOSPC)) != std::string::npos);
  CHECK(read_all(disk.path() + "/" + kSupervisorRecordName) == before);
  CHECK(others(disk.path(), "fill").empty());
  auto r = read_supervisor_record(disk.path());
  REQUIRE(r);
  CHECK(r->attempt == 3);
}

TEST_CASE("a supervisor.json that is a symbolic link or a FIFO is replaced by the rename, never written through") {
  TempDir d;
  std::string victim = d / "victim";
  std::ofstream(victim) << "precious";
  SUBCASE("symbolic link") { fs::create_symlink(victim, d / kSupervisorRecordName); }
  SUBCASE("FIFO") { REQUIRE(mkfifo((d / kSupervisorRecordName).c_str(), 0644) == 0); }
  std::string error;
  REQUIRE(write_supervisor_record_file(d.path(), record(5), &error));
  CHECK(read_all(victim) == "precious");
  CHECK(fs::is_regular_file(fs::symlink_status(d / kSupervisorRecordName)));
  REQUIRE(read_supervisor_record(d.path()));
  CHECK(read_supervisor_record(d.path())->attempt == 5);
}

TEST_CASE("a record that cannot be created leaves the old one and says why, naming the file") {
  TempDir d;
  std::string error;
  CHECK_FALSE(write_supervisor_record_file(d / "missing", record(0), &error));
  CHECK(error.find("cannot write " + d / "missing/supervisor.json: create ") == 0);
  CHECK_FALSE(write_supervisor_record_file(d / "missing", record(0), nullptr));  // no error wanted: still false
}
