// One writer per checkpoint directory: DirLock against a second process, as it happens when
// two jobs are pointed at the same directory.
#include <doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
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
