#pragma once
// CheckpointWriter carries one checkpoint through the commit protocol: staging folder, files
// fsynced, manifest last and fsynced, rename to the final name, directory fsynced.
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

// Carries one checkpoint of one step from an empty staging folder to a durable committed folder.
class CheckpointWriter {
 public:
  // Creates the staging folder `dir/.staging-step-<step>-<pid>-<random>`.
  CheckpointWriter(FileSystem& fs, std::string dir, uint64_t step, CheckpointMeta meta);
  CheckpointWriter(CheckpointWriter&&) noexcept;
  CheckpointWriter& operator=(CheckpointWriter&&) = delete;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  // Removes the staging folder unless committed.
  ~CheckpointWriter();

  // The staging folder: write any files into it, then commit().
  const std::string& path() const { return staging_; }
  uint64_t step() const { return step_; }

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
  CommitResult commit(const std::map<std::string, double>& metrics = {});

  // Drops the staging folder.
  void abort() noexcept;

 private:
  FileSystem* fs_;
  std::string dir_;
  uint64_t step_;
  CheckpointMeta meta_;
  std::string staging_;
  uint64_t started_ns_;
  std::shared_ptr<StagedFiles> written_;  // by write_file and closed streams
  bool done_ = false;
};

}  // namespace lifeline
