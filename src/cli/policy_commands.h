// `lifeline policy check FILE` and `lifeline policy explain FILE [...]`: validate a policy
// file, and say in plain words what it will do to a run.
#pragma once

#include <iosfwd>
#include <optional>
#include <string>

namespace CLI {
class App;
}

namespace lifeline::cli {

// Adds `policy check` and `policy explain`; the chosen command's exit status is stored in rc.
void register_policy_commands(CLI::App& app, int& rc);

// The options of `policy explain` as typed; unset = not given.
struct ExplainOptions {
  std::optional<std::string> checkpoint_size;        // SIZE, e.g. 2GiB
  std::optional<std::string> run_time;               // DURATION, e.g. 3d
  std::optional<std::string> interruptions_per_day;  // number >= 0
  std::optional<std::string> write_speed;            // SIZE per second, e.g. 1GiB or 500MB/s
  std::optional<std::string> step_time;              // DURATION of one training step
};

// The bodies of the two commands, for tests: write to out/err, return the exit status
// (0 ok, 2 bad file or bad option).
int run_policy_check(const std::string& file, std::ostream& out, std::ostream& err);
int run_policy_explain(const std::string& file, const ExplainOptions& options, std::ostream& out,
                       std::ostream& err);

}  // namespace lifeline::cli
