#include "common/errors.h"

#include <cerrno>
#include <cstring>

namespace lifeline {

SystemError::SystemError(const std::string& what_was_done, const std::string& path, int err)
    : std::runtime_error(what_was_done + (path.empty() ? "" : " " + path) + ": " +
                         std::strerror(err)),
      code(err) {}

void throw_errno(const std::string& what_was_done, const std::string& path) {
  throw SystemError(what_was_done, path, errno);
}

}  // namespace lifeline
