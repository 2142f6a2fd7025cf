// `lifeline gc [DIR] [--policy FILE] [--dry-run]`: applies the retention policy now and says
// what it keeps and why, and what it deletes (or would delete).
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

#include "cli/commands.h"
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
  return s + (r.max_total_bytes ? std::to_string(r.max_total_bytes) : std::string("unlimited"));
}

// Exit status: 0 done, 1 refused (directory in use) or a deletion failed, 2 bad input.
int run_gc(const std::string& dir_arg, const std::string& policy_file, bool dry_run) {
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
  std::printf("%s %s (%s)\n", dry_run ? "dry run of gc in" : "gc in", dir.c_str(), rules_text(policy.retention).c_str());
  if (holder)
    std::printf("note: the directory is in use (%s); its supervisor applies retention after each commit\n",
                holder->c_str());
  // No supervisor runs while gc holds the lock, so no attempt is resuming: nothing protected.
  RetentionReport report = apply_retention(default_file_system(), dir, policy.retention, std::nullopt, dry_run);
  std::fputs(retention_report_text(report, dry_run).c_str(), stdout);
  return report.errors.empty() ? 0 : 1;
}

}  // namespace

void register_gc_command(CLI::App& app, int& rc) {
  auto* sub = app.add_subcommand("gc", "apply the retention policy now: keep, delete, and why");
  auto dir = std::make_shared<std::string>();
  auto policy = std::make_shared<std::string>();
  auto dry_run = std::make_shared<bool>(false);
  sub->add_option("DIR", *dir, "checkpoint directory");
  sub->add_option("--policy", *policy, "policy YAML file (default: built-in)");
  sub->add_flag("--dry-run", *dry_run, "print what would be deleted; change nothing");
  sub->callback([=, &rc] { rc = run_gc(*dir, *policy, *dry_run); });
}

}  // namespace lifeline::cli
