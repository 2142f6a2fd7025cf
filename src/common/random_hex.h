#pragma once
// Random suffixes that keep temporary and shared-memory names apart between processes.
#include <string>

namespace lifeline {

// `words` 32-bit values from std::random_device as lowercase hex, 8 digits each ("9f3a0b1c").
std::string random_hex(int words = 1);

}  // namespace lifeline
