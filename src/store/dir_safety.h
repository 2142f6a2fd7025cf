#pragma once
// Whether a checkpoint directory can be trusted, checked before lifeline writes into it or
// deletes from it, the way ssh's StrictModes checks ~/.ssh: a directory that another user
// controls can hold links, FIFOs or hard links that turn lifeline's writes against its caller.
#include <string>

namespace lifeline {

// Why `dir` is not safe to write into, or "" when it is (or does not exist yet: call it again
// once it was created). Refused: a directory owned by another user than the caller's
// effective uid or root; a directory writable by every user (o+w) without the sticky bit; and
// a parent directory (of its real path) writable by every user without the sticky bit, where
// anyone could move the checkpoint directory away and put one of their own in its place.
// Group-writable directories are allowed (shared project directories). The reason says how to
// fix it (chmod o-w DIR, or a directory of your own).
std::string unsafe_dir_reason(const std::string& dir);

// Why `dir` cannot be read as a checkpoint directory, or "" when it can: "no checkpoint
// directory DIR" when it is missing, "DIR is not a directory", "cannot read checkpoint
// directory DIR: ..." (a missing directory is an input error for every command but run).
std::string checkpoint_dir_problem(const std::string& dir);

}  // namespace lifeline
