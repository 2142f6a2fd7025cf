// `lifeline policy check FILE` and `lifeline policy explain FILE [...]`: validate a policy
// file, and say in plain words what it will do to a run.
#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "cli/commands.h"
#include "policy/explain.h"
#include "policy/policy.h"
#include "policy/units.h"

namespace lifeline::cli {
namespace {

// Re-flows each paragraph of text to lines of at most `width` bytes.
std::string wrap(const std::string& text, size_t width = 88) {
  std::string out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string word;
    size_t col = 0;
    while (words >> word) {
      if (col > 0 && col + 1 + word.size() > width) {
        out += '\n';
        col = 0;
      } else if (col > 0) {
        out += ' ';
        ++col;
      }
      out += word;
      col += word.size();
    }
    out += '\n';
  }
  return out;
}

// The options of `policy explain` as typed; unset = not given.
struct ExplainOptions {
  std::optional<std::string> checkpoint_size;        // SIZE, e.g. 2GiB
  std::optional<std::string> run_time;               // DURATION, e.g. 3d
  std::optional<std::string> interruptions_per_day;  // number >= 0
  std::optional<std::string> write_speed;            // SIZE per second, e.g. 1GiB or 500MB/s
  std::optional<std::string> step_time;              // DURATION of one training step
};

// Storage the parsed command-line values are written into; lives as long as the App.
struct PolicyArgs {
  std::string check_file;
  std::string explain_file;
  ExplainOptions explain;
};

double parse_rate(const std::string& text) {
  double v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end || !std::isfinite(v) || v < 0)
    throw std::invalid_argument("expected a number of interruptions per day (0 or more), got '" +
                                text + "'");
  return v;
}

// The body of `policy check`: writes to out/err, returns the exit status (0 ok, 2 bad file).
int run_policy_check(const std::string& file, std::ostream& out, std::ostream& err) {
  try {
    std::vector<std::string> warnings;
    Policy p = load_policy_file(file, warnings);
    for (const auto& w : warnings) err << w << '\n';
    out << file << ": ok\n" << wrap(summarize_policy(p));
    return 0;
  } catch (const PolicyError& e) {
    err << e.what() << '\n';
    return 2;
  }
}

// The body of `policy explain`: writes to out/err, returns the exit status (0 ok, 2 bad file or option).
int run_policy_explain(const std::string& file, const ExplainOptions& options, std::ostream& out,
                       std::ostream& err) {
  ExplainInputs in;
  const char* option = "";
  try {
    option = "--checkpoint-size";
    if (options.checkpoint_size) {
      in.checkpoint_bytes = parse_size(*options.checkpoint_size);
      if (*in.checkpoint_bytes == 0)
        throw std::invalid_argument("a checkpoint size must be more than 0");
    }
    option = "--run-time";
    if (options.run_time) in.run_seconds = parse_duration(*options.run_time);
    option = "--step-time";
    if (options.step_time) in.step_seconds = parse_duration(*options.step_time);
    option = "--interruptions-per-day";
    if (options.interruptions_per_day)
      in.interruptions_per_day = parse_rate(*options.interruptions_per_day);
    option = "--write-speed";
    if (options.write_speed) {
      std::string speed = *options.write_speed;
      if (speed.size() > 2 && speed.compare(speed.size() - 2, 2, "/s") == 0)
        speed.resize(speed.size() - 2);
      uint64_t bytes = parse_size(speed);
      if (bytes == 0) throw std::invalid_argument("a write speed must be more than 0");
      in.write_bytes_per_second = static_cast<double>(bytes);
    }
  } catch (const std::invalid_argument& e) {
    err << "lifeline policy explain: " << option << ": " << e.what() << '\n';
    return 2;
  }
  try {
    std::vector<std::string> warnings;
    Policy p = load_policy_file(file, warnings);
    for (const auto& w : warnings) err << w << '\n';
    out << wrap(render_explanation(p, in, explain_policy(p, in)));
    return 0;
  } catch (const PolicyError& e) {
    err << e.what() << '\n';
    return 2;
  }
}

}  // namespace

void register_policy_commands(CLI::App& app, int& rc) {
  auto args = std::make_shared<PolicyArgs>();
  CLI::App* policy =
      app.add_subcommand("policy", "Check a policy file, or explain what it does to a run");
  policy->require_subcommand(1);

  CLI::App* check =
      policy->add_subcommand("check", "Validate a policy file and summarize it (exit 0 ok, 2 bad)");
  check->add_option("FILE", args->check_file, "policy file (YAML)")->required();
  check->callback([args, &rc] { rc = run_policy_check(args->check_file, std::cout, std::cerr); });

  CLI::App* explain = policy->add_subcommand("explain",
                                             "Say how often checkpoints happen, what is kept, disk "
                                             "use, work lost, and the Young/Daly interval");
  explain->add_option("FILE", args->explain_file, "policy file (YAML)")->required();
  explain->add_option("--checkpoint-size", args->explain.checkpoint_size,
                      "size of one checkpoint, e.g. 2GiB");
  explain->add_option("--run-time", args->explain.run_time,
                      "length of the whole training run, e.g. 3d");
  explain->add_option(
      "--interruptions-per-day", args->explain.interruptions_per_day,
      "expected interruptions (preemptions, failures, time limits) per day; default 1");
  explain->add_option("--write-speed", args->explain.write_speed,
                      "checkpoint write speed per second, e.g. 500MB or 1GiB/s; default 1GiB/s");
  explain->add_option("--step-time", args->explain.step_time,
                      "duration of one training step, e.g. 0.5s");
  explain->callback([args, &rc] {
    rc = run_policy_explain(args->explain_file, args->explain, std::cout, std::cerr);
  });
}

}  // namespace lifeline::cli
