// Man pages and bash completion generated from the CLI11 App tree (issue 21): every option a page
// or the completion names comes from the App; only the prose about exit statuses, environment and
// files (docs/contract.md) is written here, per command.
#include "cli/cli_docs.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

namespace lifeline::cli {

namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// The App tree

std::vector<const CLI::App*> children(const CLI::App& app) {
  std::vector<const CLI::App*> out;
  for (const CLI::App* sub : app.get_subcommands({})) {
    if (!sub->get_name().empty()) out.push_back(sub);  // unnamed option groups are not commands
  }
  return out;
}

void walk(const CLI::App& app, std::vector<std::string> path, std::vector<std::pair<std::vector<std::string>, const CLI::App*>>& out) {
  path.push_back(app.get_name());
  out.emplace_back(path, &app);
  for (const CLI::App* sub : children(app)) walk(*sub, path, out);
}

std::vector<std::pair<std::vector<std::string>, const CLI::App*>> all_commands(const CLI::App& app) {
  std::vector<std::pair<std::vector<std::string>, const CLI::App*>> out;
  walk(app, {}, out);
  return out;
}

std::string join(const std::vector<std::string>& words, const std::string& sep, size_t from = 0) {
  std::string out;
  for (size_t i = from; i < words.size(); ++i) out += (i > from ? sep : "") + words[i];
  return out;
}

bool hidden(const CLI::Option& opt) { return opt.get_group().empty(); }
bool is_flag(const CLI::Option& opt) { return !opt.get_positional() && opt.get_items_expected_max() == 0; }
bool takes_many(const CLI::Option& opt) { return opt.get_items_expected_max() > 1; }

std::vector<const CLI::Option*> options_of(const CLI::App& app, bool positional) {
  std::vector<const CLI::Option*> out;
  for (const CLI::Option* opt : app.get_options()) {
    if (!hidden(*opt) && opt->get_positional() == positional && (positional || opt->nonpositional())) out.push_back(opt);
  }
  return out;
}

std::string positional_name(const CLI::Option& opt) { return opt.get_name(true); }

// "-v", "--verbose" in CLI order: short names first.
std::vector<std::string> option_names(const CLI::Option& opt) {
  std::vector<std::string> out;
  for (const auto& s : opt.get_snames()) out.push_back("-" + s);
  for (const auto& l : opt.get_lnames()) out.push_back("--" + l);
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

// The type name without its validators: "TEXT" of "TEXT:{auto,scontrol}".
std::string base_type(const CLI::Option& opt) { return split(opt.get_type_name(), ':')[0]; }

// What the validators add to the type name: "{auto,scontrol}", "INT in [1 - 4096]".
std::string validator_text(const CLI::Option& opt) {
  std::string full = opt.get_type_name();
  auto colon = full.find(':');
  return colon == std::string::npos ? "" : full.substr(colon + 1);
}

// The words of a CLI11 IsMember validator ("{a,b,c}" in the type name), if any.
std::vector<std::string> choices(const CLI::Option& opt) {
  std::string v = validator_text(opt);
  auto open = v.find('{');
  auto close = v.find('}', open == std::string::npos ? 0 : open);
  if (open == std::string::npos || close == std::string::npos) return {};
  std::vector<std::string> out;
  for (const auto& w : split(v.substr(open + 1, close - open - 1), ',')) {
    if (!w.empty()) out.push_back(w);
  }
  return out;
}

std::string metavar(const CLI::Option& opt) {
  if (opt.get_positional()) return positional_name(opt);
  switch (value_kind(opt)) {
    case ValueKind::kDirectory: return "DIR";
    case ValueKind::kFile: return "FILE";
    default: break;
  }
  std::string t = base_type(opt);
  return t.empty() ? "VALUE" : t;
}

// The root's description without a leading "lifeline: ".
std::string summary(const CLI::App& app) {
  std::string d = app.get_description();
  std::string prefix = app.get_name() + ": ";
  if (d.compare(0, prefix.size(), prefix) == 0) d = d.substr(prefix.size());
  return d;
}

// The text as --help shows it, ended with a period when it ends in a word.
std::string sentence(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  if (!s.empty() && std::isalnum(static_cast<unsigned char>(s.back()))) s += '.';
  return s;
}

// ---------------------------------------------------------------------------------------------
// roff

// Text for a roff text line: backslashes, hyphens and non-ASCII characters escaped, each line of
// `text` on a line of its own (joined with .br), a leading '.' or '\'' neutralised.
std::string roff(const std::string& text) {
  std::string out;
  bool line_start = true;
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      out += "\n.br\n";
      line_start = true;
      continue;
    }
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    line_start = false;
    if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      // UTF-8 -> \[uXXXX]; a byte that starts no valid sequence becomes U+FFFD.
      uint32_t cp = 0xFFFD;
      size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      if (len > 1 && i + len <= text.size()) {
        cp = c & (0xFF >> (len + 1));
        bool ok = true;
        for (size_t k = 1; k < len; ++k) {
          unsigned char cc = static_cast<unsigned char>(text[i + k]);
          ok = ok && (cc & 0xC0) == 0x80;
          cp = (cp << 6) | (cc & 0x3F);
        }
        if (ok) {
          i += len - 1;
        } else {
          cp = 0xFFFD;
        }
      }
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\[u%04X]", static_cast<unsigned>(cp));
      out += buf;
    }
  }
  return out;
}

std::string bold(const std::string& s) { return "\\fB" + roff(s) + "\\fR"; }
std::string italic(const std::string& s) { return "\\fI" + roff(s) + "\\fR"; }

// "lifeline-policy-check" for {"lifeline", "policy", "check"}.
std::string page_name(const std::vector<std::string>& path) { return join(path, "-"); }
std::string page_ref(const std::vector<std::string>& path) { return bold(page_name(path)) + "(1)"; }

// One synopsis of a command: its options, then its positionals, then "COMMAND ..." if it has subcommands.
std::string synopsis(const std::vector<std::string>& path, const CLI::App& app) {
  std::string s = bold(join(path, " "));
  for (const CLI::Option* opt : options_of(app, false)) {
    // -h/--help is on every command: the synopses of subcommands leave it out (OPTIONS has it).
    const auto& l = opt->get_lnames();
    if (path.size() > 1 && std::find(l.begin(), l.end(), "help") != l.end()) continue;
    std::string names;
    for (const auto& n : option_names(*opt)) names += (names.empty() ? "" : "|") + bold(n);
    std::string item = is_flag(*opt) ? names : names + "\\ " + italic(metavar(*opt));
    s += opt->get_required() ? " " + item : " [" + item + "]";
  }
  auto positionals = options_of(app, true);
  if (!positionals.empty() && app.get_positionals_at_end()) s += " " + bold("--");
  for (const CLI::Option* opt : positionals) {
    std::string item = italic(positional_name(*opt)) + (takes_many(*opt) ? "\\ ..." : "");
    s += opt->get_required() ? " " + item : " [" + item + "]";
  }
  if (!children(app).empty()) s += " " + italic("COMMAND") + " [" + italic("ARGS") + "]";
  return s;
}

// ---------------------------------------------------------------------------------------------
// Prose per command (docs/contract.md): the parts of a page the App cannot know.

struct Item {
  std::string tag;   // bold term of a tagged paragraph; empty: a plain paragraph
  std::string text;  // plain text (escaped when written)
};
using Sections = std::map<std::string, std::vector<Item>>;

const std::vector<Item> kOtherExit = {
    {"0", "success"},
    {"1", "the answer is no: verify finds no valid checkpoint, status or request finds no running supervisor, "
          "history finds no history"},
    {"2", "a usage or input error: a bad argument, a missing or unusable checkpoint directory, a bad policy file"},
};

const std::vector<Item> kRunExit = {
    {"0", "the trainer finished successfully; or the attempt was stopped and the job requeued (scontrol) or "
          "resubmitted (sbatch)"},
    {"75", "stopped and not requeued (--requeue local or none, restart.max_requeues spent, a requeue Slurm refused)"},
    {"requeue.exit_code", "stopped, for the site's RequeueExit (--requeue exit; 75 unless the policy says otherwise)"},
    {"2", "nothing started: a bad policy or argument, a checkpoint directory that holds another run's checkpoints "
          "(--resume-anyway overrides), a training command that is not an executable, an unsafe checkpoint "
          "directory, a full /dev/shm, a process of an earlier attempt that still holds the directory"},
    {"other", "the trainer's own failure status once restarts are exhausted (128 + N for a signal)"},
    {"", "A stop does not promise that the stop produced a checkpoint; the log, lifeline history and lifeline "
         "status then say why, the step the next attempt resumes from and the steps lost."},
};

const Item kDirRule = {"", "DIR is, in this order: the argument, the policy's checkpoint.dir, $LIFELINE_CKPT_DIR, "
                           "./checkpoints."};
const Item kCkptDirEnv = {"LIFELINE_CKPT_DIR", "the checkpoint directory when none is given (and the policy names none)"};

const std::vector<Item> kRunEnv = {
    kCkptDirEnv,
    {"LIFELINE_RUN_ID", "the run's name when --run-id is not given"},
    {"LIFELINE_RESUME_ANYWAY", "1: as --resume-anyway"},
    {"LIFELINE_PEER_TIMEOUT", "seconds to wait for every supervisor at the start (default 120)"},
    {"LIFELINE_PEER_SILENCE", "seconds without a message before a supervisor counts as lost (default 10)"},
    {"LIFELINE_PEER_PORT", "the leader's TCP port (default: any free one)"},
    {"SLURM_STEP_NUM_TASKS, SLURM_PROCID", "inside an srun step of more than one task, the defaults of --peers and "
                                           "--peer-index"},
    {"", "The training command gets: LIFELINE_CONTROL (the shared-memory control block), LIFELINE_CKPT_DIR "
         "(absolute; with a node-local tier the local directory), LIFELINE_RESUME_FROM (the checkpoint to resume "
         "from, empty when none), LIFELINE_RESUME_STEP, LIFELINE_ATTEMPT (0, 1, 2, ... across requeues), "
         "LIFELINE_LINEAGE (the same across requeues); with several supervisors LIFELINE_PEERS and "
         "LIFELINE_PEER_INDEX; with one supervisor per rank LIFELINE_RANK, LIFELINE_WORLD_SIZE, "
         "LIFELINE_LOCAL_RANK and LIFELINE_LOCAL_WORLD_SIZE (and RANK, WORLD_SIZE, LOCAL_RANK unless the job set "
         "them)."},
};

const std::vector<Item> kFiles = {
    {"DIR/step-NNNNNNNNNNNN/", "a committed checkpoint of that step, with its MANIFEST"},
    {"DIR/run.json", "the run whose checkpoints the directory holds: its name, its command, whether it completed"},
    {"DIR/history.jsonl", "the append-only history of the run's attempts (lifeline history)"},
    {"DIR/supervisor.json", "the running supervisor and its control block (lifeline status, lifeline request)"},
    {"DIR/lock, DIR/.writers.lock", "the supervisor's lock, and the lock every writer of a checkpoint holds shared"},
    {"DIR/tier.json", "a node-local tier's record (policy storage.local)"},
    {"/dev/shm/lifeline-UID-*", "the shared-memory control block between supervisor and trainer"},
};

const Item kDocs = {"", "docs/contract.md (the contract: commands, exit statuses, environment, JSON output), "
                        "docs/history.md, docs/protocol.md, docs/storage.md and policies/default.yaml in the "
                        "lifeline sources."};

Sections prose(const std::vector<std::string>& path) {
  Sections s;
  if (path.empty() || path[0] != "lifeline") return s;  // only lifeline's own tree has prose
  std::string cmd = join(path, " ", 1);
  if (cmd.empty()) {
    s["DESCRIPTION"] = {
        {"", "lifeline run -- TRAIN... launches the training command, traps the scheduler's SIGTERM and SIGUSR1, "
             "asks the trainer for a checkpoint through a shared-memory flag, waits until that checkpoint is durably "
             "committed, and requeues the job so that the next run resumes from the newest checkpoint that verifies. "
             "The other commands inspect and manage a checkpoint directory."},
        kDirRule,
    };
    s["EXIT STATUS"] = {{"", "lifeline run:"}};
    s["EXIT STATUS"].insert(s["EXIT STATUS"].end(), kRunExit.begin(), kRunExit.end() - 1);
    s["EXIT STATUS"].push_back({"", "Every other command:"});
    s["EXIT STATUS"].insert(s["EXIT STATUS"].end(), kOtherExit.begin(), kOtherExit.end());
    s["ENVIRONMENT"] = kRunEnv;
    s["FILES"] = kFiles;
  } else if (cmd == "run") {
    s["DESCRIPTION"] = {
        {"", "--requeue MODE is one of auto (scontrol inside a Slurm batch job, local outside), scontrol (requeue "
             "in place, same job id), sbatch (submit the same script again), exit (exit with the policy's "
             "requeue.exit_code, for sites with RequeueExit), local (restart in place, no scheduler) and none."},
        {"", "Durations (--grace, as in policy files): 45 (seconds), 90s, 500ms, 10min, 2h, 1d, 1.5h, or a sum of "
             "parts such as 1h30m; at most 365 days."},
        {"", "A checkpoint directory belongs to one run (DIR/run.json): a run of another --run-id, or a different "
             "command in the directory of a run that completed, is refused with exit 2 unless --resume-anyway."},
        {"", "In a Slurm jobscript, make lifeline the batch shell's process so that B: signals reach it: "
             "#SBATCH --signal=B:USR1@120 --requeue --open-mode=append, then exec lifeline run --policy policy.yaml "
             "-- ./train."},
        {"", "The checkpoint directory is --ckpt-dir, else the policy's checkpoint.dir, else $LIFELINE_CKPT_DIR, "
             "else ./checkpoints."},
    };
    s["EXIT STATUS"] = kRunExit;
    s["ENVIRONMENT"] = kRunEnv;
    s["FILES"] = kFiles;
  } else {
    s["EXIT STATUS"] = kOtherExit;
    if (path.size() == 2 && path[1] != "policy") {
      s["DESCRIPTION"] = {kDirRule};
      s["ENVIRONMENT"] = {kCkptDirEnv};
    }
  }
  s["SEE ALSO"] = {kDocs};
  return s;
}

void write_items(std::ostringstream& out, const std::vector<Item>& items) {
  for (const Item& item : items) {
    if (item.tag.empty()) {
      out << ".PP\n" << roff(item.text) << "\n";
    } else {
      out << ".TP\n" << bold(item.tag) << "\n" << roff(item.text) << "\n";
    }
  }
}

// One option's entry in OPTIONS: names and value, then what the App says about it.
void write_option(std::ostringstream& out, const CLI::Option& opt) {
  out << ".TP\n";
  if (opt.get_positional()) {
    out << italic(positional_name(opt)) << (takes_many(opt) ? " ..." : "") << "\n";
  } else {
    std::string names;
    for (const auto& n : option_names(opt)) names += (names.empty() ? "" : ", ") + bold(n);
    out << names << (is_flag(opt) ? "" : " " + italic(metavar(opt))) << "\n";
  }
  std::vector<std::string> lines;
  if (!opt.get_description().empty()) lines.push_back(sentence(opt.get_description()));
  std::string type = opt.get_type_name();
  if (!is_flag(opt) && !type.empty()) {
    auto words = choices(opt);
    if (!words.empty()) {
      lines.push_back("Type: " + base_type(opt) + ", one of: " + join(words, ", ") + ".");
    } else {
      std::string checks = validator_text(opt);
      lines.push_back("Type: " + base_type(opt) + (checks.empty() ? "" : " (" + checks + ")") + ".");
    }
  }
  if (!opt.get_default_str().empty()) lines.push_back("Default: " + opt.get_default_str() + ".");
  if (!opt.get_envname().empty()) lines.push_back("Environment: $" + opt.get_envname() + " when not given.");
  if (opt.get_required()) lines.push_back(opt.get_positional() ? "Required." : "Required option.");
  out << roff(join(lines, "\n")) << "\n";
}

std::string man_page(const std::vector<std::string>& path, const CLI::App& app, const std::string& version) {
  std::string name = page_name(path);
  std::string upper = name;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  Sections extra = prose(path);
  auto section_items = [&extra](const std::string& title) {
    auto it = extra.find(title);
    return it == extra.end() ? std::vector<Item>{} : it->second;
  };
  std::string root = path[0];
  std::ostringstream out;
  out << ".\\\" " << name << "(1): generated by `" << root << " --generate-docs=man` from " << root
      << "'s command-line definitions; do not edit.\n";
  // .TH title section date source manual: no date, so that the page is the same on every build.
  out << ".TH " << roff(upper) << " 1 \"\" \"" << roff(root + " " + version) << "\" \"" << roff(root + " manual")
      << "\"\n";
  out << ".nh\n.ad l\n";  // no hyphenation (option names), ragged right
  out << ".SH NAME\n" << roff(name) << " \\- " << roff(path.size() == 1 ? summary(app) : app.get_description())
      << "\n";

  out << ".SH SYNOPSIS\n";
  out << ".PP\n" << synopsis(path, app) << "\n";
  // A command with subcommands: the synopsis of each command below it that has no subcommands.
  std::vector<std::pair<std::vector<std::string>, const CLI::App*>> below;
  for (const CLI::App* sub : children(app)) walk(*sub, path, below);
  for (const auto& [p, a] : below) {
    if (children(*a).empty()) out << ".PP\n" << synopsis(p, *a) << "\n";
  }

  std::string first = sentence(path.size() == 1 ? summary(app) : app.get_description());
  if (!first.empty()) first[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(first[0])));
  out << ".SH DESCRIPTION\n.PP\n" << roff(first) << "\n";
  if (!app.get_footer().empty()) out << ".PP\n" << roff(app.get_footer()) << "\n";
  write_items(out, section_items("DESCRIPTION"));

  auto positionals = options_of(app, true);
  auto named = options_of(app, false);
  if (!positionals.empty() || !named.empty()) {
    out << ".SH OPTIONS\n";
    for (const CLI::Option* opt : positionals) write_option(out, *opt);
    for (const CLI::Option* opt : named) write_option(out, *opt);
  }

  if (!below.empty()) {
    out << ".SH COMMANDS\n";
    for (const auto& [p, a] : below) {
      out << ".TP\n" << bold(join(p, " ", path.size())) << "\n"
          << roff(sentence(a->get_description())) << "\n.br\nSee " << page_ref(p) << ".\n";
    }
  }

  auto exit_items = section_items("EXIT STATUS");
  if (!exit_items.empty()) {
    out << ".SH EXIT STATUS\n";
    write_items(out, exit_items);
  }

  std::vector<Item> env;
  for (const CLI::Option* opt : app.get_options()) {
    if (!hidden(*opt) && !opt->get_envname().empty()) {
      std::string what = opt->get_positional() ? positional_name(*opt) : option_names(*opt).back();
      env.push_back({opt->get_envname(), "the value of " + what + " when it is not given"});
    }
  }
  auto env_prose = section_items("ENVIRONMENT");
  env.insert(env.end(), env_prose.begin(), env_prose.end());
  if (!env.empty()) {
    out << ".SH ENVIRONMENT\n";
    write_items(out, env);
  }

  auto files = section_items("FILES");
  if (!files.empty()) {
    out << ".SH FILES\n";
    write_items(out, files);
  }

  out << ".SH SEE ALSO\n.PP\n";
  std::vector<std::string> refs;
  if (path.size() > 1) refs.push_back(page_ref({root}));
  if (path.size() > 2) refs.push_back(page_ref(std::vector<std::string>(path.begin(), path.end() - 1)));
  for (const auto& [p, a] : below) refs.push_back(page_ref(p));
  if (path.size() > 1 && below.empty()) {
    // Siblings: the other commands of the same parent.
    const CLI::App* parent = app.get_parent();
    if (parent) {
      for (const CLI::App* sib : children(*parent)) {
        if (sib == &app) continue;
        auto p = std::vector<std::string>(path.begin(), path.end() - 1);
        p.push_back(sib->get_name());
        refs.push_back(page_ref(p));
      }
    }
  }
  out << join(refs, ",\n") << (refs.empty() ? "" : "\n");
  write_items(out, section_items("SEE ALSO"));
  return out.str();
}

// ---------------------------------------------------------------------------------------------
// bash

// A word list for bash: the words are option and command names (no quoting needed); checked anyway.
std::string words(const std::vector<std::string>& w) {
  std::string s = join(w, " ");
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ' ' || c == '.' ||
          c == '+' || c == ':' || c == '/' || c == ',' || c == '@'))
      throw std::invalid_argument("a name the completion script cannot hold unquoted: " + s);
  }
  return s;
}

std::string path_handler(ValueKind kind, const std::string& fn) {
  switch (kind) {
    case ValueKind::kDirectory: return fn + "_paths -d \"$3\"";
    case ValueKind::kFile: return fn + "_paths -f \"$3\"";
    case ValueKind::kCommand: return fn + "_commands \"$3\"";
    case ValueKind::kNone: break;
  }
  return "";
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::vector<std::vector<std::string>> command_paths(const CLI::App& app) {
  std::vector<std::vector<std::string>> out;
  for (const auto& [path, a] : all_commands(app)) out.push_back(path);
  return out;
}

std::string man_page_file(const std::vector<std::string>& path) { return page_name(path) + ".1"; }

ValueKind value_kind(const CLI::Option& opt) {
  if (is_flag(opt)) return ValueKind::kNone;
  for (const auto& part : split(opt.get_type_name(), ':')) {
    if (part == "DIR") return ValueKind::kDirectory;
    if (part == "FILE" || part == "PATH(existing)" || part == "PATH(non-existing)" || part == "PATH")
      return ValueKind::kFile;
  }
  if (opt.get_positional()) {
    std::string p = positional_name(opt);
    if (p == "DIR") return ValueKind::kDirectory;
    if (p == "FILE" || p == "PATH") return ValueKind::kFile;
    if (lower(p) == "command") return ValueKind::kCommand;
    return ValueKind::kNone;
  }
  for (const auto& l : opt.get_lnames()) {
    std::string n = lower(l);
    if (n.size() >= 3 && n.compare(n.size() - 3, 3, "dir") == 0) return ValueKind::kDirectory;
    if (n == "policy" || n == "timeline" || n.find("file") != std::string::npos || n.find("path") != std::string::npos)
      return ValueKind::kFile;
  }
  // Else a metavariable in the description, as a word of its own: "(PATH: its checkpoint dir)".
  std::string word;
  for (char c : opt.get_description() + " ") {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$') {
      word += c;
      continue;
    }
    if (word == "DIR") return ValueKind::kDirectory;
    if (word == "FILE" || word == "PATH") return ValueKind::kFile;
    word.clear();
  }
  return ValueKind::kNone;
}

std::map<std::string, std::string> man_pages(const CLI::App& app, const std::string& version) {
  std::map<std::string, std::string> out;
  for (const auto& [path, a] : all_commands(app)) out[man_page_file(path)] = man_page(path, *a, version);
  return out;
}

std::string bash_completion(const CLI::App& app, const std::string& version) {
  const std::string name = app.get_name();
  std::string fn = "_";
  for (char c : name) fn += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  auto commands = all_commands(app);
  std::ostringstream spec, values, positionals;
  for (const auto& [path, a] : commands) {
    std::string key = join(path, " ", 1);
    std::vector<std::string> subs, opts, valopts;
    for (const CLI::App* sub : children(*a)) subs.push_back(sub->get_name());
    for (const CLI::Option* opt : options_of(*a, false)) {
      for (const auto& n : option_names(*opt)) {
        opts.push_back(n);
        if (!is_flag(*opt)) valopts.push_back(n);
      }
      if (is_flag(*opt)) continue;
      std::string handler = path_handler(value_kind(*opt), fn);
      auto w = choices(*opt);
      if (handler.empty() && !w.empty()) handler = "COMPREPLY=($(compgen -W \"" + words(w) + "\" -- \"$3\"))";
      if (handler.empty()) continue;
      for (const auto& n : option_names(*opt)) values << "    \"" << words({key}) << "|" << n << "\") " << handler << " ;;\n";
    }
    auto pos = options_of(*a, true);
    for (size_t i = 0; i < pos.size(); ++i) {
      ValueKind kind = value_kind(*pos[i]);
      bool last_many = i + 1 == pos.size() && takes_many(*pos[i]);
      if (kind == ValueKind::kCommand) {
        // The command word, then its arguments (files).
        positionals << "    \"" << words({key}) << "|" << i << "\") " << fn << "_commands \"$3\" ;;\n";
        if (last_many) positionals << "    \"" << words({key}) << "|\"*) " << fn << "_paths -f \"$3\" ;;\n";
        continue;
      }
      std::string handler = path_handler(kind, fn);
      if (handler.empty()) {
        auto w = choices(*pos[i]);
        if (w.empty()) continue;
        handler = "COMPREPLY=($(compgen -W \"" + words(w) + "\" -- \"$3\"))";
      }
      positionals << "    \"" << words({key}) << "|" << (last_many ? "\"*" : std::to_string(i) + "\"") << ") " << handler
                  << " ;;\n";
    }
    spec << "    \"" << words({key}) << "\") subs=\"" << words(subs) << "\"; opts=\"" << words(opts) << "\"; valopts=\""
         << words(valopts) << "\" ;;\n";
  }

  std::ostringstream s;
  s << "# bash completion for " << name << " " << version << ": generated from its command-line definitions by\n"
    << "# `" << name << " --generate-docs=bash FILE`; do not edit. Needs only bash's compgen, compopt and complete\n"
    << "# (the bash-completion package is not required). Source it, or install it as\n"
    << "# $datadir/bash-completion/completions/" << name << ".\n\n";
  s << "# " << fn << "_spec PATH: sets subs, opts and valopts (the options taking a value) of the command PATH\n"
    << "# (\"\" for " << name << " itself, \"policy check\" for " << name << " policy check).\n"
    << fn << "_spec() {\n  case \"$1\" in\n"
    << spec.str() << "    *) subs=\"\"; opts=\"\"; valopts=\"\" ;;\n  esac\n}\n\n";
  s << "# " << fn << "_paths -d|-f WORD: directories, or files and directories, starting with WORD.\n"
    << fn << "_paths() {\n  local IFS=$'\\n'\n  compopt -o filenames 2>/dev/null\n"
    << "  COMPREPLY=($(compgen \"$1\" -- \"$2\"))\n}\n\n";
  s << "# " << fn << "_commands WORD: commands starting with WORD (a path when it holds a '/').\n"
    << fn << "_commands() {\n  if [[ $1 == */* ]]; then " << fn << "_paths -f \"$1\"; return; fi\n"
    << "  local IFS=$'\\n'\n  compopt -o filenames 2>/dev/null\n  COMPREPLY=($(compgen -c -- \"$1\"))\n}\n\n";
  s << "# " << fn << "_value PATH OPTION WORD: the values OPTION of the command PATH takes.\n"
    << fn << "_value() {\n  case \"$1|$2\" in\n" << values.str() << "  esac\n}\n\n";
  s << "# " << fn << "_positional PATH INDEX WORD: the positional argument INDEX (from 0) of the command PATH.\n"
    << fn << "_positional() {\n  case \"$1|$2\" in\n" << positionals.str() << "  esac\n}\n\n";
  s << "# " << fn << ": the completion function (COMP_WORDS, COMP_CWORD -> COMPREPLY).\n"
    << fn << "() {\n"
    << "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev path=\"\" subs opts valopts w i npos=0\n"
    << "  COMPREPLY=()\n"
    << "  " << fn << "_spec \"\"\n"
    << "  # The words before the cursor: which (sub)command, how many positionals, whether -- was passed.\n"
    << "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
    << "    w=\"${COMP_WORDS[i]}\"\n"
    << "    if [[ $w == -- ]]; then\n"
    << "      # After --: a command line of its own (the training command, then its arguments).\n"
    << "      if ((i == COMP_CWORD - 1)); then " << fn << "_commands \"$cur\"; else " << fn << "_paths -f \"$cur\"; fi\n"
    << "      return 0\n"
    << "    fi\n"
    << "    if [[ $w == -* ]]; then\n"
    << "      if [[ \" $valopts \" == *\" $w \"* ]]; then\n"
    << "        ((i += 1))\n"
    << "        if [[ ${COMP_WORDS[i]} == = ]]; then ((i += 1)); fi\n"
    << "      fi\n"
    << "      continue\n"
    << "    fi\n"
    << "    if [[ -n $subs && \" $subs \" == *\" $w \"* ]]; then\n"
    << "      path=\"${path:+$path }$w\"\n"
    << "      npos=0\n"
    << "      " << fn << "_spec \"$path\"\n"
    << "      continue\n"
    << "    fi\n"
    << "    ((npos += 1))\n"
    << "  done\n"
    << "  # The value of an option: --opt VALUE, or --opt=VALUE (bash splits words at '=').\n"
    << "  prev=\"\"\n"
    << "  if ((COMP_CWORD > 1)); then prev=\"${COMP_WORDS[COMP_CWORD - 1]}\"; fi\n"
    << "  if [[ $cur == = && \" $valopts \" == *\" $prev \"* ]]; then\n"
    << "    " << fn << "_value \"$path\" \"$prev\" \"\"\n"
    << "    return 0\n"
    << "  fi\n"
    << "  if [[ $prev == = ]] && ((COMP_CWORD > 2)); then prev=\"${COMP_WORDS[COMP_CWORD - 2]}\"; fi\n"
    << "  if [[ -n $prev && \" $valopts \" == *\" $prev \"* ]]; then\n"
    << "    " << fn << "_value \"$path\" \"$prev\" \"$cur\"\n"
    << "    return 0\n"
    << "  fi\n"
    << "  if [[ $cur == --*=* ]]; then\n"
    << "    # '=' is not a word break here: complete the value and keep the option in front of it.\n"
    << "    w=\"${cur%%=*}\"\n"
    << "    " << fn << "_value \"$path\" \"$w\" \"${cur#*=}\"\n"
    << "    COMPREPLY=(\"${COMPREPLY[@]/#/$w=}\")\n"
    << "    return 0\n"
    << "  fi\n"
    << "  if [[ $cur == -* ]]; then\n"
    << "    COMPREPLY=($(compgen -W \"$opts\" -- \"$cur\"))\n"
    << "  elif [[ -n $subs ]]; then\n"
    << "    COMPREPLY=($(compgen -W \"$subs\" -- \"$cur\"))\n"
    << "  else\n"
    << "    " << fn << "_positional \"$path\" \"$npos\" \"$cur\"\n"
    << "  fi\n"
    << "  return 0\n"
    << "}\n\n"
    << "complete -F " << fn << " " << name << "\n";
  return s.str();
}

int generate_docs(const CLI::App& app, const std::string& version, const std::vector<std::string>& args,
                  std::ostream& err) {
  const std::string me = app.get_name() + " --generate-docs";
  std::string mode;
  std::vector<std::string> outputs;
  if (!args.empty() && args[0].rfind("--generate-docs=", 0) == 0) {
    mode = args[0].substr(16);
    outputs.assign(args.begin() + 1, args.end());
  } else if (args.size() >= 2) {
    mode = args[1];
    outputs.assign(args.begin() + 2, args.end());
  }
  if ((mode != "man" && mode != "bash") || outputs.empty() || (mode == "bash" && outputs.size() != 1)) {
    err << me << ": usage: " << app.get_name() << " --generate-docs=man DIR | --generate-docs=man PAGE.1... | "
        << "--generate-docs=bash FILE\n";
    return 1;
  }
  try {
    if (mode == "bash") {
      write_file(outputs[0], bash_completion(app, version));
      return 0;
    }
    auto pages = man_pages(app, version);
    std::error_code ec;
    std::string dir;
    if (outputs.size() == 1 && fs::is_directory(outputs[0], ec)) {
      dir = outputs[0];
    } else {
      // The outputs meson expects: exactly the pages of the tree, all in one folder.
      std::set<std::string> expected, have;
      for (const auto& out : outputs) {
        fs::path p(out);
        std::string parent = p.parent_path().string();
        if (!dir.empty() && parent != dir) {
          err << me << ": every page must go into one folder (" << dir << ", " << parent << ")\n";
          return 1;
        }
        dir = parent.empty() ? "." : parent;
        expected.insert(p.filename().string());
      }
      for (const auto& [file, text] : pages) have.insert(file);
      std::vector<std::string> missing, extra;
      std::set_difference(have.begin(), have.end(), expected.begin(), expected.end(), std::back_inserter(missing));
      std::set_difference(expected.begin(), expected.end(), have.begin(), have.end(), std::back_inserter(extra));
      if (!missing.empty() || !extra.empty()) {
        err << me << ": the man pages the build expects differ from the commands of " << app.get_name() << ":\n";
        if (!missing.empty())
          err << "  commands without a page in the build's list: " << join(missing, " ")
              << "\n  (add them to lifeline_man_pages in src/cli/meson.build)\n";
        if (!extra.empty())
          err << "  pages in the build's list that no command has: " << join(extra, " ")
              << "\n  (remove them from lifeline_man_pages in src/cli/meson.build)\n";
        return 1;
      }
    }
    for (const auto& [file, text] : pages) write_file((fs::path(dir) / file).string(), text);
    return 0;
  } catch (const std::exception& e) {
    err << me << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace lifeline::cli
