// `lifeline gc [DIR] [--policy FILE] [--dry-run] [--yes]`: applies the retention policy now
// (without --policy: the rules the run recorded in supervisor.json) and says what it keeps and
// why, and what it deletes (or would delete); on a terminal it asks before deleting.
//
// A missing checkpoint directory is an input error (exit 2), and so is one that another user
// controls or every user can write into (see store/dir_safety.h): gc deletes there.
//
// Sharing the directory with a running supervisor: the supervisor applies retention itself
// after every commit, holding the directory lock. `gc` deletes only while it holds that lock
// too, so two deleters never race: when a supervisor (or another gc) holds it, `gc` refuses
// with exit status 1, naming the holder. `--dry-run` takes no lock and changes nothing, so it
// always runs; it notes the holder when there is one.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/format.h"
#include "common/json_text.h"
#include "history/supervisor_record.h"
#include "policy/policy.h"
#include "store/dir_lock.h"
#include "store/dir_safety.h"
#include "store/file_system.h"
#include "store/retention.h"

namespace lifeline::cli {

namespace {

std::string rules_text(const Policy::Retention& r) {
  std::string s = "keep_last " + std::to_string(r.keep_last) + ", keep_best " + std::to_string(r.keep_best) +
                  " by " + r.metric + " (" + to_string(r.mode) + "), keep_every_steps " +
                  std::to_string(r.keep_every_steps) + ", max_total_bytes ";
  return s + (r.max_total_bytes ? format_size(double(r.max_total_bytes)) : std::string("unlimited"));
}

// The retention rules the directory's run recorded in supervisor.json (lifeline run writes them
// at every attempt); none when there is no usable record.
std::optional<Policy::Retention> recorded_retention(const std::string& dir, std::string* source) {
  auto rec = read_supervisor_record(dir);
  if (!rec || !rec->policy.is_object() || !rec->policy.contains("keep_last")) return std::nullopt;
  Policy::Retention r;
  const auto& p = rec->policy;
  r.keep_last = p.value("keep_last", r.keep_last);
  r.keep_best = p.value("keep_best", r.keep_best);
  r.metric = p.value("metric", r.metric);
  r.mode = p.value("metric_mode", std::string("min")) == "max" ? Policy::Mode::max : Policy::Mode::min;
  r.keep_every_steps = p.value("keep_every_steps", r.keep_every_steps);
  r.max_total_bytes = p.value("max_total_bytes", r.max_total_bytes);
  std::string file = p.value("source", std::string());
  *source = file.empty() ? "the built-in defaults" : file;
  return r;
}

// Exit status: 0 done, 1 refused (directory in use, or deletion not confirmed) or a deletion
// failed, 2 bad input.
int run_gc(const std::string& dir_arg, const std::string& policy_file, bool dry_run, bool yes, bool as_json) {
  Policy policy;
  try {
    policy = policy_file.empty() ? default_policy() : load_policy_file(policy_file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lifeline gc: %s\n", e.what());
    return 2;
  }
  std::string dir = resolve_ckpt_dir(dir_arg, policy.checkpoint.dir);
  if (std::string why = checkpoint_dir_problem(dir); !why.empty()) {
    std::fprintf(stderr, "lifeline gc: %s\n", why.c_str());
    return 2;
  }
  if (std::string why = unsafe_dir_reason(dir); !why.empty()) {
    std::fprintf(stderr, "lifeline gc: %s\nlifeline gc: nothing deleted\n", why.c_str());
    return 2;
  }
  std::unique_ptr<DirLock> lock;
  std::optional<std::string> holder;
  if (dry_run) {
    holder = lock_holder(dir);
  } else {
    try {
      lock = std::make_unique<DirLock>(dir, "gc");
    } catch (const DirInUse& e) {
      std::fprintf(stderr,
                   "lifeline gc: %s\nlifeline gc: nothing deleted; a running supervisor applies retention itself "
                   "after each commit (use --dry-run to see the plan)\n",
                   e.what());
      return 1;
    } catch (const std::exception& e) {  // cannot even try (permissions, a link or FIFO as lock file)
      std::fprintf(stderr, "lifeline gc: %s\n", e.what());
      return 2;
    }
  }
  // Without --policy, the rules the run itself used (its keep_last may protect more than the
  // built-in 3).
  std::string recorded_from;
  if (policy_file.empty())
    if (auto r = recorded_retention(dir, &recorded_from)) policy.retention = *r;
  if (!as_json)
    std::printf("%s %s (%s%s)\n", dry_run ? "dry run of gc in" : "gc in", dir.c_str(),
                rules_text(policy.retention).c_str(),
                !policy_file.empty()   ? (", from " + policy_file).c_str()
                : recorded_from.empty() ? ", the built-in defaults: no run recorded its policy here"
                                        : (", as the run recorded them in supervisor.json, from " + recorded_from).c_str());
  // Deleting asks first on a terminal (not with --yes or --json, not in scripts).
  if (!dry_run && !yes && !as_json && ::isatty(STDIN_FILENO)) {
    RetentionReport plan = apply_retention(default_file_system(), dir, policy.retention, std::nullopt, true);
    size_t doomed = 0;
    for (const auto& d : plan.decisions) doomed += d.keep ? 0 : 1;
    if (doomed > 0) {
      std::fputs(retention_report_text(plan, true).c_str(), stdout);
      std::printf("delete %zu checkpoint(s)? [y/N] ", doomed);
      std::fflush(stdout);
      std::string answer;
      std::getline(std::cin, answer);
      if (answer != "y" && answer != "Y" && answer != "yes") {
        std::printf("nothing deleted\n");
        return 1;
      }
    }
  }
  if (holder && !as_json)
    std::printf("note: the directory is in use (%s); its supervisor applies retention after each commit\n",
                holder->c_str());
  // No supervisor runs while gc holds the lock, so no attempt is resuming: nothing protected.
  RetentionReport report = apply_retention(default_file_system(), dir, policy.retention, std::nullopt, dry_run);
  if (as_json) {
    const auto& r = policy.retention;
    nlohmann::ordered_json j;
    j["dir"] = dir;
    j["dry_run"] = dry_run;
    j["rules"] = {{"keep_last", r.keep_last},         {"keep_best", r.keep_best},
                  {"metric", r.metric},               {"mode", to_string(r.mode)},
                  {"keep_every_steps", r.keep_every_steps}, {"max_total_bytes", r.max_total_bytes}};
    j["rules_from"] = recorded_from.empty() ? (policy_file.empty() ? "built-in" : policy_file) : "supervisor.json";
    j["in_use_by"] = holder ? nlohmann::ordered_json(*holder) : nlohmann::ordered_json(nullptr);
    nlohmann::ordered_json decisions = nlohmann::ordered_json::array();
    for (const auto& d : report.decisions)
      decisions.push_back({{"step", d.checkpoint.step},
                           {"path", d.checkpoint.path},
                           {"valid", d.checkpoint.valid},
                           {"bytes", d.checkpoint.bytes},
                           {"keep", d.keep},
                           {"reasons", d.reasons}});
    j["checkpoints"] = decisions;
    j["bytes_freed"] = report.bytes_freed;
    j["bytes_kept"] = report.bytes_kept;
    nlohmann::ordered_json leftovers = nlohmann::ordered_json::array();
    for (const auto& l : report.leftovers_removed) leftovers.push_back({{"name", l.name}, {"why", l.why}});
    j["leftovers_removed"] = leftovers;
    j["errors"] = report.errors;
    std::printf("%s\n", dump_json(j, 2).c_str());
  } else {
    std::fputs(retention_report_text(report, dry_run).c_str(), stdout);
  }
  return report.errors.empty() ? 0 : 1;
}

}  // namespace

void register_gc_command(CLI::App& app, int& rc) {
  auto* sub = app.add_subcommand("gc", "apply the retention policy now: keep, delete, and why");
  auto dir = std::make_shared<std::string>();
  auto policy = std::make_shared<std::string>();
  auto dry_run = std::make_shared<bool>(false);
  auto yes = std::make_shared<bool>(false);
  auto as_json = std::make_shared<bool>(false);
  sub->add_option("DIR", *dir, "checkpoint directory");
  sub->add_option("--policy", *policy,
                  "policy YAML file (default: the retention rules the run recorded in DIR/supervisor.json, else built-in)");
  sub->add_flag("--dry-run", *dry_run, "print what would be deleted; change nothing");
  sub->add_flag("-y,--yes", *yes, "delete without asking (gc asks on a terminal)");
  sub->add_flag("--json", *as_json, "the plan or what was done as JSON (never asks)");
  sub->callback([=, &rc] { rc = run_gc(*dir, *policy, *dry_run, *yes, *as_json); });
}

}  // namespace lifeline::cli
