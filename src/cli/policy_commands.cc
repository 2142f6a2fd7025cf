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

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/json_text.h"
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
  std::optional<std::string> shared_write_speed;     // the checkpoint dir's disk, for a node-local tier's drain
  std::optional<std::string> step_time;              // DURATION of one training step
};

// Storage the parsed command-line values are written into; lives as long as the App.
struct PolicyArgs {
  std::string check_file;
  std::string explain_file;
  ExplainOptions explain;
  bool check_json = false, explain_json = false;
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

using ojson = nlohmann::ordered_json;

template <class T>
ojson or_null(const std::optional<T>& v) {
  return v ? ojson(*v) : ojson(nullptr);
}

// The policy as it will be applied (defaults filled in), for --json.
ojson policy_json(const Policy& p) {
  ojson signals = ojson::array();
  for (int s : p.stop.signals) signals.push_back(signal_name(s));
  return {{"source", p.source},
          {"checkpoint",
           {{"dir", p.checkpoint.dir},
            {"every_steps", p.checkpoint.every_steps},
            {"every_seconds", p.checkpoint.every_seconds},
            {"on_signal", p.checkpoint.on_signal},
            {"skip_first_steps", p.checkpoint.skip_first_steps}}},
          {"retention",
           {{"keep_last", p.retention.keep_last},
            {"keep_best", p.retention.keep_best},
            {"metric", p.retention.metric},
            {"mode", to_string(p.retention.mode)},
            {"keep_every_steps", p.retention.keep_every_steps},
            {"max_total_bytes", p.retention.max_total_bytes}}},
          {"restart",
           {{"resume", to_string(p.restart.resume)},
            {"max_requeues", p.restart.max_requeues},
            {"max_failures", p.restart.max_failures},
            {"backoff_seconds", p.restart.backoff_seconds},
            {"max_backoff_seconds", p.restart.max_backoff_seconds}}},
          {"stop", {{"signals", signals}, {"grace_seconds", p.stop.grace_seconds}, {"hang_seconds", p.stop.hang_seconds}}},
          {"storage",
           {{"local", p.storage.local_spec},
            {"local_expanded", p.storage.local},
            {"drain", p.storage.drain ? "async" : "off"},
            {"keep_local", p.storage.keep_local},
            {"drain_bandwidth", p.storage.drain_bandwidth}}},
          {"requeue", {{"mode", p.requeue.mode}, {"exit_code", p.requeue.exit_code}}}};
}

// The body of `policy check`: writes to out/err, returns the exit status (0 ok, 2 bad file).
// --json: {file, ok, error, errors, warnings, summary, policy} on `out`, whatever the outcome:
// `error` is every problem as one text (one per line), `errors` the same one string each.
int run_policy_check(const std::string& file, std::ostream& out, std::ostream& err, bool as_json = false) {
  std::vector<std::string> warnings;
  try {
    Policy p = load_policy_file(file, warnings);
    if (as_json) {
      out << dump_json(ojson{{"file", file},
                             {"ok", true},
                             {"error", nullptr},
                             {"errors", ojson::array()},
                             {"warnings", warnings},
                             {"summary", summarize_policy(p)},
                             {"policy", policy_json(p)}},
                       2)
          << '\n';
      return 0;
    }
    for (const auto& w : warnings) err << w << '\n';
    out << file << ": ok\n" << wrap(summarize_policy(p));
    return 0;
  } catch (const PolicyError& e) {
    if (as_json) {
      out << dump_json(ojson{{"file", file}, {"ok", false}, {"error", e.what()},
                             {"errors", e.messages()}, {"warnings", warnings},
                             {"summary", nullptr}, {"policy", nullptr}},
                       2)
          << '\n';
      return 2;
    }
    err << e.what() << '\n';
    return 2;
  }
}

// The numbers behind `policy explain`, for --json (seconds, bytes; null when unknown).
ojson explanation_json(const Explanation& e) {
  return {{"interval_seconds", or_null(e.interval_seconds)},
          {"interval_is_upper_bound", e.interval_is_upper_bound},
          {"periodic_checkpoints", or_null(e.periodic_checkpoints)},
          {"kept_newest", e.kept_newest},
          {"kept_best", e.kept_best},
          {"kept_forever", or_null(e.kept_forever)},
          {"kept_total", or_null(e.kept_total)},
          {"checkpoint_write_seconds", or_null(e.checkpoint_write_seconds)},
          {"peak_disk_bytes", or_null(e.peak_disk_bytes)},
          {"lost_unsignalled_seconds", or_null(e.lost_unsignalled_seconds)},
          {"signalled_stop_saves_work", e.signalled_stop_saves_work},
          {"stop_checkpoint_may_not_fit", e.stop_checkpoint_may_not_fit},
          {"drain_bytes_per_second", or_null(e.drain_bytes_per_second)},
          {"drain_seconds", or_null(e.drain_seconds)},
          {"stop_drain_may_not_fit", e.stop_drain_may_not_fit},
          {"interruptions_per_day", e.interruptions_per_day},
          {"interruptions_assumed", e.interruptions_assumed},
          {"mtbi_seconds", or_null(e.mtbi_seconds)},
          {"optimal_interval_seconds", or_null(e.optimal_interval_seconds)},
          {"interval_over_optimal", or_null(e.interval_over_optimal)},
          {"overhead_fraction", or_null(e.overhead_fraction)},
          {"optimal_overhead_fraction", or_null(e.optimal_overhead_fraction)}};
}

// The body of `policy explain`: writes to out/err, returns the exit status (0 ok, 2 bad file or option).
int run_policy_explain(const std::string& file, const ExplainOptions& options, std::ostream& out,
                       std::ostream& err, bool as_json = false) {
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
    option = "--shared-write-speed";
    if (options.shared_write_speed) {
      std::string speed = *options.shared_write_speed;
      if (speed.size() > 2 && speed.compare(speed.size() - 2, 2, "/s") == 0) speed.resize(speed.size() - 2);
      uint64_t bytes = parse_size(speed);
      if (bytes == 0) throw std::invalid_argument("a write speed must be more than 0");
      in.shared_write_bytes_per_second = static_cast<double>(bytes);
    }
  } catch (const std::invalid_argument& e) {
    err << "lifeline policy explain: " << option << ": " << e.what() << '\n';
    return 2;
  }
  try {
    std::vector<std::string> warnings;
    Policy p = load_policy_file(file, warnings);
    for (const auto& w : warnings) err << w << '\n';
    Explanation e = explain_policy(p, in);
    if (as_json)
      out << dump_json(ojson{{"file", file}, {"explanation", explanation_json(e)}, {"text", render_explanation(p, in, e)}}, 2)
          << '\n';
    else
      out << wrap(render_explanation(p, in, e));
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
  check->add_flag("--json", args->check_json, "the result as JSON: file, ok, error, errors, warnings, summary, policy");
  check->callback([args, &rc] { rc = run_policy_check(args->check_file, std::cout, std::cerr, args->check_json); });

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
  explain->add_option("--shared-write-speed", args->explain.shared_write_speed,
                      "with storage.local: the checkpoint dir's write speed, which a drain runs at, e.g. 300MB/s; "
                      "default: --write-speed");
  explain->add_option("--step-time", args->explain.step_time,
                      "duration of one training step, e.g. 0.5s");
  explain->add_flag("--json", args->explain_json, "the numbers as JSON (seconds, bytes), with the text");
  explain->callback([args, &rc] {
    rc = run_policy_explain(args->explain_file, args->explain, std::cout, std::cerr, args->explain_json);
  });
}

}  // namespace lifeline::cli
