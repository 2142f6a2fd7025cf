#pragma once
// DirLock holds the one-writer lock (flock on <dir>/lock) of a checkpoint directory and
// records who holds it, so a second supervisor (or `lifeline gc`) can name the holder in its
// refusal. The lock lives as long as the open descriptor: a killed holder releases it.
#include <optional>
#include <string>

namespace lifeline {

// The exclusive lock of one checkpoint directory, held until destruction.
class DirLock {
 public:
  // Takes the lock as a supervisor, or throws std::runtime_error naming the holder
  // (host, pid, job id).
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
