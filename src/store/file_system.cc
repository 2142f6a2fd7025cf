#include "store/file_system.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <system_error>

#include "common/errors.h"

namespace lifeline {
namespace {

// Dirty data beyond this much is handed to the disk right away (see PosixWritableFile).
constexpr uint64_t kWritebackChunk = 8u << 20;

// An O_WRONLY descriptor written with write(2) and synced with fsync(2). Every
// kWritebackChunk bytes it starts writeback of what was just written (sync_file_range,
// no waiting), so a big file streams to the disk while it is written and the final fsync
// only has the tail left, instead of the whole file sitting dirty in the page cache.
class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void append(const void* data, size_t size) override {
    auto* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("write", path_);
      }
      p += n;
      size -= size_t(n);
      written_ += uint64_t(n);
    }
    if (written_ - kicked_ >= kWritebackChunk) {
      // Advisory: an error here shows up again, and is reported, at fsync.
#ifdef SYNC_FILE_RANGE_WRITE
      (void)::sync_file_range(fd_, off64_t(kicked_), off64_t(written_ - kicked_), SYNC_FILE_RANGE_WRITE);
#endif
      kicked_ = written_;
    }
  }
  void sync() override {
    if (::fsync(fd_) != 0) throw_errno("fsync", path_);
  }
  void close() override {
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_errno("close", path_);
  }

 private:
  int fd_;
  std::string path_;
  uint64_t written_ = 0;  // bytes appended
  uint64_t kicked_ = 0;   // bytes whose writeback was started
};

}  // namespace

std::unique_ptr<WritableFile> PosixFileSystem::create_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("create", path);
  return std::make_unique<PosixWritableFile>(fd, path);
}

void PosixFileSystem::sync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw_errno("open for fsync", path);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw SystemError("fsync", path, err);
}

void PosixFileSystem::make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0) throw_errno("mkdir", path);
}

void PosixFileSystem::rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) throw_errno("rename " + from + " to", to);
}

void PosixFileSystem::sync_dir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("open directory", path);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw SystemError("fsync directory", path, err);
}

void PosixFileSystem::remove_tree(const std::string& path) {
  std::error_code ec;
  // Someone else removing the same tree (gc and a writer's own cleanup) makes entries vanish
  // under remove_all: go again, whatever is left is still ours to remove.
  for (int attempt = 0; attempt < 3; ++attempt) {
    ec.clear();
    std::filesystem::remove_all(path, ec);
    if (ec.value() != ENOENT) break;
  }
  if (ec && ec.value() != ENOENT) throw SystemError("remove", path, ec.value());
}

FileSystem& default_file_system() {
  static PosixFileSystem fs;
  return fs;
}

}  // namespace lifeline
