#pragma once
// Streaming checksums named in manifests: "xxh3-64" (default, fast) and "sha256" (what any
// language's standard library can compute, e.g. Python's hashlib).
#include <cstddef>
#include <memory>
#include <string>

namespace lifeline {

// Accumulates bytes and yields a lowercase hex digest.
class Hasher {
 public:
  virtual ~Hasher() = default;
  virtual void update(const void* data, size_t size) = 0;
  virtual std::string hex_digest() = 0;
};

// nullptr when the algorithm is unknown.
std::unique_ptr<Hasher> make_hasher(const std::string& algorithm);
bool known_checksum(const std::string& algorithm);
constexpr const char* kDefaultChecksum = "xxh3-64";

// Streams a regular file through a hasher in 1 MiB reads; returns false (errno set) on read
// errors and for anything but a regular file (a FIFO would block). Never follows a symlink.
// `bytes` receives the number of bytes read.
bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes);

}  // namespace lifeline
