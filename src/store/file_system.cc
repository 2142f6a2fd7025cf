#include "store/file_system.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <system_error>

#include "common/errors.h"

namespace lifeline {
namespace {

// Dirty data beyond this much is handed to the disk right away (see PosixWritableFile).
constexpr uint64_t kWritebackChunk = 8u << 20;
// Bytes a file writes through the page cache before the rest bypasses it (O_DIRECT).
constexpr uint64_t kDirectAfter = 8u << 20;
// O_DIRECT granularity: buffer address, length and file offset (covers 512 B and 4 KiB devices).
constexpr size_t kDirectAlign = 4096;
// The aligned buffer O_DIRECT writes go out from.
constexpr size_t kDirectBuffer = 8u << 20;

// An O_WRONLY descriptor written with write(2) and synced with fsync(2).
// The first kDirectAfter bytes go through the page cache; every kWritebackChunk bytes it starts
// writeback of what was just written (sync_file_range, no waiting), so the disk works while the
// file is written. Beyond kDirectAfter (a big checkpoint file) it switches the descriptor to
// O_DIRECT and writes from an aligned buffer straight to the disk: copying into fresh page-cache
// pages and writing them back costs several times the CPU of the copy into the buffer (measured:
// `dd` of 1 GiB took 2-5 s of system time buffered, 0.2-0.3 s with oflag=direct, on the
// development VM), and that CPU comes out of training when the save runs in the background.
// The unaligned tail goes through the page cache again; fsync makes all of it durable. Where
// O_DIRECT is refused (tmpfs, some network file systems) the file stays buffered.
class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void append(const void* data, size_t size) override {
    auto* p = static_cast<const char*>(data);
    if (!direct_ && may_go_direct_ && written_ + size > kDirectAfter) {
      size_t head = written_ < kDirectAfter ? size_t(kDirectAfter - written_) : 0;
      write_buffered(p, head);
      p += head;
      size -= head;
      start_direct();
    }
    if (!direct_) {
      write_buffered(p, size);
      return;
    }
    while (size > 0) {
      size_t n = std::min(size, kDirectBuffer - fill_);
      std::memcpy(buffer_.get() + fill_, p, n);
      fill_ += n;
      p += n;
      size -= n;
      if (fill_ == kDirectBuffer) flush_direct();
    }
  }
  void sync() override {
    finish_direct();
    if (::fsync(fd_) != 0) throw_errno("fsync", path_);
  }
  void close() override {
    finish_direct();
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_errno("close", path_);
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };

  void write_all(const char* p, size_t size) {
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
  }

  void write_buffered(const char* p, size_t size) {
    write_all(p, size);
    if (written_ - kicked_ >= kWritebackChunk) {
      // Advisory: an error here shows up again, and is reported, at fsync.
#ifdef SYNC_FILE_RANGE_WRITE
      (void)::sync_file_range(fd_, off64_t(kicked_), off64_t(written_ - kicked_), SYNC_FILE_RANGE_WRITE);
#endif
      kicked_ = written_;
    }
  }

  void start_direct() {
    may_go_direct_ = false;  // one try per file
    if (!direct_io_enabled() || written_ % kDirectAlign != 0) return;
    void* mem = nullptr;
    if (posix_memalign(&mem, kDirectAlign, kDirectBuffer) != 0) return;
    buffer_.reset(static_cast<char*>(mem));
    int flags = ::fcntl(fd_, F_GETFL);
    if (flags < 0 || ::fcntl(fd_, F_SETFL, flags | O_DIRECT) != 0) {
      buffer_.reset();
      return;
    }
    direct_ = true;
  }

  // Writes the buffer's whole blocks with O_DIRECT; keeps the rest at its start.
  void flush_direct() {
    size_t whole = fill_ - fill_ % kDirectAlign;
    if (whole == 0) return;
    const char* p = buffer_.get();
    size_t left = whole;
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EINVAL && left == whole) {
        // This file system takes O_DIRECT at open but not these writes: back to the page cache.
        stop_direct();
        write_buffered(buffer_.get(), fill_);
        fill_ = 0;
        return;
      }
      if (n < 0) throw_errno("write", path_);
      p += n;
      left -= size_t(n);
      written_ += uint64_t(n);
    }
    std::memmove(buffer_.get(), buffer_.get() + whole, fill_ - whole);
    fill_ -= whole;
  }

  void stop_direct() {
    int flags = ::fcntl(fd_, F_GETFL);
    if (flags < 0 || ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) != 0) throw_errno("fcntl", path_);
    direct_ = false;
  }

  // Whole blocks out with O_DIRECT, the tail through the page cache.
  void finish_direct() {
    if (!direct_) return;
    flush_direct();
    if (!direct_) return;
    stop_direct();
    write_all(buffer_.get(), fill_);
    fill_ = 0;
    buffer_.reset();
  }

  int fd_;
  std::string path_;
  uint64_t written_ = 0;  // bytes written to the file
  uint64_t kicked_ = 0;   // bytes whose writeback was started
  bool may_go_direct_ = true;
  bool direct_ = false;
  std::unique_ptr<char, Free> buffer_;  // O_DIRECT staging, kDirectAlign-aligned
  size_t fill_ = 0;                     // bytes in buffer_
};

}  // namespace

bool direct_io_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LIFELINE_DIRECT_IO");
    return !(v && std::string(v) == "0");
  }();
  return enabled;
}

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
