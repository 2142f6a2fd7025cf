#pragma once
// The name of this host, as every part of lifeline records and compares it.
#include <string>

namespace lifeline {

// gethostname(): what supervisor.json, lock records and checkpoint metadata name as the host.
std::string this_host();

}  // namespace lifeline
