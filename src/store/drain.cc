#include "store/drain.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

#include "common/clock.h"
#include "common/errors.h"
#include "store/checkpoint_store.h"
#include "store/manifest.h"
#include "store/sharded.h"

namespace lifeline {

namespace {

// A Hasher that also appends every chunk it is fed to the copy being written: hash_file's
// streaming read (no whole-file buffer, the page-cache policy of the store) does the copy.
class CopyingHasher final : public Hasher {
 public:
  CopyingHasher(std::unique_ptr<Hasher> hash, WritableFile& out, const std::function<void(size_t)>& copied)
      : hash_(std::move(hash)), out_(out), copied_(copied) {}
  void update(const void* data, size_t size) override {
    hash_->update(data, size);
    out_.append(data, size);
    if (copied_) copied_(size);
  }
  std::string hex_digest() override { return hash_->hex_digest(); }

 private:
  std::unique_ptr<Hasher> hash_;
  WritableFile& out_;
  const std::function<void(size_t)>& copied_;
};

// The text of a manifest file, or a clear error naming it.
std::string read_manifest(FileSystem& fs, const std::string& path) {
  FileRead r = fs.read_file(path, kMaxManifestBytes);
  if (r.error) throw SystemError("cannot read", path, r.error);
  return r.content;
}

// Writes `text` to `path` (a new file) and makes it durable.
void write_durable(FileSystem& fs, const std::string& path, const std::string& text) {
  auto f = fs.create_file(path);
  f->append(text.data(), text.size());
  f->sync();
  f->close();
}

// One file to copy: where from, where to, what it must hash to.
struct Copy {
  std::string from, to;
  uint64_t bytes = 0;
  std::string checksum;
};

// Copies each file into `staging`, hashing as it goes: a copy whose bytes or checksum differ from
// its manifest's is an error (the local copy is damaged). Every copy is fsynced.
void copy_verified(FileSystem& fs, const std::vector<Copy>& copies, const std::string& algorithm,
                   const std::string& staging, const DrainProgress& progress, DrainResult& result) {
  uint64_t total = 0, done = 0;
  for (const auto& c : copies) total += c.bytes;
  std::function<void(size_t)> copied = [&](size_t n) {
    done += n;
    if (progress) progress(done, total);
  };
  for (const auto& c : copies) {
    std::unique_ptr<Hasher> hash = make_hasher(algorithm);
    if (!hash) throw std::runtime_error(c.from + ": unknown checksum algorithm " + algorithm);
    auto out = fs.create_file(staging + "/" + c.to);
    CopyingHasher copier(std::move(hash), *out, copied);
    unsigned long long bytes = 0;
    if (!fs.hash_file(c.from, copier, bytes, ReadCache::cached))
      throw std::runtime_error("cannot read " + c.from + " (it is listed in the manifest)");
    if (bytes != c.bytes || copier.hex_digest() != c.checksum)
      throw std::runtime_error(c.from + " does not match its manifest (" + std::to_string(bytes) + " bytes, " +
                               std::to_string(c.bytes) + " listed): the local copy is damaged; not drained");
    out->sync();
    out->close();
    result.bytes += bytes;
    ++result.files;
  }
}

// Creates the folders above each copy's file (model/shard-0.pt) under `staging`, once each;
// `dirs` holds the relative folders made so far (the caller's, to fsync later).
void make_parent_dirs(FileSystem& fs, const std::vector<Copy>& copies, const std::string& staging,
                      std::vector<std::string>& dirs) {
  for (const auto& c : copies) {
    for (size_t slash = c.to.find('/'); slash != std::string::npos; slash = c.to.find('/', slash + 1)) {
      std::string folder = c.to.substr(0, slash);
      if (std::find(dirs.begin(), dirs.end(), folder) != dirs.end()) continue;
      fs.make_dir(staging + "/" + folder);
      dirs.push_back(folder);
    }
  }
}

}  // namespace

DrainResult drain_checkpoint(FileSystem& fs, const std::string& local_dir, const std::string& shared_dir,
                             uint64_t step, uint64_t token, const DrainProgress& progress) {
  uint64_t start = mono_ns();
  const std::string name = checkpoint_folder_name(step);
  const std::string src = local_dir + "/" + name;
  DrainResult result;
  result.path = shared_dir + "/" + name;
  if (verify_checkpoint(result.path, VerifyMode::quick).valid) {
    result.already_present = true;
    return result;
  }

  // What the manifests promise: every file with its size and checksum; the manifests themselves
  // are copied byte for byte, last.
  std::string top_text = read_manifest(fs, src + "/" + kManifestName);
  Manifest top;
  try {
    top = manifest_from_json(top_text);
  } catch (const std::exception& e) {
    throw std::runtime_error(src + "/" + kManifestName + ": " + e.what());
  }
  if (top.step != step) throw std::runtime_error(src + "/" + kManifestName + ": names step " + std::to_string(top.step));
  const std::string staging_name = shared_staging_name(step, token);
  const std::string staging = shared_dir + "/" + staging_name;
  std::vector<Copy> copies;
  std::vector<std::pair<std::string, std::string>> part_manifests;  // relative path, text
  std::vector<std::string> dirs;                                    // relative folders to create
  for (const auto& f : top.files) copies.push_back({src + "/" + f.path, f.path, f.bytes, f.checksum});
  for (const auto& p : top.parts) {
    std::string text = read_manifest(fs, src + "/" + p.path);
    PartManifest pm;
    try {
      pm = part_manifest_from_json(text);
    } catch (const std::exception& e) {
      throw std::runtime_error(src + "/" + p.path + ": " + e.what());
    }
    std::string folder = part_folder_name(p.rank);
    for (const auto& f : pm.files)
      copies.push_back({src + "/" + folder + "/" + f.path, folder + "/" + f.path, f.bytes, f.checksum});
    part_manifests.emplace_back(p.path, std::move(text));
  }
  try {
    fs.remove_tree(staging);  // a drain of this step that died (same token: same process)
    fs.make_dir(staging);
    for (const auto& p : top.parts) {  // every part has its folder, with files or not
      fs.make_dir(staging + "/" + part_folder_name(p.rank));
      dirs.push_back(part_folder_name(p.rank));
    }
    make_parent_dirs(fs, copies, staging, dirs);  // nested folders of the trainer's own files
    copy_verified(fs, copies, top.checksum_algorithm, staging, progress, result);
    for (const auto& [path, text] : part_manifests) write_durable(fs, staging + "/" + path, text);
    for (const auto& d : dirs) fs.sync_dir(staging + "/" + d);
    write_durable(fs, staging + "/" + kManifestName, top_text);
    fs.sync_dir(staging);
    fs.rename(staging, result.path);
    fs.sync_dir(shared_dir);
  } catch (...) {
    remove_staging(fs, shared_dir, staging_name);
    throw;
  }
  result.duration_ns = mono_ns() - start;
  return result;
}

DrainResult drain_parts(FileSystem& fs, const std::string& local_dir, const std::string& shared_dir,
                        const std::string& staging_name, uint64_t step, const DrainProgress& progress) {
  uint64_t start = mono_ns();
  const std::string src = local_dir + "/" + staging_name;
  const std::string staging = shared_dir + "/" + staging_name;
  DrainResult result;
  result.path = staging;
  // This node's parts: every rank-XXXXX folder with a part manifest of this step.
  std::vector<std::pair<std::string, std::string>> parts;  // folder, manifest text
  std::vector<Copy> copies;
  std::string algorithm;
  std::error_code ec;
  std::vector<std::string> folders;
  for (const auto& entry : std::filesystem::directory_iterator(src, ec))
    if (entry.path().filename().string().rfind("rank-", 0) == 0) folders.push_back(entry.path().filename().string());
  if (ec) throw std::runtime_error("cannot list " + src + ": " + ec.message());
  std::sort(folders.begin(), folders.end());
  for (const auto& folder : folders) {
    std::string text = read_manifest(fs, src + "/" + folder + "/" + kManifestName);
    PartManifest pm;
    try {
      pm = part_manifest_from_json(text);
    } catch (const std::exception& e) {
      throw std::runtime_error(src + "/" + folder + "/" + kManifestName + ": " + e.what());
    }
    if (pm.step != step || part_folder_name(pm.rank) != folder)
      throw std::runtime_error(src + "/" + folder + "/" + kManifestName + ": names step " + std::to_string(pm.step) +
                               ", rank " + std::to_string(pm.rank));
    if (!algorithm.empty() && pm.checksum_algorithm != algorithm)
      throw std::runtime_error(src + "/" + folder + ": checksum algorithm " + pm.checksum_algorithm + ", not " + algorithm);
    algorithm = pm.checksum_algorithm;
    for (const auto& f : pm.files)
      copies.push_back({src + "/" + folder + "/" + f.path, folder + "/" + f.path, f.bytes, f.checksum});
    parts.emplace_back(folder, std::move(text));
  }
  if (parts.empty()) throw std::runtime_error(src + " holds no part of step " + std::to_string(step));
  try {
    if (!std::filesystem::is_directory(staging)) {
      try {
        fs.make_dir(staging);  // another node may make it at the same moment
      } catch (const std::exception&) {
        if (!std::filesystem::is_directory(staging)) throw;
      }
    }
    std::vector<std::string> dirs;
    for (const auto& [folder, text] : parts) {
      fs.remove_tree(staging + "/" + folder);  // an earlier drain of this part that died
      fs.make_dir(staging + "/" + folder);
      dirs.push_back(folder);
    }
    make_parent_dirs(fs, copies, staging, dirs);
    copy_verified(fs, copies, algorithm, staging, progress, result);
    // Folders below the parts first, then each part's MANIFEST (last: it says the part is whole).
    for (auto d = dirs.rbegin(); d != dirs.rend(); ++d) fs.sync_dir(staging + "/" + *d);
    for (const auto& [folder, text] : parts) {
      write_durable(fs, staging + "/" + folder + "/" + kManifestName, text);
      fs.sync_dir(staging + "/" + folder);
    }
    fs.sync_dir(staging);
    fs.sync_dir(shared_dir);
  } catch (...) {
    for (const auto& [folder, text] : parts) {
      try {
        fs.remove_tree(staging + "/" + folder);
      } catch (const std::exception&) {
        // the leader's abandon (or gc) removes the staging folder with it
      }
    }
    throw;
  }
  result.duration_ns = mono_ns() - start;
  return result;
}

DrainQueue::DrainQueue(FileSystem& fs, std::string local_dir, std::string shared_dir, uint64_t token, Report report,
                       bool idle_io, DrainFn drain)
    : fs_(fs),
      local_(std::move(local_dir)),
      shared_(std::move(shared_dir)),
      token_(token),
      report_(std::move(report)),
      drain_(std::move(drain)) {
  if (!drain_)
    drain_ = [this](uint64_t step, const DrainProgress& progress) {
      return drain_checkpoint(fs_, local_, shared_, step, token_, progress);
    };
  thread_ = std::thread([this, idle_io] { run(idle_io); });
}

DrainQueue::~DrainQueue() {
  close();
  thread_.join();
}

void DrainQueue::close() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

void DrainQueue::add(uint64_t step) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
    queued_.insert(step);
  }
  cv_.notify_all();
}

bool DrainQueue::wait_idle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> l(mu_);
  return cv_.wait_until(l, deadline, [&] { return queued_.empty() && !busy_; });
}

DrainQueue::Progress DrainQueue::progress() const {
  std::lock_guard<std::mutex> l(mu_);
  return progress_;
}

void DrainQueue::run(bool idle_io) {
  if (idle_io) {
    // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_IDLE): glibc has no wrapper.
    constexpr int kWhoProcess = 1, kClassIdle = 3, kClassShift = 13;
    ::syscall(SYS_ioprio_set, kWhoProcess, 0, kClassIdle << kClassShift);
  }
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stopping_ || !queued_.empty(); });
    std::vector<Event> skipped;
    if (stopping_) {
      for (uint64_t s : queued_) skipped.push_back({Event::Kind::skipped, s, {}, {}});
      queued_.clear();
      l.unlock();
      for (const auto& e : skipped)
        if (report_) report_(e);
      return;
    }
    // The newest first; the older ones queued with it are superseded.
    uint64_t step = *queued_.rbegin();
    for (uint64_t s : queued_)
      if (s != step) skipped.push_back({Event::Kind::skipped, s, {}, {}});
    queued_.clear();
    busy_ = true;
    progress_.step = step;
    progress_.done = progress_.total = 0;
    progress_.started_mono_ns = mono_ns();
    const uint64_t started = progress_.started_mono_ns;
    l.unlock();
    for (const auto& e : skipped)
      if (report_) report_(e);
    Event e;
    e.step = step;
    try {
      e.result = drain_(step, [this, started](uint64_t done, uint64_t total) {
        {
          std::lock_guard<std::mutex> g(mu_);
          progress_.done = done;
          progress_.total = total;
        }
        // storage.drain_bandwidth: ahead of the rate, wait until the bytes copied are due.
        if (uint64_t bw = bandwidth_.load()) {
          uint64_t due_ns = uint64_t(double(done) / double(bw) * 1e9);
          uint64_t elapsed = mono_ns() - started;
          if (due_ns > elapsed) std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<uint64_t>(due_ns - elapsed, 1000000000ull)));
        }
      });
    } catch (const std::exception& ex) {
      e.kind = Event::Kind::failed;
      e.error = ex.what();
    }
    if (report_) report_(e);
    l.lock();
    busy_ = false;
    progress_.step.reset();
    if (e.kind == Event::Kind::drained && (!progress_.newest_drained || step > *progress_.newest_drained))
      progress_.newest_drained = step;
    cv_.notify_all();
  }
}

}  // namespace lifeline
