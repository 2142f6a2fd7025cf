#pragma once
// DirLock holds the one-writer lock (flock on <dir>/lock) of a checkpoint directory and
// records who holds it, so a second supervisor can name the holder in its refusal.
#include <string>

namespace lifeline {

class DirLock {
 public:
  // Takes the lock or throws std::runtime_error naming the holder (host, pid, job id).
  explicit DirLock(const std::string& dir);
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  ~DirLock();

 private:
  int fd_ = -1;
};

}  // namespace lifeline
