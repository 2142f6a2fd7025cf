// The man pages and bash completion generated from the CLI definitions (src/cli/cli_docs.h,
// issue 21): a page for every command naming every option, pages groff renders without warnings,
// completion that really completes in bash (without the bash-completion package), and the files
// the build installs equal to what the binary generates now.
#include <doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli/app.h"
#include "cli/cli_docs.h"
#include "support/process.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::cli;
using namespace lifeline::test;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// An option name as the pages write it (roff: every '-' escaped).
std::string roff_name(const std::string& name) {
  std::string out;
  for (char c : name) out += c == '-' ? std::string("\\-") : std::string(1, c);
  return out;
}

const CLI::App* find_command(const CLI::App& app, const std::vector<std::string>& path) {
  const CLI::App* a = &app;
  for (size_t i = 1; i < path.size(); ++i) a = a->get_subcommand(path[i]);
  return a;
}

const std::string kBuildDir = LIFELINE_BUILD_DIR;
const std::string kCompletion = kBuildDir + "/src/cli/completion/lifeline";
const std::string kManDir = kBuildDir + "/src/cli";

// Runs the completion function of `script` in a fresh bash (no rc files, so no bash-completion)
// with COMP_WORDS = words and the cursor on the last word; returns COMPREPLY, sorted.
std::vector<std::string> complete(const std::string& script, const std::vector<std::string>& words) {
  std::vector<std::string> argv = {
      "/bin/bash", "--norc", "--noprofile", "-c",
      "source \"$1\" || exit 99; shift; COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1));"
      " COMP_LINE=\"${COMP_WORDS[*]}\"; COMP_POINT=${#COMP_LINE}; _lifeline || exit 98;"
      " if ((${#COMPREPLY[@]})); then printf '%s\\n' \"${COMPREPLY[@]}\"; fi",
      "bash", script};
  argv.insert(argv.end(), words.begin(), words.end());
  std::string out;
  int status = run(argv, &out);
  REQUIRE_MESSAGE(status == 0, "bash exited " << status << ": " << out);
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  return lines;
}

using Words = std::vector<std::string>;

}  // namespace

TEST_CASE("every command of the CLI has a man page, and lifeline.1 lists every command") {
  int rc = 0;
  auto app = build_app(rc);
  auto pages = man_pages(*app, version());
  auto paths = command_paths(*app);
  CHECK(pages.size() == paths.size());
  // The commands docs/contract.md lists, nested ones included.
  for (const char* page : {"lifeline.1", "lifeline-run.1", "lifeline-checkpoints.1", "lifeline-verify.1",
                           "lifeline-gc.1", "lifeline-history.1", "lifeline-status.1", "lifeline-request.1",
                           "lifeline-policy.1", "lifeline-policy-check.1", "lifeline-policy-explain.1"}) {
    CHECK_MESSAGE(pages.count(page) == 1, page);
  }
  const std::string& root = pages.at("lifeline.1");
  for (const char* section : {".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH COMMANDS", ".SH EXIT STATUS",
                              ".SH ENVIRONMENT", ".SH FILES", ".SH SEE ALSO"}) {
    CHECK_MESSAGE(contains(root, section), section);
  }
  for (const auto& path : paths) {
    REQUIRE(pages.count(man_page_file(path)) == 1);
    if (path.size() > 1) {
      std::string ref = man_page_file(path);
      ref = "\\fB" + roff_name(ref.substr(0, ref.size() - 2)) + "\\fR(1)";
      CHECK_MESSAGE(contains(root, ref), ref);
    }
  }
  // The run page carries run's own exit statuses and the trainer's environment.
  const std::string& run_page = pages.at("lifeline-run.1");
  CHECK(contains(run_page, "\\fB75\\fR"));
  CHECK(contains(run_page, "LIFELINE_RESUME_FROM"));
}

TEST_CASE("every option of every command appears in its command's page, with its description") {
  int rc = 0;
  auto app = build_app(rc);
  auto pages = man_pages(*app, version());
  int options = 0;
  for (const auto& path : command_paths(*app)) {
    const CLI::App* cmd = find_command(*app, path);
    REQUIRE(cmd != nullptr);
    const std::string& page = pages.at(man_page_file(path));
    for (const CLI::Option* opt : cmd->get_options()) {
      if (opt->get_group().empty()) continue;  // hidden
      ++options;
      if (opt->get_positional()) {
        CHECK_MESSAGE(contains(page, "\\fI" + opt->get_name(true) + "\\fR"), man_page_file(path) << ": " << opt->get_name(true));
      } else {
        for (const auto& l : opt->get_lnames())
          CHECK_MESSAGE(contains(page, "\\fB" + roff_name("--" + l) + "\\fR"), man_page_file(path) << ": --" << l);
        for (const auto& s : opt->get_snames())
          CHECK_MESSAGE(contains(page, "\\fB" + roff_name("-" + s) + "\\fR"), man_page_file(path) << ": -" << s);
      }
      // The first words of the description (escaped as the page escapes them).
      std::string desc = opt->get_description().substr(0, 12);
      if (!desc.empty()) {
        CHECK_MESSAGE(contains(page, roff_name(desc)), man_page_file(path) << ": " << desc);
      }
    }
  }
  CHECK(options > 30);  // the walk really saw the options
  // A few that the contract names, on the right pages.
  CHECK(contains(pages.at("lifeline-run.1"), "\\fB\\-\\-ckpt\\-dir\\fR \\fIDIR\\fR"));
  CHECK(contains(pages.at("lifeline-run.1"), "\\fB\\-\\-policy\\fR \\fIFILE\\fR"));
  CHECK(contains(pages.at("lifeline-run.1"), "one of: auto, scontrol, sbatch, exit, local, none"));
  CHECK(contains(pages.at("lifeline-policy-explain.1"), "\\fB\\-\\-checkpoint\\-size\\fR"));
  CHECK(contains(pages.at("lifeline-gc.1"), "\\fB\\-y\\fR, \\fB\\-\\-yes\\fR"));
}

TEST_CASE("a page shows what the App says: defaults, environment variables, required options, footers, nested commands") {
  CLI::App app{"demo: a demonstration", "demo"};
  int level = 3;
  std::string dir, name;
  app.footer("A footer for every page of demo.");
  auto* a = app.add_subcommand("alpha", "the first command");
  a->add_option("--level", level, "how much")->capture_default_str();
  a->add_option("--work-dir", dir, "where to work")->envname("DEMO_WORK_DIR");
  a->add_option("--name", name, "what to call it")->required();
  a->add_option("--start", name, "start from PATH (a checkpoint)");
  a->add_option("--label", name, "a label, also $DEMO_DIR");  // a variable named ..._DIR is no DIR
  auto* b = a->add_subcommand("beta", "a command inside alpha");
  b->add_flag("--deep", "goes deeper");
  auto pages = man_pages(app, "9.9.9");
  REQUIRE(pages.size() == 3);
  REQUIRE(pages.count("demo-alpha-beta.1") == 1);
  const std::string& alpha = pages.at("demo-alpha.1");
  CHECK(contains(alpha, "Default: 3."));
  CHECK(contains(alpha, "Environment: $DEMO_WORK_DIR when not given."));
  CHECK(contains(alpha, ".SH ENVIRONMENT\n.TP\n\\fBDEMO_WORK_DIR\\fR"));
  CHECK(contains(alpha, "Required option."));
  CHECK(contains(alpha, " \\fB\\-\\-name\\fR\\ \\fITEXT\\fR"));  // required: not in brackets in the synopsis
  CHECK(contains(alpha, "[\\fB\\-\\-level\\fR\\ \\fIINT\\fR]"));
  CHECK(contains(alpha, "\\fBdemo\\-alpha\\-beta\\fR(1)"));
  CHECK(contains(pages.at("demo.1"), "A footer for every page of demo."));
  CHECK(contains(pages.at("demo-alpha-beta.1"), "\\fB\\-\\-deep\\fR"));
  CHECK(contains(pages.at("demo.1"), ".TH DEMO 1 \"\" \"demo 9.9.9\""));
  // Completion: the nested command and the directory option.
  std::string script = bash_completion(app, "9.9.9");
  CHECK(contains(script, "\"alpha\") subs=\"beta\";"));
  CHECK(contains(script, "\"alpha|--work-dir\") _demo_paths -d"));
  CHECK(contains(script, "\"alpha|--start\") _demo_paths -f"));
  CHECK(!contains(script, "\"alpha|--label\")"));
  CHECK(contains(script, "complete -F _demo demo"));
}

TEST_CASE("the pages carry the version and no date: generating twice gives the same bytes") {
  int rc = 0;
  auto app = build_app(rc);
  auto first = man_pages(*app, version());
  auto again = man_pages(*build_app(rc), version());
  CHECK(first == again);
  CHECK(bash_completion(*app, version()) == bash_completion(*build_app(rc), version()));
  CHECK(version() == LIFELINE_PROJECT_VERSION);
  for (const auto& [file, text] : first) {
    auto th = text.find("\n.TH ");
    REQUIRE_MESSAGE(th != std::string::npos, file);
    std::string line = text.substr(th + 1, text.find('\n', th + 1) - th - 1);
    CHECK_MESSAGE(contains(line, " 1 \"\" \"lifeline " + version() + "\""), line);  // empty date field
    CHECK_MESSAGE(!contains(text, "2026"), file);
  }
}

TEST_CASE("groff renders every man page without a warning") {
  if (!fs::exists("/usr/bin/groff")) {
    MESSAGE("skipped: /usr/bin/groff is missing (Debian package groff-base)");
    return;
  }
  int rc = 0;
  auto app = build_app(rc);
  TempDir tmp;
  for (const auto& [file, text] : man_pages(*app, version())) {
    std::ofstream(tmp / file) << text;
    std::string out;
    int status = run({"/usr/bin/groff", "-man", "-Tutf8", "-ww", "-z", tmp / file}, &out);
    CHECK_MESSAGE(status == 0, file);
    CHECK_MESSAGE(out.empty(), file << ": " << out);
    // And the text comes out: the option names, readable.
    std::string shown;
    run({"/usr/bin/groff", "-man", "-Tascii", "-P-c", "-P-b", "-P-u", tmp / file}, &shown);
    CHECK_MESSAGE(contains(shown, "SYNOPSIS"), file);
  }
  if (fs::exists("/usr/bin/man")) {
    std::string out;
    int status = run({"/usr/bin/man", "--warnings", "-l", "-Tutf8", tmp / "lifeline-run.1"}, &out);
    CHECK(status == 0);
    CHECK_MESSAGE(!contains(out, "warning"), out);
  }
}

TEST_CASE("bash completion completes subcommands, options, option values and paths, without bash-completion") {
  int rc = 0;
  TempDir tmp;
  const std::string kScript = tmp / "completion.bash";
  std::ofstream(kScript) << bash_completion(*build_app(rc), version());
  fs::create_directory(tmp / "part1");
  fs::create_directory(tmp / "part2");
  std::ofstream(tmp / "parx") << "a file";
  std::ofstream(tmp / "policy.yaml") << "version: 1\n";

  CHECK(complete(kScript, {"lifeline", "ru"}) == Words{"run"});
  CHECK(complete(kScript, {"lifeline", "c"}) == Words{"checkpoints"});
  CHECK(complete(kScript, {"lifeline", "--v"}) == Words{"--version"});
  CHECK(complete(kScript, {"lifeline", "run", "--ck"}) == Words{"--ckpt-dir"});
  CHECK(complete(kScript, {"lifeline", "run", "--p"}) == Words{"--peer-index", "--peers", "--policy"});
  // Nested: policy's own subcommands, then explain's options.
  CHECK(complete(kScript, {"lifeline", "policy", ""}) == Words{"check", "explain"});
  CHECK(complete(kScript, {"lifeline", "policy", "explain", "--wr"}) == Words{"--write-speed"});
  CHECK(complete(kScript, {"lifeline", "policy", "check", tmp / "pol"}) == Words{tmp / "policy.yaml"});
  // Options whose value is a directory complete directories only; files complete files.
  CHECK(complete(kScript, {"lifeline", "run", "--ckpt-dir", tmp / "pa"}) == Words{tmp / "part1", tmp / "part2"});
  CHECK(complete(kScript, {"lifeline", "run", "--ckpt-dir", "=", tmp / "pa"}) == Words{tmp / "part1", tmp / "part2"});
  CHECK(complete(kScript, {"lifeline", "run", "--policy", tmp / "po"}) == Words{tmp / "policy.yaml"});
  CHECK(complete(kScript, {"lifeline", "checkpoints", tmp / "pa"}) == Words{tmp / "part1", tmp / "part2"});
  CHECK(complete(kScript, {"lifeline", "checkpoints", "--json", tmp / "pa"}) == Words{tmp / "part1", tmp / "part2"});
  CHECK(complete(kScript, {"lifeline", "gc", "--policy", tmp / "po"}) == Words{tmp / "policy.yaml"});
  // A value after an option that takes one is not taken for a subcommand or positional.
  CHECK(complete(kScript, {"lifeline", "run", "--ckpt-dir", tmp.path(), "--qu"}) == Words{"--quiet"});
  // IsMember choices.
  CHECK(complete(kScript, {"lifeline", "run", "--requeue", "s"}) == Words{"sbatch", "scontrol"});
  // After `--`: the training command, then files.
  Words commands = complete(kScript, {"lifeline", "run", "--", "bas"});
  CHECK(std::find(commands.begin(), commands.end(), "bash") != commands.end());
  CHECK(complete(kScript, {"lifeline", "run", "--ckpt-dir", tmp.path(), "--", "/bin/bash", tmp / "pa"}) ==
        Words{tmp / "part1", tmp / "part2", tmp / "parx"});
  CHECK(complete(kScript, {"lifeline", "run", "--", "python3", "--ck"}).empty());  // the trainer's, not lifeline's

  // The script registers itself for `lifeline`.
  std::string out;
  CHECK(run({"/bin/bash", "--norc", "--noprofile", "-c", "source \"$1\" && complete -p lifeline", "bash", kScript},
            &out) == 0);
  CHECK(contains(out, "complete -F _lifeline lifeline"));
}

// What needs the built binary and the build's generated files: suite e2e (the sanitizer build of
// scripts/test.sh builds and runs only the unit tests).
TEST_SUITE("built") {

TEST_CASE("the man pages and completion in the build dir equal what the binary generates now") {
  int rc = 0;
  auto app = build_app(rc);
  // What the code generates...
  for (const auto& [file, text] : man_pages(*app, version())) {
    bool same = read(kManDir + "/" + file) == text;
    CHECK_MESSAGE(same, file << " in the build dir differs from what the code generates");
  }
  bool same_completion = read(kCompletion) == bash_completion(*app, version());
  CHECK_MESSAGE(same_completion, kCompletion << " differs from what the code generates");
  // ...and what the installed binary writes.
  TempDir tmp;
  std::string out;
  REQUIRE(run({binary("LIFELINE_BIN"), "--generate-docs=man", tmp.path()}, &out) == 0);
  REQUIRE(run({binary("LIFELINE_BIN"), "--generate-docs=bash", tmp / "completion"}, &out) == 0);
  int pages = 0;
  for (const auto& entry : fs::directory_iterator(tmp.path())) {
    std::string name = entry.path().filename().string();
    if (name == "completion") continue;
    ++pages;
    bool same = read(entry.path().string()) == read(kManDir + "/" + name);
    CHECK_MESSAGE(same, name << ": the binary writes another page than the build dir holds");
  }
  CHECK(pages == static_cast<int>(command_paths(*app).size()));
  bool same = read(tmp / "completion") == read(kCompletion);
  CHECK_MESSAGE(same, "the binary writes another completion script than the build dir holds");
  CHECK(complete(kCompletion, {"lifeline", "policy", "ex"}) == Words{"explain"});  // the built script itself
}

TEST_CASE("the generator fails, naming the difference, when the build's list of pages differs from the commands") {
  TempDir tmp;
  std::string out;
  // A list without lifeline-gc.1 (a new subcommand meson does not know) and with a page no command has.
  std::vector<std::string> argv = {binary("LIFELINE_BIN"), "--generate-docs=man"};
  int rc = 0;
  auto app = build_app(rc);
  for (const auto& path : command_paths(*app)) {
    if (man_page_file(path) != "lifeline-gc.1") argv.push_back(tmp / man_page_file(path));
  }
  argv.push_back(tmp / "lifeline-gone.1");
  CHECK(run(argv, &out) == 1);
  CHECK(contains(out, "lifeline-gc.1"));
  CHECK(contains(out, "lifeline-gone.1"));
  CHECK(contains(out, "src/cli/meson.build"));
  CHECK(fs::is_empty(tmp.path()));  // nothing written
  // The pure function says the same.
  std::ostringstream err;
  std::vector<std::string> args(argv.begin() + 1, argv.end());
  CHECK(generate_docs(*app, version(), args, err) == 1);
  CHECK(contains(err.str(), "lifeline-gc.1"));
}

TEST_CASE("--version prints the meson project version; --generate-docs stays out of --help") {
  std::string out;
  CHECK(run({binary("LIFELINE_BIN"), "--version"}, &out) == 0);
  CHECK(out == std::string("lifeline ") + LIFELINE_PROJECT_VERSION + "\n");
  CHECK(run({binary("LIFELINE_BIN"), "--help"}, &out) == 0);
  CHECK(contains(out, "run"));
  CHECK(!contains(out, "generate-docs"));
}

}  // TEST_SUITE("built")
