#include "common/host.h"

#include <unistd.h>

namespace lifeline {

std::string this_host() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace lifeline
