// lifeline: the command-line entry point; dispatches to the subcommands in src/cli/.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "cli/commands.h"

namespace lifeline::cli {

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

int main(int argc, char** argv) {
  // A closed output pipe (`lifeline history | head`) is a write error to report, never a kill:
  // a supervisor killed by SIGPIPE would leave its trainer unsupervised.
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"lifeline: keeps long training jobs alive on Slurm clusters", "lifeline"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("lifeline 0.1.0"));
  int rc = 0;
  lifeline::cli::register_run_command(app, rc);
  lifeline::cli::register_checkpoint_commands(app, rc);
  lifeline::cli::register_policy_commands(app, rc);
  lifeline::cli::register_gc_command(app, rc);
  lifeline::cli::register_history_commands(app, rc);
  // What CLI11 says for a missing or unknown subcommand ("A subcommand is required") names
  // neither: say which word was not understood and list the subcommands; `help` is --help.
  std::string names;
  bool known = false;
  for (const CLI::App* sub : app.get_subcommands({})) {
    names += (names.empty() ? "" : ", ") + sub->get_name();
    known = known || (argc > 1 && sub->get_name() == argv[1]);
  }
  if (argc > 1 && std::string(argv[1]) == "help") {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  }
  if (argc == 1 || (argv[1][0] != '-' && !known)) {
    if (argc == 1)
      std::fprintf(stderr, "lifeline: a subcommand is required: %s (lifeline --help tells more)\n", names.c_str());
    else
      std::fprintf(stderr, "lifeline: unknown subcommand '%s'; the subcommands are: %s (lifeline --help tells more)\n",
                   argv[1], names.c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lifeline: %s\n", e.what());
    return 2;
  }
  return rc;
}
