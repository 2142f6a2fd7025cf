#pragma once
// Turning errno into exceptions that name the operation and the path, in one place.
#include <stdexcept>
#include <string>

namespace lifeline {

// An operating-system failure: what was attempted, on which path, and errno's text.
struct SystemError : std::runtime_error {
  SystemError(const std::string& what_was_done, const std::string& path, int err);
  int code;
};

// Throws SystemError for the current errno.
[[noreturn]] void throw_errno(const std::string& what_was_done, const std::string& path);

}  // namespace lifeline
