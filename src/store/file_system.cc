#include "store/file_system.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <system_error>

#include "common/errors.h"
#include "common/regular_file.h"

namespace lifeline {
namespace {

// Writeback of a file's dirty data starts every this many bytes (see PosixWritableFile).
constexpr uint64_t kWritebackChunk = 8u << 20;

// An O_WRONLY descriptor written with write(2) and synced with fsync(2), write-behind: every
// kWritebackChunk bytes it starts writeback of what was just written (sync_file_range, no
// waiting), so the disk works while the file is written and the final fsync has little left;
// and two chunks behind, it waits for that writeback and drops those pages from the page cache
// (POSIX_FADV_DONTNEED). A big checkpoint file thus holds about three chunks of page cache
// however big it is, at most two chunks are queued at the disk, and the pages it frees are
// reused for its next chunk at once. On the development VM, fresh page-cache pages cost
// several times the CPU of the copy (1 GiB buffered: up to 2.6 s of system time without
// dropping, 0.2 s with), and O_DIRECT writes, which avoid the cache, wait for the disk 8 MiB at
// a time (1 GiB: 0.9-1.8 s against 0.66-0.71 s write-behind; bench/README.md).
class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void append(const void* data, size_t size) override {
    auto* p = static_cast<const char*>(data);
    while (size > 0) {
      // Up to the next writeback point at most, so that one big append is written behind too.
      ssize_t n = ::write(fd_, p, std::min<uint64_t>(size, kicked_ + kWritebackChunk - written_));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("write", path_);
      }
      p += n;
      size -= size_t(n);
      written_ += uint64_t(n);
      if (written_ - kicked_ >= kWritebackChunk) write_behind();
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
  void write_behind() {
#ifdef SYNC_FILE_RANGE_WRITE
    // Advisory: an error starting writeback shows up again, and is reported, at fsync.
    (void)::sync_file_range(fd_, off64_t(kicked_), off64_t(written_ - kicked_), SYNC_FILE_RANGE_WRITE);
    if (recycle_ && previous_kick_ > dropped_) {
      // Waiting reports a write error and clears it for this descriptor (fsync would not see
      // it again), so it is thrown here. A file system without the call keeps its pages.
      const off64_t from = off64_t(dropped_), len = off64_t(previous_kick_ - dropped_);
      int rc;
      do {
        rc = ::sync_file_range(fd_, from, len,
                               SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      } while (rc != 0 && errno == EINTR);
      if (rc != 0 && (errno == EINVAL || errno == ENOSYS || errno == ESPIPE || errno == EOPNOTSUPP)) {
        recycle_ = false;
      } else if (rc != 0) {
        throw_errno("write back", path_);
      } else {
        (void)::posix_fadvise(fd_, off_t(from), off_t(len), POSIX_FADV_DONTNEED);  // clean now: dropped
        dropped_ = previous_kick_;
      }
    }
    previous_kick_ = kicked_;
#endif
    kicked_ = written_;
  }

  int fd_;
  std::string path_;
  uint64_t written_ = 0;        // bytes written to the file
  uint64_t kicked_ = 0;         // bytes whose writeback was started
  uint64_t previous_kick_ = 0;  // kicked_ one chunk ago
  uint64_t dropped_ = 0;        // bytes written back and dropped from the page cache
  bool recycle_ = write_behind_enabled();
};

}  // namespace

bool direct_io_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LIFELINE_DIRECT_IO");
    return !(v && std::string(v) == "0");
  }();
  return enabled;
}

bool write_behind_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LIFELINE_WRITE_BEHIND");
    return !(v && std::string(v) == "0");
  }();
  return enabled;
}

std::unique_ptr<WritableFile> PosixFileSystem::create_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("create", path);
  return std::make_unique<PosixWritableFile>(fd, path);
}

void PosixFileSystem::sync_file(const std::string& path) {
  // Never through a link, never blocking on a FIFO put there since it was checked.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) throw_errno("open for fsync", path);
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw SystemError("fsync (not a regular file)", path, EINVAL);
  }
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

FileRead PosixFileSystem::read_file(const std::string& path, uint64_t max_bytes) {
  FileRead r;
  std::string ignored;  // the caller words its own message from r.error
  int fd = open_regular_file(path, O_RDONLY, 0, ignored);
  if (fd < 0) {
    r.error = errno;
    return r;
  }
  struct stat st {};
  if (fstat(fd, &st) == 0 && uint64_t(st.st_size) > max_bytes) {
    r.error = EFBIG;
    r.size = uint64_t(st.st_size);
  } else {
    r.error = read_to_end(fd, max_bytes, r.content);
    if (r.error == EFBIG) r.size = max_bytes + 1;  // grew while read
  }
  ::close(fd);
  return r;
}

bool PosixFileSystem::hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes,
                                ReadCache cache) {
  return lifeline::hash_file(path, hasher, bytes, cache);
}

void FileSystem::make_dirs(const std::string& path) {
  auto parent_of = [](const std::string& p) {
    size_t slash = p.find_last_of('/');
    return slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : p.substr(0, slash);
  };
  std::string target = path;
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  std::vector<std::string> missing;  // deepest first
  for (std::string cur = target; !cur.empty() && cur != "." && cur != "/"; cur = parent_of(cur)) {
    struct stat st {};
    if (::stat(cur.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) throw SystemError("mkdir", cur, ENOTDIR);
      break;
    }
    if (errno != ENOENT) throw_errno("stat", cur);
    missing.push_back(cur);
    if (cur.find('/') == std::string::npos) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    try {
      make_dir(*it);
    } catch (const SystemError& e) {
      if (e.code == EEXIST) continue;  // made meanwhile, by someone else: theirs to sync
      throw;
    }
    sync_dir(parent_of(*it));
  }
}

FileSystem& default_file_system() {
  static PosixFileSystem fs;
  return fs;
}

}  // namespace lifeline
