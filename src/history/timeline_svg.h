#pragma once
// timeline_svg draws a ledger as a standalone SVG: one labelled bar per attempt on a UTC time
// axis, with checkpoint saves and commits, stop signals, lost work and the waits between
// attempts marked on the bars themselves.
#include <cstdint>
#include <string>

#include "history/ledger.h"

namespace lifeline {

// `title` heads the picture (the checkpoint directory, say); `now_ns` ends running attempts.
std::string timeline_svg(const Ledger& ledger, const std::string& title, uint64_t now_ns);

}  // namespace lifeline
