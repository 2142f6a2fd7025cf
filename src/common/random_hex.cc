#include "common/random_hex.h"

#include <cstdio>
#include <random>

namespace lifeline {

std::string random_hex(int words) {
  std::random_device rd;
  std::string out;
  for (int i = 0; i < words; ++i) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", rd());
    out += buf;
  }
  return out;
}

}  // namespace lifeline
