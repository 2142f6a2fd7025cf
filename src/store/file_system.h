#pragma once
// The file operations of the commit protocol, behind an interface so crash tests can wrap them
// (the model is leveldb's Env). PosixFileSystem is the one real implementation.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store/checksum.h"

namespace lifeline {

// A file being written: appends, then sync, then close. Errors throw SystemError.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual void append(const void* data, size_t size) = 0;
  virtual void sync() = 0;
  virtual void close() = 0;
};

// What FileSystem::read_file found: the content, or why not.
struct FileRead {
  std::string content;
  int error = 0;      // 0 read; ENOENT none; ELOOP a symbolic link; EINVAL not a regular file;
                      // EFBIG more than asked for; else the errno of the open or read
  uint64_t size = 0;  // with EFBIG: the file's size
};

// Directory and file effects and reads the store performs. Every effect throws SystemError on
// failure; reads report theirs.
class FileSystem {
 public:
  virtual ~FileSystem() = default;
  // Creates a new file (fails if it exists).
  virtual std::unique_ptr<WritableFile> create_file(const std::string& path) = 0;
  // Makes an existing file's data durable (files the trainer wrote itself).
  virtual void sync_file(const std::string& path) = 0;
  virtual void make_dir(const std::string& path) = 0;
  // Atomically renames; fails if `to` exists and is a non-empty directory.
  virtual void rename(const std::string& from, const std::string& to) = 0;
  // Makes a directory's entries (creations, renames) durable.
  virtual void sync_dir(const std::string& path) = 0;
  // Removes a file or a whole tree; missing is not an error.
  virtual void remove_tree(const std::string& path) = 0;

  // The whole of the regular file `path` if it holds at most `max_bytes`: never through a
  // symbolic link, never blocking on a FIFO or device. Never throws.
  virtual FileRead read_file(const std::string& path, uint64_t max_bytes) = 0;
  // Streams the regular file `path` through `hasher`, as hash_file in store/checksum.h does.
  virtual bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes, ReadCache cache) = 0;

  // Like mkdir -p: creates `path` and its missing parents with make_dir, then sync_dir of the
  // parent of each one it created, so the new entries survive a crash. An existing directory
  // (or a link to one) is no error; anything else there is ENOTDIR.
  void make_dirs(const std::string& path);
};

// The real file system.
class PosixFileSystem : public FileSystem {
 public:
  std::unique_ptr<WritableFile> create_file(const std::string& path) override;
  void sync_file(const std::string& path) override;
  void make_dir(const std::string& path) override;
  void rename(const std::string& from, const std::string& to) override;
  void sync_dir(const std::string& path) override;
  void remove_tree(const std::string& path) override;
  FileRead read_file(const std::string& path, uint64_t max_bytes) override;
  bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes, ReadCache cache) override;
};

// False when LIFELINE_DIRECT_IO=0: retention's verify of a cold big file reads it through the
// page cache instead of around it (O_DIRECT; see ReadCache in store/checksum.h).
bool direct_io_enabled();

// False when LIFELINE_WRITE_BEHIND=0: a file being written keeps its pages in the page cache
// instead of dropping each written-back chunk (see PosixWritableFile).
bool write_behind_enabled();

// The process-wide PosixFileSystem.
FileSystem& default_file_system();

}  // namespace lifeline
