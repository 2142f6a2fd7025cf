#pragma once
// FaultInjectionFileSystem wraps a real FileSystem for crash and fault tests, the way
// leveldb's fault_injection_test wraps its Env. It numbers every operation of the commit
// protocol (create, write, fsync, close, sync_file, make_dir, rename, sync_dir, remove_tree),
// can fail a chosen one with a chosen errno, and can "lose power": stop at operation N, then
// undo everything that was not made durable.
//
// Durability model (the weakest a POSIX file system promises):
// - file data is durable up to the size at its last fsync (WritableFile::sync or sync_file);
//   at power loss the rest is truncated away;
// - a directory entry change (file or folder created, renamed, removed) is durable only once
//   its parent directory was fsynced afterwards (both parents for a rename); at power loss
//   the pending changes are undone newest first. lose_power(k) keeps the oldest k pending
//   changes, as a journaling file system that commits metadata in order may have done.
// Removals are simulated by moving the tree into a graveyard folder (under `root`) until the
// removal is durable, so a power loss can bring it back. Files that existed before the
// wrapper saw them are taken as durable. Every path the store touches must be under `root`.
// Not thread-safe: one test drives it.
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "store/file_system.h"

namespace lifeline {

// The kinds of operations the wrapper counts.
enum class FsOp { create, write, fsync, close, sync_file, make_dir, rename, sync_dir, remove_tree };
const char* to_string(FsOp op);

// Thrown by the crash operation and every later one. Deliberately not a std::exception, so
// no handler takes it for an ordinary error and carries on: the "process" is gone.
struct PowerLoss {
  uint64_t op;  // number of the operation that did not happen
};

// ForwardingFileSystem passes every call on to `base` (leveldb's EnvWrapper): a wrapper
// overrides only what it changes. Reads, which change nothing a crash could lose, stay forwarded.
class ForwardingFileSystem : public FileSystem {
 public:
  explicit ForwardingFileSystem(FileSystem& base) : base_(base) {}
  std::unique_ptr<WritableFile> create_file(const std::string& path) override { return base_.create_file(path); }
  void sync_file(const std::string& path) override { base_.sync_file(path); }
  void make_dir(const std::string& path) override { base_.make_dir(path); }
  void rename(const std::string& from, const std::string& to) override { base_.rename(from, to); }
  void sync_dir(const std::string& path) override { base_.sync_dir(path); }
  void remove_tree(const std::string& path) override { base_.remove_tree(path); }
  FileRead read_file(const std::string& path, uint64_t max_bytes) override { return base_.read_file(path, max_bytes); }
  bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes, ReadCache cache) override {
    return base_.hash_file(path, hasher, bytes, cache);
  }

 protected:
  FileSystem& base_;
};

class FaultInjectionFileSystem : public ForwardingFileSystem {
 public:
  FaultInjectionFileSystem(FileSystem& base, std::string root);
  ~FaultInjectionFileSystem() override;

  std::unique_ptr<WritableFile> create_file(const std::string& path) override;
  void sync_file(const std::string& path) override;
  void make_dir(const std::string& path) override;
  void rename(const std::string& from, const std::string& to) override;
  void sync_dir(const std::string& path) override;
  void remove_tree(const std::string& path) override;

  // Operations attempted so far (numbered from 1), and one line per operation for messages.
  uint64_t op_count() const { return ops_; }
  const std::vector<std::string>& op_log() const { return log_; }

  // Operation `n` fails with `err` (SystemError) without any effect; later ones work.
  void fail_at(uint64_t n, int err);
  // Operation `n` and every later one fail with `err` (a full disk, a read-only remount).
  void fail_from(uint64_t n, int err);
  // Operation `n` and every later one throw PowerLoss without any effect.
  void crash_at(uint64_t n);
  bool crashed() const { return crashed_; }

  // Directory changes not yet durable.
  size_t pending_count() const { return pending_.size(); }
  // Power comes back: truncates unsynced data, undoes all pending directory changes but the
  // oldest `keep_pending`, then clears faults, counters and the log. The wrapper can then be
  // used again as after a reboot.
  void lose_power(size_t keep_pending = 0);
  // Everything written so far counts as durable; faults, counters and the log are cleared.
  void reset();

 private:
  class File;
  friend class File;
  // One directory change not yet durable.
  // Folders are named by inode, so a change stays attached to its folder across renames of
  // the folder; the path seen at the time is only the first place to look.
  struct Pending {
    enum Kind { created, renamed, removed } kind;
    ino_t parent = 0;     // folder holding `name` (for renamed: the source folder)
    std::string parent_hint;
    std::string name;
    ino_t to_parent = 0;  // renamed: destination folder and name
    std::string to_parent_hint;
    std::string to_name;
    std::string grave;    // removed: where the tree waits in the graveyard
    std::vector<ino_t> unsynced;  // folders still to be fsynced before it is durable
  };
  // The size and last synced size of a file written through the wrapper, by inode.
  struct FileData {
    uint64_t size = 0;    // appended through the wrapper
    uint64_t synced = 0;  // durable prefix
    std::string hint;     // its path when created
  };

  // Counts an operation; throws PowerLoss or SystemError when a fault is due.
  void begin(FsOp op, const std::string& path);
  ino_t inode_of(const std::string& path) const;
  // Current path of a folder or file by inode under root_ (`hint` first), or "" when gone.
  std::string path_of(ino_t ino, const std::string& hint) const;
  void forget_tree(const std::string& path);
  void undo(const Pending& p);

  std::string root_;
  std::string graveyard_;
  uint64_t graves_ = 0;
  uint64_t ops_ = 0;
  std::vector<std::string> log_;
  std::optional<uint64_t> fail_at_, fail_from_, crash_at_;
  int fail_at_err_ = 0, fail_from_err_ = 0;
  bool crashed_ = false;
  std::vector<Pending> pending_;
  std::map<ino_t, FileData> files_;
};

// A FileSystem that forwards everything but the fsyncs, which it skips: for crash tests
// (the FaultInjectionFileSystem on top simulates durability; real fsyncs only cost time) and
// for benchmark setup. Never for checkpoints anyone will resume.
class NoSyncFileSystem : public ForwardingFileSystem {
 public:
  explicit NoSyncFileSystem(FileSystem& base) : ForwardingFileSystem(base) {}
  std::unique_ptr<WritableFile> create_file(const std::string& path) override;
  void sync_file(const std::string&) override {}
  void sync_dir(const std::string&) override {}
};

}  // namespace lifeline
