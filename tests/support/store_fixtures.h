#pragma once
// Scaffolding shared by the checkpoint store tests (store, store_input, store_crash,
// store_faults, retention): scratch directories, checkpoints committed with known contents,
// file corruption and listing, and the fault-injection chores the crash tests repeat.
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/retention.h"
#include "support/fault_injection_fs.h"
#include "support/temp_dir.h"

namespace lifeline::test {

// Points TMPDIR at /dev/shm when it is writable and TMPDIR is unset, so tests that make
// hundreds of scratch directories run on tmpfs; returns whether it did. Call it from a
// namespace-scope initializer, before any TempDir exists.
inline bool prefer_tmpfs_scratch() {
  if (std::getenv("TMPDIR") || access("/dev/shm", W_OK) != 0) return false;
  return setenv("TMPDIR", "/dev/shm", 1) == 0;
}

// The real file system without fsyncs, for tests whose durability is simulated (or not at
// stake): real fsyncs would only cost time.
inline FileSystem& disk() {
  static NoSyncFileSystem fs(default_file_system());
  return fs;
}

// The whole content of a file, as bytes ("" when it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The names in a folder, sorted.
inline std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The names in a folder that start with a dot (staging and trash folders), sorted.
inline std::vector<std::string> dot_names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& n : names_in(dir))
    if (n[0] == '.') out.push_back(n);
  return out;
}

// Flips the lowest bit of the byte at `offset`: same size, one byte different, so only a
// full (checksum) verify can see it.
inline void flip_byte(const std::string& path, size_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(std::streamoff(offset));
  char c = 0;
  f.read(&c, 1);
  c = char(c ^ 0x01);
  f.seekp(std::streamoff(offset));
  f.write(&c, 1);
}

// Rewrites the MANIFEST of checkpoint folder `ckpt` after `edit` changed its JSON.
inline void edit_manifest(const std::string& ckpt, const std::function<void(nlohmann::json&)>& edit) {
  std::ifstream in(ckpt + "/MANIFEST");
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  std::ofstream(ckpt + "/MANIFEST", std::ios::trunc) << j.dump();
}

// Commits step `step` to `dir` with two files, weights.bin and sub/state.bin, each holding
// `payload`, written through the writer; returns the committed folder.
inline std::string commit_step(const std::string& dir, uint64_t step, const std::string& payload,
                               FileSystem& fsys = default_file_system()) {
  CheckpointWriter w(fsys, dir, step, CheckpointMeta{});
  w.write_file("weights.bin", payload.data(), payload.size());
  w.write_file("sub/state.bin", payload.data(), payload.size());
  return w.commit().path;
}

// A checkpoint layout whose file contents are distinct for every step, tag ("old"/"new")
// and file, so a test can tell which commit a file it reads back came from.
struct TaggedCheckpoint {
  // files[0] (in a subfolder) the trainer writes itself, without fsync, so the commit must
  // sync it; the writer writes the others (creating their folders).
  std::vector<std::string> files;
  size_t file_bytes;       // each file's content is at least this long
  int trainer_appends;     // files[0] is appended in this many parts
  bool val_loss_metric;    // the commit records val_loss = 1/step

  // The bytes of `file` in the checkpoint of `step` saved with `tag`.
  std::string content(uint64_t step, const std::string& tag, const std::string& file) const {
    std::string unit = tag + ":" + file + ":" + std::to_string(step) + ";";
    std::string out;
    while (out.size() < file_bytes) out += unit;
    return out;
  }

  // Saves and commits the checkpoint of `step` with `tag` through `fsys`.
  CommitResult save(FileSystem& fsys, const std::string& dir, uint64_t step, const std::string& tag) const {
    CheckpointWriter w(fsys, dir, step, CheckpointMeta{});
    const std::string& own = files.at(0);
    fsys.make_dir(w.path() + "/" + own.substr(0, own.find('/')));
    {
      auto f = fsys.create_file(w.path() + "/" + own);
      std::string a = content(step, tag, own);
      for (int i = 0; i < trainer_appends; ++i) {
        size_t from = a.size() * size_t(i) / size_t(trainer_appends);
        size_t to = a.size() * size_t(i + 1) / size_t(trainer_appends);
        f->append(a.data() + from, to - from);
      }
      f->close();
    }
    for (size_t i = 1; i < files.size(); ++i) {
      std::string b = content(step, tag, files[i]);
      w.write_file(files[i], b.data(), b.size());
    }
    if (val_loss_metric) return w.commit({{"val_loss", 1.0 / double(step)}});
    return w.commit();
  }
};

// A fresh TempDir with an empty checkpoint directory `dir` (<tmp>/ckpt) inside it; the rest
// of `tmp` is room for other files and the fault file system's graveyard.
struct CheckpointDir {
  TempDir tmp;
  std::string dir = tmp / "ckpt";
  CheckpointDir() { std::filesystem::create_directory(dir); }
};

// How many file system operations `act` performs through a FaultInjectionFileSystem, on a
// fresh checkpoint directory that `setup` filled first.
inline uint64_t count_operations(const std::function<void(const std::string& dir)>& setup,
                                 const std::function<void(FileSystem& fsys, const std::string& dir)>& act) {
  CheckpointDir c;
  setup(c.dir);
  FaultInjectionFileSystem ffs(disk(), c.tmp.path());
  act(ffs, c.dir);
  return ffs.op_count();
}

// Retention as after a reboot that no writer survived: removes every staging and trash
// folder in `dir` at once and keeps every checkpoint.
inline RetentionReport remove_leftovers_after_reboot(const std::string& dir) {
  LeftoverRules gone;
  gone.dead_writer_grace_ns = 0;
  gone.writer_alive = [](pid_t) { return false; };
  Policy::Retention keep_all;
  keep_all.keep_last = 100;
  return apply_retention(disk(), dir, keep_all, std::nullopt, false, gone);
}

}  // namespace lifeline::test
