// One writer per checkpoint directory: DirLock against a second process, as it happens when
// two jobs are pointed at the same directory.
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "store/dir_lock.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;

namespace {

// A child process that takes the lock of `dir` as `role` with SLURM_JOB_ID=`job`, reports
// through a pipe, and holds the lock until release() or its death.
class LockHolder {
 public:
  LockHolder(const std::string& dir, const std::string& role, const std::string& job) {
    int ready[2], hold[2];
    REQUIRE(pipe(ready) == 0);
    REQUIRE(pipe(hold) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(ready[0]);
      ::close(hold[1]);
      setenv("SLURM_JOB_ID", job.c_str(), 1);
      char ok = 'y';
      try {
        DirLock lock(dir, role);
        (void)!write(ready[1], &ok, 1);
        char x;
        (void)!read(hold[0], &x, 1);  // returns when the parent closes its end
      } catch (...) {
        ok = 'n';
        (void)!write(ready[1], &ok, 1);
      }
      _exit(0);
    }
    ::close(ready[1]);
    ::close(hold[0]);
    hold_ = hold[1];
    char ok = 0;
    REQUIRE(read(ready[0], &ok, 1) == 1);
    ::close(ready[0]);
    REQUIRE(ok == 'y');
  }
  ~LockHolder() { release(); }
  pid_t pid() const { return pid_; }
  void release() {
    if (hold_ >= 0) ::close(hold_);
    hold_ = -1;
    wait();
  }
  void kill_hard() {
    ::kill(pid_, SIGKILL);
    wait();
  }

 private:
  void wait() {
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  pid_t pid_ = -1;
  int hold_ = -1;
};

std::string host() {
  char h[256] = {};
  gethostname(h, sizeof h - 1);
  return h;
}

std::string refusal(const std::string& dir) {
  try {
    DirLock second(dir);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a second DirLock on the same directory from another process fails naming host, pid and job id") {
  TempDir d;
  LockHolder first(d.path(), "supervisor", "4242");
  std::string why = refusal(d.path());
  INFO(why);
  CHECK(why.find("in use") != std::string::npos);
  CHECK(why.find("host " + host()) != std::string::npos);
  CHECK(why.find("pid " + std::to_string(first.pid())) != std::string::npos);
  CHECK(why.find("job 4242") != std::string::npos);
  CHECK(why.find("lifeline supervisor") != std::string::npos);
  CHECK(why.find("one writer per directory") != std::string::npos);
  auto holder = lock_holder(d.path());
  REQUIRE(holder);
  CHECK(holder->find("pid " + std::to_string(first.pid())) != std::string::npos);
  first.release();
  DirLock mine(d.path());  // free again once the holder is gone
}

TEST_CASE("a killed holder releases the directory lock") {
  TempDir d;
  LockHolder first(d.path(), "supervisor", "7");
  CHECK_FALSE(refusal(d.path()).empty());
  first.kill_hard();
  CHECK(refusal(d.path()).empty());
  CHECK_FALSE(lock_holder(d.path()));
}

TEST_CASE("a refusal says when the holder is lifeline gc rather than a supervisor") {
  TempDir d;
  LockHolder gc(d.path(), "gc", "none");
  CHECK(refusal(d.path()).find("lifeline gc") != std::string::npos);
}

TEST_CASE("asking who holds the lock of a directory never locked creates nothing") {
  TempDir d;
  CHECK_FALSE(lock_holder(d.path()));
  CHECK(std::filesystem::is_empty(d.path()));
}

namespace {

// A process that is not lifeline holding a shared flock on `path`, as `cat` or `less` could
// (flock needs only a read-only descriptor), until release() or its death.
class SharedFlockHolder {
 public:
  explicit SharedFlockHolder(const std::string& path) {
    int ready[2], hold[2];
    REQUIRE(pipe(ready) == 0);
    REQUIRE(pipe(hold) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(ready[0]);
      ::close(hold[1]);
      int fd = ::open(path.c_str(), O_RDONLY);
      char ok = fd >= 0 && flock(fd, LOCK_SH | LOCK_NB) == 0 ? 'y' : 'n';
      (void)!write(ready[1], &ok, 1);
      char x;
      (void)!read(hold[0], &x, 1);
      _exit(0);
    }
    ::close(ready[1]);
    ::close(hold[0]);
    hold_ = hold[1];
    char ok = 0;
    REQUIRE(read(ready[0], &ok, 1) == 1);
    ::close(ready[0]);
    REQUIRE(ok == 'y');
  }
  ~SharedFlockHolder() {
    ::close(hold_);
    waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int hold_ = -1;
};

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("the lock file is created 0600, and an existing one of ours is made 0600") {
  TempDir d;
  { DirLock lock(d.path()); }
  CHECK(mode_of(d / "lock") == 0600);
  REQUIRE(chmod((d / "lock").c_str(), 0644) == 0);
  { DirLock lock(d.path()); }
  CHECK(mode_of(d / "lock") == 0600);
}

TEST_CASE("a refusal caused by another process's shared flock names that process and says the recorded supervisor is not running") {
  TempDir d;
  pid_t dead = 0;
  {
    LockHolder earlier(d.path(), "supervisor", "17");  // records its pid in the lock file, then exits
    dead = earlier.pid();
  }
  SharedFlockHolder reader(d / "lock");
  std::string why = refusal(d.path());
  INFO(why);
  CHECK(why.find("pid " + std::to_string(reader.pid()) + " (store_lock_test, shared)") != std::string::npos);
  CHECK(why.find("pid " + std::to_string(dead) + ", job 17, which is not running") != std::string::npos);
}

TEST_CASE("a lock file that is a FIFO, a symbolic link or a hard link to another file is refused naming it, and the other file is untouched") {
  TempDir d;
  std::string victim = d / "victim";
  std::ofstream(victim) << "precious\n";
  std::string lock = d / "ckpt/lock";
  std::filesystem::create_directory(d / "ckpt");
  std::string expected;
  SUBCASE("FIFO") {
    REQUIRE(mkfifo(lock.c_str(), 0644) == 0);
    expected = lock + " is not a regular file (a FIFO)";
  }
  SUBCASE("symbolic link") {
    std::filesystem::create_symlink(victim, lock);
    expected = lock + " is a symbolic link";
  }
  SUBCASE("hard link") {
    std::filesystem::create_hard_link(victim, lock);
    expected = lock + " has 2 hard links";
  }
  std::string why = refusal(d / "ckpt");
  CHECK(why.find(expected) != std::string::npos);
  std::ifstream in(victim);
  std::string text;
  std::getline(in, text);
  CHECK(text == "precious");
  CHECK(mode_of(victim) == 0644);
}
