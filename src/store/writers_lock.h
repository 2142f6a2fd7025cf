#pragma once
// The writers' lock of a checkpoint directory, `<dir>/.writers.lock`: every process that may
// commit into the directory (a trainer's client, C++ or Python) holds a shared flock on it for
// as long as it lives; a supervisor about to start an attempt takes it exclusively for an
// instant, which proves that no process of an earlier attempt (whose supervisor may have died)
// can still commit. flock(2) locks belong to the open file description, so a hold lasts until
// the last process sharing it (forked children included) has closed it or exited.
#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace lifeline {

constexpr const char* kWritersLockName = ".writers.lock";

// One process holding a flock on a file, as this host's /proc/locks shows it.
struct LockHolder {
  pid_t pid = 0;
  std::string command;  // /proc/<pid>/comm, "" when the process is gone
  bool exclusive = false;
};

// Who holds a flock on `path` on this host (a shared file system's other hosts are not seen):
// the processes /proc/locks names and, when one of those is gone (it forked, then exited), the
// processes that have the file open now (a scan of /proc/*/fd).
std::vector<LockHolder> flock_holders(const std::string& path);

// "pid 123 (python3, shared), pid 456 (gone, exclusive)"; "" for none.
std::string describe_holders(const std::vector<LockHolder>& holders);

// A trainer-side hold of the writers' lock (shared), released on destruction.
class WriterRegistration {
 public:
  // Opens `<dir>/.writers.lock` (created 0600, never through a link, refused unless a regular
  // file) and takes a shared lock, retrying for `patience` while a supervisor probes it.
  // Throws std::runtime_error naming the file on failure.
  explicit WriterRegistration(const std::string& dir,
                              std::chrono::milliseconds patience = std::chrono::seconds(10));
  WriterRegistration(WriterRegistration&& other) noexcept;
  WriterRegistration& operator=(WriterRegistration&& other) noexcept;
  WriterRegistration(const WriterRegistration&) = delete;
  WriterRegistration& operator=(const WriterRegistration&) = delete;
  ~WriterRegistration();

 private:
  int fd_ = -1;
};

// True when no process holds the writers' lock of `dir`: takes it exclusively and lets go at
// once. When false and `holders` is given, it lists who holds it on this host. Throws
// std::runtime_error when the lock file cannot be opened (a link, a FIFO, no permission).
bool no_writers(const std::string& dir, std::vector<LockHolder>* holders = nullptr);

}  // namespace lifeline
