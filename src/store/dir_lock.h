#pragma once
// DirLock holds the one-writer lock (flock on <dir>/lock) of a checkpoint directory and
// records who holds it, so a second supervisor (or `lifeline gc`) can name the holder in its
// refusal. The lock lives as long as the open descriptor: a killed holder releases it.
#include <optional>
#include <stdexcept>
#include <string>

namespace lifeline {

// DirLock's refusal when another process holds the lock (as opposed to a lock file it cannot
// open or lock at all, which throws another std::runtime_error).
struct DirInUse : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The exclusive lock of one checkpoint directory, held until destruction.
class DirLock {
 public:
  // Takes the lock as a supervisor, or throws DirInUse naming the holder: this host's
  // /proc/locks names the processes that hold it (any process that could open the lock file
  // can), and the record the last lifeline holder wrote into it (host, pid, job id) says which
  // lifeline process that was, and whether it still runs. Throws std::runtime_error naming the
  // file when the lock file is a link, a FIFO, has other hard links or cannot be opened. The
  // lock file is created 0600 (and made 0600 when we own it): a user who could read it could
  // block every run with a shared lock.
  explicit DirLock(const std::string& dir);
  // As above; `role` ("supervisor", "gc") is recorded so a refusal says what holds the lock.
  DirLock(const std::string& dir, const std::string& role);
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  ~DirLock();

 private:
  int fd_ = -1;
};

// Who holds the lock of `dir` ("lifeline supervisor, host h, pid p, job j"), or nullopt when
// nobody does. Creates and writes nothing: it probes with a shared flock for an instant (which
// works across hosts on a shared file system); DirLock retries briefly, so the probe never
// makes a supervisor refuse to start.
std::optional<std::string> lock_holder(const std::string& dir);

}  // namespace lifeline
