#pragma once
// TmpfsMount: a small tmpfs mounted on a fresh folder for one test, to make a real full disk
// (or one out of inodes); unmounted and removed afterwards. Mounting needs root: a test checks
// mounted() and says why it did nothing otherwise.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "support/temp_dir.h"

namespace lifeline::test {

class TmpfsMount {
 public:
  // `options` as for mount -o: "size=8m", "size=8m,nr_inodes=16"; `flags` as for mount(2):
  // MS_RDONLY for a read-only one.
  explicit TmpfsMount(const std::string& options, unsigned long flags = 0) {
    if (::mount("tmpfs", dir_.path().c_str(), "tmpfs", flags, options.c_str()) == 0)
      mounted_ = true;
    else
      why_ = std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  // Why mounting failed ("Operation not permitted" when not root).
  const std::string& why() const { return why_; }
  const std::string& path() const { return dir_.path(); }
  std::string operator/(const std::string& rel) const { return dir_ / rel; }

  uint64_t free_bytes() const {
    struct statvfs st {};
    if (::statvfs(dir_.path().c_str(), &st) != 0) return 0;
    return uint64_t(st.f_bavail) * st.f_frsize;
  }

  // Writes the file `name` until at most `leave` bytes stay free; returns false on a write error.
  bool fill(const std::string& name, uint64_t leave) const {
    int fd = ::open((dir_ / name).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    std::vector<char> zeros(1 << 16, 0);
    bool ok = true;
    for (uint64_t free = free_bytes(); ok && free > leave; free = free_bytes()) {
      size_t n = size_t(std::min<uint64_t>(zeros.size(), free - leave));
      ok = ::write(fd, zeros.data(), n) == ssize_t(n);
    }
    ::close(fd);
    return ok;
  }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string why_;
};

}  // namespace lifeline::test
