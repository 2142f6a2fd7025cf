#include "store/checksum.h"

#include "store/file_system.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <unistd.h>
#include <xxhash.h>
#if (defined(__x86_64__) || defined(__i386__)) && __has_include(<xxh_x86dispatch.h>)
// libxxhash's runtime dispatch picks AVX2/AVX-512 when the CPU has them (about 3x the
// baseline SSE2 speed); the digest is the same whichever vector unit computes it.
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#define LIFELINE_XXH3_UPDATE XXH3_64bits_update_dispatch
#else
#define LIFELINE_XXH3_UPDATE XXH3_64bits_update
#endif

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace lifeline {
namespace {

// XXH3 64-bit, streaming.
class Xxh3Hasher : public Hasher {
 public:
  Xxh3Hasher() : state_(XXH3_createState(), &XXH3_freeState) { XXH3_64bits_reset(state_.get()); }
  void update(const void* data, size_t size) override { LIFELINE_XXH3_UPDATE(state_.get(), data, size); }
  std::string hex_digest() override {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx",
                  static_cast<unsigned long long>(XXH3_64bits_digest(state_.get())));
    return buf;
  }

 private:
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state_;
};

// SHA-256 through OpenSSL's EVP interface.
class Sha256Hasher : public Hasher {
 public:
  Sha256Hasher() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr);
  }
  void update(const void* data, size_t size) override { EVP_DigestUpdate(ctx_.get(), data, size); }
  std::string hex_digest() override {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_.get(), md, &len);
    std::string out;
    char buf[3];
    for (unsigned i = 0; i < len; ++i) {
      std::snprintf(buf, sizeof buf, "%02x", md[i]);
      out += buf;
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

}  // namespace

std::unique_ptr<Hasher> make_hasher(const std::string& algorithm) {
  if (algorithm == "xxh3-64") return std::make_unique<Xxh3Hasher>();
  if (algorithm == "sha256") return std::make_unique<Sha256Hasher>();
  return nullptr;
}

bool known_checksum(const std::string& algorithm) {
  return algorithm == "xxh3-64" || algorithm == "sha256";
}

namespace {

// Files smaller than this are always read through the page cache.
constexpr size_t kAroundCacheMin = 8u << 20;
// O_DIRECT reads: buffer address, length and file offset aligned to this; one read per 8 MiB
// (each O_DIRECT read waits for the disk: no read-ahead).
constexpr size_t kDirectAlign = 4096;
constexpr size_t kDirectChunk = 8u << 20;
// Buffered reads: each 1 MiB chunk is hashed while it is still in the CPU cache the read just
// filled it through (4 MiB measured up to 30% slower; see bench/README.md).
constexpr size_t kBufferedChunk = 1u << 20;

// True when fewer than half of the file's pages are in the page cache (mincore of a mapping,
// which faults nothing in).
bool mostly_uncached(int fd, size_t size) {
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return false;
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  bool cold = false;
  if (::mincore(map, size, resident.data()) == 0) {
    size_t in_cache = 0;
    for (unsigned char r : resident) in_cache += r & 1;
    cold = in_cache * 2 < resident.size();
  }
  ::munmap(map, size);
  return cold;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes, ReadCache cache) {
  bytes = 0;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {  // a FIFO or device would block or never end
    ::close(fd);
    errno = EINVAL;
    return false;
  }
  // Around the cache when asked, the file is big and mostly not cached, and the file system
  // takes O_DIRECT (tmpfs does not); otherwise through the cache.
  std::unique_ptr<char, FreeDeleter> buffer;
  size_t chunk = kBufferedChunk;
  if (cache == ReadCache::around_cache_when_cold && direct_io_enabled() && size_t(st.st_size) >= kAroundCacheMin &&
      mostly_uncached(fd, size_t(st.st_size))) {
    void* mem = nullptr;
    int flags = ::fcntl(fd, F_GETFL);
    if (posix_memalign(&mem, kDirectAlign, kDirectChunk) == 0) {
      buffer.reset(static_cast<char*>(mem));
      if (flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_DIRECT) == 0) chunk = kDirectChunk;
    }
  }
  if (chunk == kBufferedChunk) {
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    buffer.reset(static_cast<char*>(std::malloc(chunk)));
    if (!buffer) {
      ::close(fd);
      errno = ENOMEM;
      return false;
    }
  }
  for (;;) {
    ssize_t n = ::read(fd, buffer.get(), chunk);
    if (n < 0 && errno == EINVAL && chunk == kDirectChunk) {
      // Took O_DIRECT at fcntl but not this read (or a short read left the offset unaligned):
      // the rest through the cache, from where the last read ended.
      int flags = ::fcntl(fd, F_GETFL);
      if (flags >= 0 && ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) == 0) {
        chunk = kBufferedChunk;
        continue;
      }
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      errno = err;
      return false;
    }
    if (n == 0) break;
    hasher.update(buffer.get(), size_t(n));
    bytes += static_cast<unsigned long long>(n);
  }
  ::close(fd);
  return true;
}

}  // namespace lifeline
