#include "store/retention.h"

#include <dirent.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "common/clock.h"
#include "common/errors.h"
#include "common/format.h"
#include "store/checkpoint_writer.h"

namespace lifeline {
namespace stdfs = std::filesystem;

namespace {

// The newest modification time in a tree (the folder itself included), in wall-clock ns.
uint64_t newest_mtime_ns(const std::string& path) {
  auto ns = [](const struct stat& st) -> uint64_t { return uint64_t(st.st_mtim.tv_sec) * uint64_t(1000000000) + uint64_t(st.st_mtim.tv_nsec); };
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return 0;
  uint64_t newest = ns(st);
  std::error_code ec;
  for (auto it = stdfs::recursive_directory_iterator(path, ec); !ec && it != stdfs::recursive_directory_iterator();
       it.increment(ec))
    if (lstat(it->path().c_str(), &st) == 0) newest = std::max(newest, ns(st));
  return newest;
}

bool pid_running(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

// Names in `dir` that start with `.staging-` or `.trash-`.
std::vector<std::string> leftover_names(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (is_staging_name(name) || name.rfind(".trash-", 0) == 0) out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// Why the leftover `name` may go now, or "" to leave it.
std::string leftover_verdict(const std::string& dir, const std::string& name, const LeftoverRules& rules) {
  if (name.rfind(".trash-", 0) == 0) return "trash";
  uint64_t now = rules.now_ns ? rules.now_ns : wall_ns();
  uint64_t mtime = newest_mtime_ns(dir + "/" + name);
  uint64_t idle = now > mtime ? now - mtime : 0;
  if (idle >= rules.abandoned_after_ns) return "untouched for " + format_age(idle);
  std::optional<pid_t> pid = staging_writer_pid(name);
  if (!pid || idle < rules.dead_writer_grace_ns) return "";
  bool alive = rules.writer_alive ? rules.writer_alive(*pid) : pid_running(*pid);
  return alive ? "" : "writer pid " + std::to_string(*pid) + " is not running";
}

}  // namespace

std::optional<pid_t> staging_writer_pid(const std::string& name) {
  // .staging-step-<digits>-<pid>-<random>
  const std::string prefix = ".staging-step-";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  size_t a = name.find('-', prefix.size());
  if (a == std::string::npos) return std::nullopt;
  size_t b = name.find('-', a + 1);
  if (b == std::string::npos || b == a + 1 || b - a - 1 > 9) return std::nullopt;
  pid_t pid = 0;
  for (size_t i = a + 1; i < b; ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    pid = pid * 10 + (name[i] - '0');
  }
  if (pid <= 0) return std::nullopt;
  return pid;
}

std::vector<RemovedLeftover> remove_all_leftovers(FileSystem& fs, const std::string& dir,
                                                  std::vector<std::string>* errors) {
  std::vector<RemovedLeftover> removed;
  for (const auto& name : leftover_names(dir)) {
    try {
      fs.remove_tree(dir + "/" + name);
    } catch (const std::exception& e) {
      if (errors) errors->push_back("leftover " + name + ": " + e.what());
      continue;
    }
    removed.push_back(RemovedLeftover{name, is_staging_name(name) ? "staging folder of a writer that is gone" : "trash"});
  }
  return removed;
}

RetentionReport plan_retention(const std::vector<CheckpointInfo>& list, const Policy::Retention& rules,
                               std::optional<uint64_t> protected_step) {
  RetentionReport report;
  for (const auto& c : list) report.decisions.push_back(RetentionDecision{c, false, {}});
  auto& ds = report.decisions;
  std::stable_sort(ds.begin(), ds.end(),
                   [](const RetentionDecision& a, const RetentionDecision& b) { return a.checkpoint.step < b.checkpoint.step; });

  // Valid ones, newest first (ties in step: later in the list first, like the newest valid).
  std::vector<size_t> valid;
  for (size_t i = ds.size(); i-- > 0;)
    if (ds[i].checkpoint.valid) valid.push_back(i);
  std::optional<size_t> newest;
  if (!valid.empty()) newest = valid.front();
  uint64_t newest_step = newest ? ds[*newest].checkpoint.step : 0;
  // The protected step stays protected until a valid checkpoint newer than it exists.
  bool protection_active = protected_step && (!newest || newest_step <= *protected_step);
  auto is_protected = [&](size_t i) { return protection_active && ds[i].checkpoint.step == *protected_step; };

  if (newest) ds[*newest].reasons.push_back("newest valid");
  for (size_t r = 0; r < valid.size() && r < rules.keep_last; ++r)
    ds[valid[r]].reasons.push_back("keep_last " + std::to_string(rules.keep_last));
  if (rules.keep_best > 0 && !rules.metric.empty()) {
    std::vector<std::pair<double, size_t>> scored;  // newest first, so a stable sort puts newer first on ties
    for (size_t i : valid) {
      auto it = ds[i].checkpoint.metrics.find(rules.metric);
      if (it != ds[i].checkpoint.metrics.end() && std::isfinite(it->second)) scored.emplace_back(it->second, i);
    }
    bool min = rules.mode == Policy::Mode::min;
    std::stable_sort(scored.begin(), scored.end(), [min](const auto& a, const auto& b) {
      return min ? a.first < b.first : a.first > b.first;
    });
    for (size_t r = 0; r < scored.size() && r < rules.keep_best; ++r)
      ds[scored[r].second].reasons.push_back("best " + rules.metric);
  }
  if (rules.keep_every_steps > 0)
    for (size_t i : valid)
      if (ds[i].checkpoint.step % rules.keep_every_steps == 0)
        ds[i].reasons.push_back("every " + std::to_string(rules.keep_every_steps));

  for (size_t i = 0; i < ds.size(); ++i) {
    auto& d = ds[i];
    const CheckpointInfo& c = d.checkpoint;
    if (is_protected(i)) d.reasons.push_back("resumed from by the running attempt");
    if (!c.valid) {
      if (is_protected(i)) {
        d.keep = true;
        d.reasons.push_back("invalid, not counted: " + c.problem);
      } else if (newest && c.step < newest_step) {
        d.reasons.push_back("invalid: " + c.problem);
      } else {
        d.keep = true;
        d.reasons.push_back(std::string(newest ? "invalid and newer than the newest valid" : "invalid, and no valid checkpoint yet") +
                            ": left for inspection, not counted: " + c.problem);
      }
      continue;
    }
    d.keep = !d.reasons.empty();
    if (!d.keep) d.reasons.push_back("not kept by any rule");
  }

  // The byte budget: drop the oldest kept valid checkpoints until the rest fits.
  uint64_t kept_bytes = 0;
  for (const auto& d : ds)
    if (d.keep && d.checkpoint.valid) kept_bytes += d.checkpoint.bytes;
  if (rules.max_total_bytes > 0 && kept_bytes > rules.max_total_bytes) {
    for (size_t i = 0; i < ds.size() && kept_bytes > rules.max_total_bytes; ++i) {
      auto& d = ds[i];
      if (!d.keep || !d.checkpoint.valid || (newest && i == *newest) || is_protected(i)) continue;
      d.keep = false;
      d.reasons = {"over max_total_bytes " + format_bytes(rules.max_total_bytes) + " (would be kept by " +
                   fmt::format("{}", fmt::join(d.reasons, ", ")) + ")"};
      kept_bytes -= d.checkpoint.bytes;
    }
  }

  for (const auto& d : ds) {
    if (d.keep && d.checkpoint.valid) report.bytes_kept += d.checkpoint.bytes;
    if (!d.keep) report.bytes_freed += d.checkpoint.bytes;
  }
  return report;
}

RetentionReport apply_retention(FileSystem& fs, const std::string& dir, const Policy::Retention& rules,
                                std::optional<uint64_t> protected_step, bool dry_run, const LeftoverRules& leftovers) {
  // Leftovers first: a trash folder from a failed deletion below is retried next time, not twice.
  std::vector<RemovedLeftover> removed;
  std::vector<std::string> errors;
  for (const auto& name : leftover_names(dir)) {
    std::string why = leftover_verdict(dir, name, leftovers);
    if (why.empty()) continue;
    if (!dry_run) {
      try {
        fs.remove_tree(dir + "/" + name);
      } catch (const std::exception& e) {
        errors.push_back(std::string("leftover ") + name + ": " + e.what());
        continue;
      }
    }
    removed.push_back(RemovedLeftover{name, why});
  }

  // Newest first, full verify until one is valid; quick verify for everything older. The full
  // verify reads around the page cache: it often runs beside training, just after a commit
  // that wrote around the cache as well, and nothing reads those bytes next.
  auto folders = checkpoint_folders(dir);
  std::vector<CheckpointInfo> list(folders.size());
  std::map<std::string, ino_t> inode;  // by folder path as judged
  bool found_valid = false;
  for (size_t i = folders.size(); i-- > 0;) {
    std::string path = dir + "/" + folders[i].second;
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) inode[path] = st.st_ino;
    list[i] = verify_checkpoint(path, found_valid ? VerifyMode::quick : VerifyMode::full_around_cache);
    found_valid = found_valid || list[i].valid;
  }
  std::map<std::string, std::string> name_of_path;
  for (size_t i = 0; i < folders.size(); ++i) name_of_path[list[i].path] = dir + "/" + folders[i].second;

  RetentionReport report = plan_retention(list, rules, protected_step);
  report.leftovers_removed = std::move(removed);
  report.errors = std::move(errors);
  if (dry_run) return report;

  // Rename every doomed folder to a trash name, one directory fsync, then remove the trees.
  std::vector<std::pair<std::string, const RetentionDecision*>> trash;
  uint64_t freed = 0;
  for (const auto& d : report.decisions) {
    if (d.keep) continue;
    std::string path = name_of_path[d.checkpoint.path];
    std::string to = trash_folder_name(dir, d.checkpoint.step);
    try {
      fs.rename(path, to);
    } catch (const std::exception& e) {
      report.errors.push_back("step " + std::to_string(d.checkpoint.step) + ": " + e.what());
      continue;
    }
    struct stat st {};
    if (lstat(to.c_str(), &st) != 0 || st.st_ino != inode[path]) {
      // Replaced since it was judged (a writer re-committed the step): put it back.
      try {
        fs.rename(to, path);
      } catch (...) {
      }
      report.errors.push_back("step " + std::to_string(d.checkpoint.step) +
                              ": the folder changed while retention ran; left alone");
      continue;
    }
    trash.emplace_back(to, &d);
  }
  if (!trash.empty()) {
    try {
      fs.sync_dir(dir);
    } catch (const std::exception& e) {
      // Not durable: leave the trash folders for the next pass rather than remove them now.
      report.errors.push_back(std::string("cannot make deletions durable: ") + e.what());
      trash.clear();
    }
  }
  for (const auto& [to, d] : trash) {
    try {
      fs.remove_tree(to);
    } catch (const std::exception& e) {
      report.errors.push_back("step " + std::to_string(d->checkpoint.step) + ": " + e.what() +
                              " (moved to trash; removed next time)");
    }
    freed += d->checkpoint.bytes;  // no longer a checkpoint either way
  }
  report.bytes_freed = freed;
  return report;
}

std::string retention_report_text(const RetentionReport& report, bool dry_run) {
  std::string out;
  char line[128];
  size_t deleted = 0, kept = 0;
  for (const auto& d : report.decisions) {
    const char* verb = d.keep ? "keep" : dry_run ? "would delete" : "delete";
    (d.keep ? kept : deleted)++;
    std::snprintf(line, sizeof line, "%-12s step %-10llu %10s  ", verb,
                  static_cast<unsigned long long>(d.checkpoint.step), format_bytes(d.checkpoint.bytes).c_str());
    out += line + fmt::format("{}", fmt::join(d.reasons, "; ")) + "\n";
  }
  for (const auto& l : report.leftovers_removed)
    out += std::string(dry_run ? "would remove" : "remove") + "       " + l.name + " (" + l.why + ")\n";
  for (const auto& e : report.errors) out += "error        " + e + "\n";
  if (report.decisions.empty()) out += "no checkpoints\n";
  out += "kept " + std::to_string(kept) + " checkpoint" + (kept == 1 ? "" : "s") + " (" +
         format_bytes(report.bytes_kept) + " valid), " + (dry_run ? "would delete " : "deleted ") +
         std::to_string(deleted) + " (" + format_bytes(report.bytes_freed) + ")";
  if (!report.leftovers_removed.empty())
    out += ", " + std::string(dry_run ? "would remove " : "removed ") + std::to_string(report.leftovers_removed.size()) +
           " leftover folder" + (report.leftovers_removed.size() == 1 ? "" : "s");
  out += "\n";
  return out;
}

}  // namespace lifeline
