#include "store/checkpoint_writer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/clock.h"
#include "common/errors.h"
#include "common/json_text.h"
#include "common/random_hex.h"
#include "store/checkpoint_store.h"
#include "store/checksum.h"
#include "store/sharded.h"

namespace lifeline {
namespace stdfs = std::filesystem;

Manifest manifest_of(const CheckpointMeta& meta, uint64_t step, const std::map<std::string, double>& metrics) {
  Manifest m;
  m.step = step;
  m.job_id = meta.job_id;
  m.attempt = meta.attempt;
  m.lineage = meta.lineage;
  m.host = meta.host;
  m.checksum_algorithm = meta.checksum_algorithm;
  m.metrics = metrics;
  return m;
}

std::string trash_folder_name(const std::string& dir, uint64_t step) {
  return dir + "/.trash-" + checkpoint_folder_name(step) + "-" + std::to_string(getpid()) + "-" + random_hex();
}

CheckpointWriter::CheckpointWriter(FileSystem& fs, std::string dir, uint64_t step, CheckpointMeta meta)
    : fs_(&fs), dir_(std::move(dir)), step_(step), meta_(std::move(meta)), started_ns_(mono_ns()),
      written_(std::make_shared<StagedFiles>()) {
  if (!known_checksum(meta_.checksum_algorithm))
    throw std::invalid_argument("unknown checksum algorithm " + meta_.checksum_algorithm);
  staging_ = dir_ + "/.staging-" + checkpoint_folder_name(step_) + "-" + std::to_string(getpid()) +
             "-" + random_hex();
  fs_->make_dir(staging_);
}

CheckpointWriter::CheckpointWriter(FileSystem& fs, std::string dir, uint64_t step, CheckpointMeta meta, PartOf part)
    : fs_(&fs), dir_(std::move(dir)), step_(step), meta_(std::move(meta)), started_ns_(mono_ns()),
      written_(std::make_shared<StagedFiles>()), part_(true), rank_(part.rank), world_size_(part.world_size) {
  if (!known_checksum(meta_.checksum_algorithm))
    throw std::invalid_argument("unknown checksum algorithm " + meta_.checksum_algorithm);
  if (world_size_ == 0 || rank_ >= world_size_)
    throw std::invalid_argument("rank " + std::to_string(rank_) + " is outside a world of " +
                                std::to_string(world_size_) + " ranks");
  if (!is_staging_name(part.staging_name) || part.staging_name.find('/') != std::string::npos)
    throw std::invalid_argument("'" + valid_utf8(part.staging_name) + "' is not a staging folder name");
  shared_ = dir_ + "/" + part.staging_name;
  try {
    fs_->make_dir(shared_);
  } catch (const SystemError& e) {
    if (e.code != EEXIST) throw;  // another rank made it first
  }
  struct stat st {};
  if (lstat(shared_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error("staging folder " + valid_utf8(shared_) + " is not a directory (or a symbolic link)");
  staging_ = shared_ + "/" + part_folder_name(rank_);
  if (lstat(staging_.c_str(), &st) == 0) fs_->remove_tree(staging_);  // an earlier try of this rank
  fs_->make_dir(staging_);
}

CheckpointWriter::CheckpointWriter(CheckpointWriter&& o) noexcept
    : fs_(o.fs_), dir_(std::move(o.dir_)), step_(o.step_), meta_(std::move(o.meta_)),
      staging_(std::move(o.staging_)), started_ns_(o.started_ns_), written_(std::move(o.written_)),
      done_(o.done_), part_(o.part_), shared_(std::move(o.shared_)), rank_(o.rank_), world_size_(o.world_size_) {
  o.done_ = true;
}

CheckpointWriter::~CheckpointWriter() { abort(); }

void CheckpointWriter::abort() noexcept {
  if (done_) return;
  done_ = true;
  written_->sealed = true;
  try {
    fs_->remove_tree(staging_);
  } catch (...) {
    // Leftover staging folders are ignored by readers and removed by gc.
  }
}

StagedFile CheckpointWriter::open_file(const std::string& rel) {
  if (done_ || written_->sealed) throw std::logic_error("checkpoint already committed or aborted");
  std::string why = unsafe_path_reason(rel);
  if (!why.empty() || rel == kManifestName) throw std::invalid_argument("cannot write " + valid_utf8(rel) + ": " + why);
  // Parent folders through the FileSystem, so they are part of what commit makes durable
  // (and what a crash test can see).
  for (size_t slash = rel.find('/'); slash != std::string::npos; slash = rel.find('/', slash + 1)) {
    std::string parent = staging_ + "/" + rel.substr(0, slash);
    struct stat st {};
    if (lstat(parent.c_str(), &st) != 0) fs_->make_dir(parent);
  }
  if (written_->closed.count(rel) || written_->unclosed.count(rel))
    throw std::invalid_argument("checkpoint file " + rel + " is already written");
  StagedFile f(written_, rel, fs_->create_file(staging_ + "/" + rel), make_hasher(meta_.checksum_algorithm));
  written_->unclosed.insert(rel);
  return f;
}

void CheckpointWriter::write_file(const std::string& rel, const void* data, size_t size) {
  StagedFile f = open_file(rel);
  f.append(data, size);
  f.close();
}

StagedFile::StagedFile(std::shared_ptr<StagedFiles> files, std::string rel, std::unique_ptr<WritableFile> file,
                       std::unique_ptr<Hasher> hasher)
    : files_(std::move(files)), rel_(std::move(rel)), file_(std::move(file)), hasher_(std::move(hasher)) {}

StagedFile::~StagedFile() = default;  // unclosed: stays in files_->unclosed, commit() refuses

void StagedFile::append(const void* data, size_t size) {
  if (!file_) throw std::logic_error("checkpoint file " + rel_ + " is closed");
  if (files_->sealed) throw std::logic_error("checkpoint file " + rel_ + " written after its checkpoint was committed");
  // Checksum each chunk right after writing it, while it is hot in cache.
  constexpr size_t kChunk = 8u << 20;
  auto* p = static_cast<const char*>(data);
  for (size_t off = 0; off < size; off += kChunk) {
    size_t n = std::min(kChunk, size - off);
    file_->append(p + off, n);
    hasher_->update(p + off, n);
  }
  size_ += size;
}

void StagedFile::close() {
  if (!file_) throw std::logic_error("checkpoint file " + rel_ + " is closed");
  if (files_->sealed) throw std::logic_error("checkpoint file " + rel_ + " closed after its checkpoint was committed");
  std::unique_ptr<WritableFile> file = std::move(file_);
  file->sync();
  file->close();
  files_->closed[rel_] = ManifestFile{rel_, size_, hasher_->hex_digest()};
  files_->unclosed.erase(rel_);
}

CommitResult publish_staging(FileSystem& fs, const std::string& dir, uint64_t step, const std::string& staging) {
  CommitResult result;
  result.path = dir + "/" + checkpoint_folder_name(step);
  struct stat st {};
  if (lstat(result.path.c_str(), &st) == 0) {
    // The same step was committed before (e.g. a stop request right after a resume).
    if (verify_checkpoint(result.path, VerifyMode::full).valid) {
      result.already_present = true;
      return result;
    }
    // An invalid folder under the final name: move it aside, never resume it. Until the
    // directory fsync below, a crash leaves either the invalid folder or nothing under the
    // final name; the previous valid checkpoint is untouched either way.
    std::string trash = trash_folder_name(dir, step);
    try {
      fs.rename(result.path, trash);
    } catch (const SystemError& e) {
      if (e.code != ENOENT) throw;  // gc moved it away first: nothing left to move
    }
    fs.rename(staging, result.path);
    fs.sync_dir(dir);
    // Durable: from here on nothing may report this commit as failed.
    try {
      fs.remove_tree(trash);
    } catch (const std::exception&) {
      // A leftover .trash- folder: never resumed, removed by gc.
    }
  } else {
    fs.rename(staging, result.path);
    fs.sync_dir(dir);
  }
  std::error_code ec;
  result.path = stdfs::absolute(result.path, ec).lexically_normal().string();
  return result;
}

std::vector<ManifestFile> CheckpointWriter::seal_files(std::vector<std::string>& subdirs) {
  std::vector<ManifestFile> files;
  for (auto it = stdfs::recursive_directory_iterator(staging_); it != stdfs::recursive_directory_iterator(); ++it) {
    std::string rel = it->path().lexically_relative(staging_).generic_string();
    auto status = it->symlink_status();
    if (stdfs::is_symlink(status))
      throw std::runtime_error("checkpoint file " + valid_utf8(rel) + " is a symbolic link: not allowed");
    std::string why = unsafe_path_reason(rel);  // a name JSON cannot carry, say
    if (!why.empty()) throw std::runtime_error("checkpoint file " + valid_utf8(rel) + ": " + why);
    if (stdfs::is_directory(status)) {
      subdirs.push_back(it->path().string());
      continue;
    }
    if (!stdfs::is_regular_file(status))
      throw std::runtime_error("checkpoint file " + valid_utf8(rel) + " is not a regular file");
    if (rel == kManifestName) throw std::runtime_error("the trainer wrote a file named MANIFEST");
    auto w = written_->closed.find(rel);
    if (w != written_->closed.end()) {
      files.push_back(w->second);
      continue;
    }
    auto hasher = make_hasher(meta_.checksum_algorithm);
    unsigned long long bytes = 0;
    if (!fs_->hash_file(it->path().string(), *hasher, bytes, ReadCache::cached)) throw_errno("read", it->path().string());
    fs_->sync_file(it->path().string());
    files.push_back(ManifestFile{rel, bytes, hasher->hex_digest()});
  }
  return files;
}

void CheckpointWriter::write_manifest(const std::string& text, size_t files, size_t metrics) {
  if (text.size() > kMaxManifestBytes)
    throw std::runtime_error("the MANIFEST of step " + std::to_string(step_) + " would be " +
                             std::to_string(text.size()) + " bytes, over the limit of " +
                             std::to_string(kMaxManifestBytes >> 20) + " MiB (" + std::to_string(files) +
                             " files, " + std::to_string(metrics) + " metrics): save fewer, bigger files");
  auto mf = fs_->create_file(staging_ + "/" + kManifestName);
  mf->append(text.data(), text.size());
  mf->sync();
  mf->close();
  fs_->sync_dir(staging_);
}

CommitResult CheckpointWriter::commit(const std::map<std::string, double>& metrics) {
  if (done_) throw std::logic_error("checkpoint already committed or aborted");
  written_->sealed = true;  // a stream still open must not write into the folder once renamed
  try {
    if (!written_->unclosed.empty())
      throw std::logic_error("checkpoint file " + *written_->unclosed.begin() +
                             " was not closed (close() every stream before commit)");
    if (part_) return commit_part();
    Manifest m = manifest_of(meta_, step_, metrics);
    m.created_ns = wall_ns();
    std::vector<std::string> subdirs;
    m.files = seal_files(subdirs);
    if (m.files.empty())
      throw std::runtime_error("checkpoint of step " + std::to_string(step_) +
                               " has no files: write the trainer's state into its folder before commit");
    for (auto& d : subdirs) fs_->sync_dir(d);
    write_manifest(manifest_to_json(m), m.files.size(), m.metrics.size());

    CommitResult result = publish_staging(*fs_, dir_, step_, staging_);
    if (result.already_present) abort();
    done_ = true;
    result.bytes = m.total_bytes();
    result.duration_ns = mono_ns() - started_ns_;
    return result;
  } catch (...) {
    abort();
    throw;
  }
}

CommitResult CheckpointWriter::commit_part() {
  PartManifest m;
  m.step = step_;
  m.rank = rank_;
  m.world_size = world_size_;
  m.checksum_algorithm = meta_.checksum_algorithm;
  std::vector<std::string> subdirs;
  m.files = seal_files(subdirs);  // none is fine: the leader refuses a checkpoint without any
  for (auto& d : subdirs) fs_->sync_dir(d);
  write_manifest(part_manifest_to_json(m), m.files.size(), 0);
  fs_->sync_dir(shared_);
  done_ = true;
  CommitResult result;
  std::error_code ec;
  result.path = stdfs::absolute(staging_, ec).lexically_normal().string();
  result.bytes = m.total_bytes();
  result.duration_ns = mono_ns() - started_ns_;
  return result;
}

}  // namespace lifeline
