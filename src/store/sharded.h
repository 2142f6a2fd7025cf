#pragma once
// Sharded checkpoints (docs/distributed.md "Writing and committing"): every rank writes its part
// into `rank-<5 digits>/` of one shared staging folder (CheckpointWriter in part mode); the
// leader then lists the parts in a version-2 MANIFEST and renames the folder to `step-N`
// (commit_sharded), by the same rules as a single writer's commit.
#include <cstdint>
#include <map>
#include <string>

#include "store/checkpoint_writer.h"
#include "store/file_system.h"

namespace lifeline {

// "rank-00003": the part folder of a global rank (5 digits, more when the rank needs them).
std::string part_folder_name(uint32_t rank);

// ".staging-step-<12 digits>-<token >> 32>-<8 lowercase hex of token & 0xffffffff>": the staging
// folder every rank (and the supervisor) derives from the step and the control block's staging
// token, whose high half is the pid of the supervisor that commits it (the job's leader). gc reads
// that pid from it (staging_writer_pid in store/retention.h).
std::string shared_staging_name(uint64_t step, uint64_t token);

// PartOf (which shared staging folder a part goes into) is in store/checkpoint_writer.h, with
// the writer's part mode that takes it.

// The leader's phase 2: reads `dir/staging_name/rank-XXXXX/MANIFEST` of every rank
// 0..world_size-1 (never through a link, at most kMaxManifestBytes), checks each names `step`,
// its rank and `world_size`, hashes it in meta.checksum_algorithm, writes the top MANIFEST
// (version 2, identity from `meta`, `metrics`), fsyncs it and the staging folder, and renames
// the folder to `dir/step-N` as CheckpointWriter::commit does (an existing valid step-N is kept
// and the new one removed: already_present; an invalid one is replaced through a trash name),
// then fsyncs `dir`. `started_ns` is a mono_ns() value (common/clock.h): duration_ns counts
// from it. bytes = all parts' files. Throws std::runtime_error naming the rank or file when a
// part is missing, unreadable or inconsistent, or no rank wrote any file; the staging folder
// then stays where it is (remove_staging abandons it).
CommitResult commit_sharded(FileSystem& fs, const std::string& dir, const std::string& staging_name, uint64_t step,
                            uint32_t world_size, const CheckpointMeta& meta, uint64_t started_ns,
                            const std::map<std::string, double>& metrics = {});

// Abandons a shared staging folder: removes `dir/staging_name` and everything in it. Errors
// are swallowed (gc removes what is left); a name that is not a staging name is left alone.
void remove_staging(FileSystem& fs, const std::string& dir, const std::string& staging_name) noexcept;

}  // namespace lifeline
