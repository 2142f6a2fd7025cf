// The `lifeline` command tree (build_app) and the checkpoint-directory default every command shares.
#include "cli/app.h"

#include <cstdlib>
#include <filesystem>

#include "cli/commands.h"

#ifndef LIFELINE_VERSION
#error "LIFELINE_VERSION must be defined (src/cli/meson.build passes meson.project_version())"
#endif

namespace lifeline::cli {

std::string version() { return LIFELINE_VERSION; }

std::unique_ptr<CLI::App> build_app(int& rc) {
  auto app = std::make_unique<CLI::App>("lifeline: keeps long training jobs alive on Slurm clusters", "lifeline");
  app->require_subcommand(1);
  app->set_version_flag("--version", "lifeline " + version());
  register_run_command(*app, rc);
  register_checkpoint_commands(*app, rc);
  register_policy_commands(*app, rc);
  register_gc_command(*app, rc);
  register_history_commands(*app, rc);
  return app;
}

std::string resolve_ckpt_dir(const std::string& given, const std::string& policy_dir) {
  std::string dir = given;
  if (dir.empty()) dir = policy_dir;
  if (dir.empty()) {
    const char* env = std::getenv("LIFELINE_CKPT_DIR");
    dir = env && *env ? env : "checkpoints";
  }
  std::error_code ec;
  auto abs = std::filesystem::absolute(dir, ec);
  return ec ? dir : abs.lexically_normal().string();
}

}  // namespace lifeline::cli
