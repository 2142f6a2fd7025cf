#pragma once
// cli_docs: the man pages (roff) and the bash completion script, generated from the CLI11 App
// tree itself so that they cannot drift from the commands (issue 21). Pure functions of the App;
// `lifeline --generate-docs` (hidden) writes them at build time.
#include <CLI/CLI.hpp>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace lifeline::cli {

// Every command of the tree, depth first in definition order: {"lifeline"}, {"lifeline", "run"},
// ..., {"lifeline", "policy"}, {"lifeline", "policy", "check"}, ...
std::vector<std::vector<std::string>> command_paths(const CLI::App& app);

// "lifeline.1" for the root, "lifeline-policy-check.1" for {"lifeline", "policy", "check"}.
std::string man_page_file(const std::vector<std::string>& path);

// What the value of an option or positional names, for completion and the pages' metavariables:
// a directory (names ending in "dir", positional DIR, type name or validator DIR, the word DIR in
// the description), a file (names "policy", "timeline" or holding "file"; FILE or PATH likewise),
// a command line (positional "command"), or anything else (kNone; a CLI11 IsMember validator's
// choices complete as words). To mark a new path option, name it so or give it ->type_name("DIR").
enum class ValueKind { kNone, kDirectory, kFile, kCommand };
ValueKind value_kind(const CLI::Option& opt);

// File name -> roff text: one page per command of the tree. `version` goes into each page's
// footer; nothing in a page depends on the date or the machine (reproducible builds).
std::map<std::string, std::string> man_pages(const CLI::App& app, const std::string& version);

// The bash completion script: defines _<name> and `complete -F _<name> <name>`. Needs only bash's
// own compgen/compopt/complete (works without the bash-completion package).
std::string bash_completion(const CLI::App& app, const std::string& version);

// `--generate-docs=man OUTPUT...`: writes every page into the folder of the outputs, which must name
// exactly the pages of the tree (else nothing is written and the difference is named: a new
// subcommand must be added to lifeline_man_pages in src/cli/meson.build). `--generate-docs=bash OUTPUT`:
// writes the completion script. Returns the exit status (0, or 1 with a message on `err`).
int generate_docs(const CLI::App& app, const std::string& version, const std::vector<std::string>& args,
                  std::ostream& err);

}  // namespace lifeline::cli
