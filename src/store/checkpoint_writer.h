#pragma once
// CheckpointWriter carries one checkpoint through the commit protocol: staging folder, files
// fsynced, manifest last and fsynced, rename to the final name, directory fsynced. In part mode
// it writes one rank's part of a sharded checkpoint (store/sharded.h) and renames nothing.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "store/checksum.h"
#include "store/file_system.h"
#include "store/manifest.h"

namespace lifeline {

// Identity recorded in each manifest.
struct CheckpointMeta {
  std::optional<std::string> job_id;
  uint64_t attempt = 0;
  std::string lineage;
  std::string host;
  std::string checksum_algorithm = "xxh3-64";
};

// A manifest of `step` with the identity of `meta` and `metrics` (files, time: the caller's).
Manifest manifest_of(const CheckpointMeta& meta, uint64_t step, const std::map<std::string, double>& metrics);

// What a commit produced.
struct CommitResult {
  std::string path;      // final folder
  uint64_t bytes = 0;
  uint64_t duration_ns = 0;  // from begin to durable rename
  bool already_present = false;  // a valid checkpoint of this step existed; the new one was dropped
};

// `dir/.trash-step-<12 digits>-<pid>-<random>`: where a folder goes just before it is
// removed, so no reader ever sees a half-removed checkpoint under a committed name.
std::string trash_folder_name(const std::string& dir, uint64_t step);

// Steps 5 and 6 of the commit (docs/protocol.md §3): renames the complete, fsynced staging
// folder `staging` to `dir/step-N` and fsyncs `dir`. When step-N exists and verifies, nothing is
// renamed and already_present is set: the caller removes the staging folder. An invalid step-N
// is first moved to a trash name, removed once the fsync succeeded (a failure there is
// swallowed: gc removes it). Throws (SystemError) only before the rename is durable; when only
// the directory fsync failed, the renamed folder stays. Sets `path` (absolute when renamed) and
// `already_present`, nothing else.
CommitResult publish_staging(FileSystem& fs, const std::string& dir, uint64_t step, const std::string& staging);

// Which shared staging folder a CheckpointWriter writes a part into, and as which rank
// (docs/distributed.md; the folder's name is shared_staging_name in store/sharded.h).
struct PartOf {
  std::string staging_name;  // a name in the checkpoint directory, not a path
  uint32_t rank = 0;
  uint32_t world_size = 1;
};

// What a checkpoint's streamed files share with it: their manifest entries, the streams not
// closed, and whether the checkpoint was committed (after which a stream may not write into the
// renamed folder).
struct StagedFiles {
  std::map<std::string, ManifestFile> closed;  // checksummed while written, fsynced
  std::set<std::string> unclosed;              // opened, not (successfully) closed
  bool sealed = false;
};

// One file streamed into a staging folder (a serializer's output, say): checksummed while it
// is written, so commit() need not read it back. close() fsyncs it and records it for the
// manifest. commit() fails while a stream is unclosed (still open, or dropped without close()
// after an error): its file may lack what the stream still buffered.
class StagedFile {
 public:
  StagedFile(StagedFile&&) noexcept = default;
  StagedFile& operator=(StagedFile&&) noexcept = default;
  ~StagedFile();

  // Appends, hashing each piece right after writing it while it is hot in cache.
  void append(const void* data, size_t size);
  // Fsyncs and records the file; further appends throw.
  void close();

 private:
  friend class CheckpointWriter;
  StagedFile(std::shared_ptr<StagedFiles> files, std::string rel, std::unique_ptr<WritableFile> file,
             std::unique_ptr<Hasher> hasher);
  std::shared_ptr<StagedFiles> files_;
  std::string rel_;
  std::unique_ptr<WritableFile> file_;
  std::unique_ptr<Hasher> hasher_;
  uint64_t size_ = 0;
};

// Carries one checkpoint of one step from an empty staging folder to a durable committed folder,
// or (part mode) one rank's part of it into a durable part folder.
class CheckpointWriter {
 public:
  // Creates the staging folder `dir/.staging-step-<step>-<pid>-<random>`.
  CheckpointWriter(FileSystem& fs, std::string dir, uint64_t step, CheckpointMeta meta);
  // Part mode: creates the shared staging folder `dir/part.staging_name` unless another rank
  // did, and in it this rank's part folder `rank-<5 digits>` (emptied first when an earlier try
  // of this rank left it). Throws std::invalid_argument for a rank outside the world or a
  // staging name that is not one.
  CheckpointWriter(FileSystem& fs, std::string dir, uint64_t step, CheckpointMeta meta, PartOf part);
  CheckpointWriter(CheckpointWriter&&) noexcept;
  CheckpointWriter& operator=(CheckpointWriter&&) = delete;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  // Removes the staging folder (part mode: the part folder only) unless committed.
  ~CheckpointWriter();

  // The staging folder (part mode: the part folder): write any files into it, then commit().
  const std::string& path() const { return staging_; }
  uint64_t step() const { return step_; }
  bool is_part() const { return part_; }

  // Writes `rel` inside the staging folder (creating its parent folders), checksumming while
  // writing, and fsyncs it. Writeback starts while writing (see PosixWritableFile), so the
  // fsync at the end is short.
  void write_file(const std::string& rel, const void* data, size_t size);

  // Creates `rel` inside the staging folder for streaming (see StagedFile). Close it before
  // commit(); a stream left unclosed makes commit() fail.
  StagedFile open_file(const std::string& rel);

  // Checksums and fsyncs files not written with write_file, writes the manifest, renames.
  // Refuses (throws) a checkpoint without any file, a file name that is not valid UTF-8, and a
  // manifest over kMaxManifestBytes (store/manifest.h). On failure the staging folder is removed (when the file system still allows it) and
  // every older checkpoint is untouched. One exception to "failed = absent": when only the
  // final directory fsync fails, the renamed folder stays; it is complete and verifies, but
  // may not survive a power loss. Once that fsync succeeded, the commit reports success even
  // if removing a replaced invalid folder fails (it stays as a `.trash-` folder for gc).
  // Part mode: the same checks but zero files is allowed; writes the part MANIFEST
  // (PartManifest), fsyncs it, the part folder and the shared staging folder, and renames
  // nothing (commit_sharded in store/sharded.h does); path = the part folder, bytes = the
  // part's; `metrics` are ignored (the leader records them). On failure only the part folder
  // is removed.
  CommitResult commit(const std::map<std::string, double>& metrics = {});

  // Drops the staging folder (part mode: the part folder only, never the shared folder).
  void abort() noexcept;

 private:
  // Hashes and fsyncs the files not yet recorded and lists every file of the staging folder
  // (subfolders into `subdirs`, to fsync); throws on a link, a non-regular file, a bad name.
  std::vector<ManifestFile> seal_files(std::vector<std::string>& subdirs);
  // Writes `text` as the staging folder's MANIFEST, refusing one over kMaxManifestBytes.
  void write_manifest(const std::string& text, size_t files, size_t metrics);
  CommitResult commit_part();

  FileSystem* fs_;
  std::string dir_;
  uint64_t step_;
  CheckpointMeta meta_;
  std::string staging_;
  uint64_t started_ns_;
  std::shared_ptr<StagedFiles> written_;  // by write_file and closed streams
  bool done_ = false;
  bool part_ = false;           // part mode: staging_ is the part folder inside shared_
  std::string shared_;          // part mode: the shared staging folder
  uint32_t rank_ = 0;           // part mode
  uint32_t world_size_ = 1;     // part mode
};

}  // namespace lifeline
