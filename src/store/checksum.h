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

// How hash_file reads. `cached`: through the page cache, which keeps the data for whoever
// reads it next (a resume loads the checkpoint it just verified). `around_cache_when_cold`: a
// file of 8 MiB or more that is mostly not in the page cache is read with O_DIRECT, for a check
// nobody reads after (retention's verify of a fresh commit, dropped from the cache as it was
// written). Filling the cache costs far more CPU than the disk read (1 GiB on the development
// VM: 2.4 s of system time buffered, 0.05 s with O_DIRECT), and that CPU comes out of training.
// LIFELINE_DIRECT_IO=0 makes both read through the cache.
enum class ReadCache { cached, around_cache_when_cold };

// Streams a regular file through a hasher; returns false (errno set) on read errors and for
// anything but a regular file (a FIFO would block). Never follows a symlink. `bytes` receives
// the number of bytes read.
bool hash_file(const std::string& path, Hasher& hasher, unsigned long long& bytes,
               ReadCache cache = ReadCache::cached);

}  // namespace lifeline
