// lifeline: the command-line entry point; dispatches to the subcommands in src/cli/.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <iostream>
#include <string>
#include <vector>

#include "cli/app.h"
#include "cli/cli_docs.h"

int main(int argc, char** argv) {
  // A closed output pipe (`lifeline history | head`) is a write error to report, never a kill:
  // a supervisor killed by SIGPIPE would leave its trainer unsupervised.
  ::signal(SIGPIPE, SIG_IGN);
  int rc = 0;
  std::unique_ptr<CLI::App> app_ptr = lifeline::cli::build_app(rc);
  CLI::App& app = *app_ptr;
  // Hidden (not in --help, not in the App, so not in the pages it generates): the build writes the
  // man pages and the bash completion with `lifeline --generate-docs=man|bash OUTPUT...`.
  if (argc > 1 && std::strncmp(argv[1], "--generate-docs", 15) == 0) {
    std::vector<std::string> args(argv + 1, argv + argc);
    return lifeline::cli::generate_docs(app, lifeline::cli::version(), args, std::cerr);
  }
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
