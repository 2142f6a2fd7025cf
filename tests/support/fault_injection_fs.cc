#include "support/fault_injection_fs.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "common/errors.h"

namespace lifeline {
namespace stdfs = std::filesystem;

const char* to_string(FsOp op) {
  switch (op) {
    case FsOp::create: return "create";
    case FsOp::write: return "write";
    case FsOp::fsync: return "fsync";
    case FsOp::close: return "close";
    case FsOp::sync_file: return "sync_file";
    case FsOp::make_dir: return "make_dir";
    case FsOp::rename: return "rename";
    case FsOp::sync_dir: return "sync_dir";
    case FsOp::remove_tree: return "remove_tree";
  }
  return "?";
}

namespace {

// The words PosixFileSystem uses in its errors, so an injected fault reads like a real one.
const char* posix_words(FsOp op) {
  switch (op) {
    case FsOp::create: return "create";
    case FsOp::write: return "write";
    case FsOp::fsync: return "fsync";
    case FsOp::close: return "close";
    case FsOp::sync_file: return "fsync";
    case FsOp::make_dir: return "mkdir";
    case FsOp::rename: return "rename";
    case FsOp::sync_dir: return "fsync directory";
    case FsOp::remove_tree: return "remove";
  }
  return "?";
}

std::string parent_of(const std::string& path) {
  std::string p = stdfs::path(path).parent_path().string();
  return p.empty() ? "." : p;
}

std::string name_of(const std::string& path) { return stdfs::path(path).filename().string(); }

bool exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

}  // namespace

// A file written through the wrapper: counts its operations and remembers its synced size.
class FaultInjectionFileSystem::File : public WritableFile {
 public:
  File(FaultInjectionFileSystem& fs, std::unique_ptr<WritableFile> base, std::string path, ino_t ino)
      : fs_(fs), base_(std::move(base)), path_(std::move(path)), ino_(ino) {}
  void append(const void* data, size_t size) override {
    fs_.begin(FsOp::write, path_);
    base_->append(data, size);
    fs_.files_[ino_].size += size;
  }
  void sync() override {
    fs_.begin(FsOp::fsync, path_);
    base_->sync();
    fs_.files_[ino_].synced = fs_.files_[ino_].size;
  }
  void close() override {
    fs_.begin(FsOp::close, path_);
    base_->close();
  }

 private:
  FaultInjectionFileSystem& fs_;
  std::unique_ptr<WritableFile> base_;
  std::string path_;
  ino_t ino_;
};

FaultInjectionFileSystem::FaultInjectionFileSystem(FileSystem& base, std::string root)
    : ForwardingFileSystem(base), root_(std::move(root)), graveyard_(root_ + "/.fault-injection-graveyard") {}

FaultInjectionFileSystem::~FaultInjectionFileSystem() {
  std::error_code ec;
  stdfs::remove_all(graveyard_, ec);
}

void FaultInjectionFileSystem::begin(FsOp op, const std::string& path) {
  ++ops_;
  log_.push_back(std::to_string(ops_) + " " + to_string(op) + " " + path);
  if (crashed_ || (crash_at_ && ops_ >= *crash_at_)) {
    crashed_ = true;
    throw PowerLoss{ops_};
  }
  if (fail_at_ && ops_ == *fail_at_) throw SystemError(posix_words(op), path, fail_at_err_);
  if (fail_from_ && ops_ >= *fail_from_) throw SystemError(posix_words(op), path, fail_from_err_);
}

ino_t FaultInjectionFileSystem::inode_of(const std::string& path) const {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) throw_errno("fault injection: stat", path);
  return st.st_ino;
}

std::string FaultInjectionFileSystem::path_of(ino_t ino, const std::string& hint) const {
  struct stat st {};
  if (!hint.empty() && lstat(hint.c_str(), &st) == 0 && st.st_ino == ino) return hint;
  if (lstat(root_.c_str(), &st) == 0 && st.st_ino == ino) return root_;
  std::error_code ec;
  for (auto it = stdfs::recursive_directory_iterator(root_, ec); !ec && it != stdfs::recursive_directory_iterator();
       it.increment(ec)) {
    if (lstat(it->path().c_str(), &st) == 0 && st.st_ino == ino) return it->path().string();
  }
  return "";
}

void FaultInjectionFileSystem::forget_tree(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return;
  files_.erase(st.st_ino);
  if (!S_ISDIR(st.st_mode)) return;
  std::error_code ec;
  for (auto it = stdfs::recursive_directory_iterator(path, ec); !ec && it != stdfs::recursive_directory_iterator();
       it.increment(ec))
    if (lstat(it->path().c_str(), &st) == 0) files_.erase(st.st_ino);
}

std::unique_ptr<WritableFile> FaultInjectionFileSystem::create_file(const std::string& path) {
  begin(FsOp::create, path);
  auto file = base_.create_file(path);
  ino_t ino = inode_of(path);
  files_[ino] = FileData{0, 0, path};
  ino_t parent = inode_of(parent_of(path));
  pending_.push_back(Pending{Pending::created, parent, parent_of(path), name_of(path), 0, "", "", "", {parent}});
  return std::make_unique<File>(*this, std::move(file), path, ino);
}

void FaultInjectionFileSystem::sync_file(const std::string& path) {
  begin(FsOp::sync_file, path);
  base_.sync_file(path);
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return;
  auto it = files_.find(st.st_ino);
  if (it != files_.end()) it->second.size = it->second.synced = uint64_t(st.st_size);
}

void FaultInjectionFileSystem::make_dir(const std::string& path) {
  begin(FsOp::make_dir, path);
  base_.make_dir(path);
  ino_t parent = inode_of(parent_of(path));
  pending_.push_back(Pending{Pending::created, parent, parent_of(path), name_of(path), 0, "", "", "", {parent}});
}

void FaultInjectionFileSystem::rename(const std::string& from, const std::string& to) {
  begin(FsOp::rename, from + " -> " + to);
  struct stat sf {}, st {};
  ino_t from_parent = 0, to_parent = 0;
  if (lstat(from.c_str(), &sf) == 0) from_parent = inode_of(parent_of(from));
  if (exists(parent_of(to))) to_parent = inode_of(parent_of(to));
  std::string grave;
  if (lstat(to.c_str(), &st) == 0 && from_parent != 0) {
    // The rename replaces `to`. Keep the replaced entry in the graveyard so a power loss can
    // bring it back, but only where the real rename would succeed: leave "not empty" and
    // type mismatches to the real call.
    bool both_dirs = S_ISDIR(sf.st_mode) && S_ISDIR(st.st_mode);
    bool neither_dir = !S_ISDIR(sf.st_mode) && !S_ISDIR(st.st_mode);
    if ((both_dirs && stdfs::is_empty(to)) || neither_dir) {
      if (!exists(graveyard_)) ::mkdir(graveyard_.c_str(), 0755);
      grave = graveyard_ + "/" + std::to_string(++graves_);
      if (::rename(to.c_str(), grave.c_str()) != 0) throw_errno("fault injection: set aside", to);
    }
  }
  try {
    base_.rename(from, to);
  } catch (...) {
    if (!grave.empty()) (void)::rename(grave.c_str(), to.c_str());
    throw;
  }
  std::vector<ino_t> parents{from_parent};
  if (to_parent != from_parent) parents.push_back(to_parent);
  if (!grave.empty())
    pending_.push_back(Pending{Pending::removed, to_parent, parent_of(to), name_of(to), 0, "", "", grave, {to_parent}});
  pending_.push_back(Pending{Pending::renamed, from_parent, parent_of(from), name_of(from), to_parent, parent_of(to),
                             name_of(to), "", parents});
}

void FaultInjectionFileSystem::sync_dir(const std::string& path) {
  begin(FsOp::sync_dir, path);
  base_.sync_dir(path);
  ino_t ino = inode_of(path);
  std::vector<Pending> still;
  for (auto& p : pending_) {
    p.unsynced.erase(std::remove(p.unsynced.begin(), p.unsynced.end(), ino), p.unsynced.end());
    if (!p.unsynced.empty()) {
      still.push_back(std::move(p));
    } else if (p.kind == Pending::removed) {
      forget_tree(p.grave);
      std::error_code ec;
      stdfs::remove_all(p.grave, ec);
    }
  }
  pending_ = std::move(still);
}

void FaultInjectionFileSystem::remove_tree(const std::string& path) {
  begin(FsOp::remove_tree, path);
  if (!exists(path)) return;
  if (!exists(graveyard_) && ::mkdir(graveyard_.c_str(), 0755) != 0) throw_errno("fault injection: mkdir", graveyard_);
  std::string grave = graveyard_ + "/" + std::to_string(++graves_);
  ino_t parent = inode_of(parent_of(path));
  if (::rename(path.c_str(), grave.c_str()) != 0) throw_errno("remove", path);
  pending_.push_back(Pending{Pending::removed, parent, parent_of(path), name_of(path), 0, "", "", grave, {parent}});
}

void FaultInjectionFileSystem::fail_at(uint64_t n, int err) {
  fail_at_ = n;
  fail_at_err_ = err;
}

void FaultInjectionFileSystem::fail_from(uint64_t n, int err) {
  fail_from_ = n;
  fail_from_err_ = err;
}

void FaultInjectionFileSystem::crash_at(uint64_t n) { crash_at_ = n; }

void FaultInjectionFileSystem::undo(const Pending& p) {
  std::error_code ec;
  switch (p.kind) {
    case Pending::created: {
      std::string dir = path_of(p.parent, p.parent_hint);
      if (dir.empty()) return;  // its folder is gone already
      forget_tree(dir + "/" + p.name);
      stdfs::remove_all(dir + "/" + p.name, ec);
      return;
    }
    case Pending::renamed: {
      std::string from_dir = path_of(p.parent, p.parent_hint), to_dir = path_of(p.to_parent, p.to_parent_hint);
      if (from_dir.empty() || to_dir.empty()) return;
      (void)::rename((to_dir + "/" + p.to_name).c_str(), (from_dir + "/" + p.name).c_str());
      return;
    }
    case Pending::removed: {
      std::string dir = path_of(p.parent, p.parent_hint);
      if (dir.empty()) return;  // its folder is gone: so is the tree
      (void)::rename(p.grave.c_str(), (dir + "/" + p.name).c_str());
      return;
    }
  }
}

void FaultInjectionFileSystem::lose_power(size_t keep_pending) {
  keep_pending = std::min(keep_pending, pending_.size());
  for (size_t i = pending_.size(); i > keep_pending; --i) undo(pending_[i - 1]);
  for (const auto& [ino, data] : files_) {
    std::string path = path_of(ino, data.hint);
    struct stat st {};
    if (path.empty() || lstat(path.c_str(), &st) != 0 || uint64_t(st.st_size) <= data.synced) continue;
    if (::truncate(path.c_str(), off_t(data.synced)) != 0) throw_errno("fault injection: truncate", path);
  }
  reset();  // what is left is what the disk holds; kept removals become real, others went back
}

void FaultInjectionFileSystem::reset() {
  std::error_code ec;
  stdfs::remove_all(graveyard_, ec);
  pending_.clear();
  files_.clear();
  log_.clear();
  ops_ = 0;
  graves_ = 0;
  fail_at_.reset();
  fail_from_.reset();
  crash_at_.reset();
  crashed_ = false;
}

namespace {
// A file of NoSyncFileSystem: appends and closes, never fsyncs.
class NoSyncFile : public WritableFile {
 public:
  explicit NoSyncFile(std::unique_ptr<WritableFile> base) : base_(std::move(base)) {}
  void append(const void* data, size_t size) override { base_->append(data, size); }
  void sync() override {}
  void close() override { base_->close(); }

 private:
  std::unique_ptr<WritableFile> base_;
};
}  // namespace

std::unique_ptr<WritableFile> NoSyncFileSystem::create_file(const std::string& path) {
  return std::make_unique<NoSyncFile>(base_.create_file(path));
}

}  // namespace lifeline
