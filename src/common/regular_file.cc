#include "common/regular_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace lifeline {

int open_regular_file(const std::string& path, int flags, mode_t mode, std::string& error) {
  error.clear();
  int fd = ::open(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP)
      error = path + " is a symbolic link: lifeline never follows one; remove it";
    else if (err == ENXIO)  // O_WRONLY on a FIFO without a reader
      error = path + " is not a regular file (a FIFO?): remove it";
    else if (err != ENOENT || (flags & O_CREAT))
      error = "cannot open " + path + ": " + std::strerror(err);
    errno = err;
    return -1;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    error = "cannot stat " + path + ": " + std::strerror(err);
    errno = err;
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const char* kind = S_ISFIFO(st.st_mode)   ? "a FIFO"
                       : S_ISDIR(st.st_mode)  ? "a directory"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "a device";
    error = path + " is not a regular file (" + kind + "): remove it";
    errno = EINVAL;
    return -1;
  }
  if ((flags & O_ACCMODE) != O_RDONLY && st.st_nlink > 1) {
    ::close(fd);
    error = path + " has " + std::to_string(st.st_nlink) +
            " hard links: lifeline does not write through a link to another file; remove it";
    errno = EMLINK;
    return -1;
  }
  return fd;
}

bool read_regular_file(const std::string& path, uint64_t max_bytes, std::string& out, std::string& error) {
  out.clear();
  int fd = open_regular_file(path, O_RDONLY, 0, error);
  if (fd < 0) return false;
  struct stat st {};
  if (fstat(fd, &st) == 0 && uint64_t(st.st_size) > max_bytes) {
    ::close(fd);
    error = path + " is " + std::to_string(st.st_size) + " bytes, more than the " + std::to_string(max_bytes) +
            " lifeline reads: not read";
    return false;
  }
  int err = read_to_end(fd, max_bytes, out);
  ::close(fd);
  if (err == EFBIG) {  // grew while read
    error = path + " is more than the " + std::to_string(max_bytes) + " bytes lifeline reads: not read";
    return false;
  }
  if (err != 0) {
    error = "cannot read " + path + ": " + std::strerror(err);
    return false;
  }
  return true;
}

int read_to_end(int fd, uint64_t max_bytes, std::string& out) {
  out.clear();
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      out.clear();
      return err;
    }
    if (n == 0) return 0;
    if (out.size() + size_t(n) > max_bytes) {
      out.clear();
      return EFBIG;
    }
    out.append(buf, size_t(n));
  }
}

}  // namespace lifeline
