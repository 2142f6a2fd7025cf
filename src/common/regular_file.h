#pragma once
// Opening the files lifeline keeps in a checkpoint directory (history.jsonl, supervisor.json,
// lock files), which other users may be able to write into: never through a symbolic link,
// never blocking on a FIFO or a device, only regular files, and never writing through a hard
// link to a file elsewhere. Errors name the file and say what to do.
#include <sys/types.h>

#include <cstdint>
#include <string>

namespace lifeline {

// open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode), then fstat: refuses anything
// but a regular file, and, when `flags` write, a file with more than one hard link. Returns the
// descriptor, or -1 with `error` set; `error` stays empty when the file does not exist (and
// `flags` lack O_CREAT), which callers usually take as "nothing there yet".
int open_regular_file(const std::string& path, int flags, mode_t mode, std::string& error);

// Reads `fd` from its offset to its end into `out`, refusing more than `max_bytes`: 0, or the
// errno of the failure (EFBIG: more than max_bytes). `out` is empty after a failure.
int read_to_end(int fd, uint64_t max_bytes, std::string& out);

// The whole content of the regular file `path` (opened as above) into `out`, refused when
// larger than `max_bytes`. False with `error` empty when the file does not exist; false with
// `error` set for anything else that went wrong.
bool read_regular_file(const std::string& path, uint64_t max_bytes, std::string& out, std::string& error);

}  // namespace lifeline
