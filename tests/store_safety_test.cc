// Whether a checkpoint directory can be trusted (ssh's StrictModes for checkpoint directories):
// owned by the caller or root, not writable by every user unless sticky, in no parent that
// every user can write without the sticky bit; and what is wrong with a directory a command
// was pointed at.
#include <doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "store/dir_safety.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;
namespace fs = std::filesystem;

namespace {
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("a checkpoint directory of one's own, group-writable or not, is safe") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  for (mode_t mode : {0700, 0755, 0770, 02775}) {
    CAPTURE(mode);
    REQUIRE(chmod(dir.c_str(), mode) == 0);
    CHECK(unsafe_dir_reason(dir) == "");
  }
  CHECK(unsafe_dir_reason(d / "not-yet") == "");  // nothing to judge until it exists
}

TEST_CASE("a checkpoint directory writable by every user is unsafe unless it has the sticky bit") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  REQUIRE(chmod(dir.c_str(), 0777) == 0);
  std::string why = unsafe_dir_reason(dir);
  CHECK(contains(why, "writable by every user (mode 0777)"));
  CHECK(contains(why, "chmod o-w " + dir));
  REQUIRE(chmod(dir.c_str(), 01777) == 0);
  CHECK(unsafe_dir_reason(dir) == "");
}

TEST_CASE("a checkpoint directory owned by another user than the caller or root is unsafe") {
  TempDir d;
  std::string dir = d / "ckpt";
  fs::create_directory(dir);
  uid_t other = geteuid() == 65534 ? 65533 : 65534;
  REQUIRE(chown(dir.c_str(), other, gid_t(-1)) == 0);  // the tests run as root
  std::string why = unsafe_dir_reason(dir);
  CHECK(contains(why, "is owned by uid " + std::to_string(other)));
  CHECK(contains(why, "use a directory of your own"));
}

TEST_CASE("a checkpoint directory inside a parent every user can write without the sticky bit is unsafe") {
  TempDir d;
  std::string parent = d / "shared";
  fs::create_directories(parent + "/ckpt");
  REQUIRE(chmod(parent.c_str(), 0777) == 0);
  CHECK(contains(unsafe_dir_reason(parent + "/ckpt"), "is inside " + parent + ", which is writable by every user"));
  SUBCASE("reached through a symbolic link from a safe place") {
    fs::create_directory_symlink(parent + "/ckpt", d / "link");
    CHECK(contains(unsafe_dir_reason(d / "link"), "is inside " + parent));
  }
  SUBCASE("sticky, like /tmp") {
    REQUIRE(chmod(parent.c_str(), 01777) == 0);
    CHECK(unsafe_dir_reason(parent + "/ckpt") == "");
  }
}

TEST_CASE("a missing checkpoint directory, a file in its place and an unreadable one are named") {
  TempDir d;
  CHECK(checkpoint_dir_problem(d.path()) == "");
  CHECK(checkpoint_dir_problem(d / "missing") == "no checkpoint directory " + d / "missing");
  std::ofstream(d / "file") << "x";
  CHECK(checkpoint_dir_problem(d / "file") == d / "file is not a directory");
}
