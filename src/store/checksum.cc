#include "store/checksum.h"

#include <fcntl.h>
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

bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes) {
  bytes = 0;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {  // a FIFO or device would block or never end
    ::close(fd);
    errno = EINVAL;
    return false;
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  // 1 MiB: each chunk is hashed while it is still in the CPU cache the read just filled it
  // through (4 MiB measured up to 30% slower; see bench/README.md).
  std::vector<char> buf(1u << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      errno = err;
      return false;
    }
    if (n == 0) break;
    hasher.update(buf.data(), size_t(n));
    bytes += static_cast<unsigned long long>(n);
  }
  ::close(fd);
  return true;
}

}  // namespace lifeline
