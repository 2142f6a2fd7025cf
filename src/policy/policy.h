// The checkpoint/retention/restart policy: one typed value read from a YAML file (every key is
// documented in policies/default.yaml), validated completely before anything starts.
#pragma once

#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace lifeline {

// Everything the supervisor, retention and the client need to know about when to
// checkpoint, what to keep, how to restart and how to stop; defaults are policies/default.yaml's.
struct Policy {
  // When checkpoints are requested and where they go.
  struct Checkpoint {
    std::string dir;  // "" = not set; ${VAR} and $VAR already expanded from the environment
    uint64_t every_steps = 1000;  // 0 = off
    double every_seconds = 3600;  // 0 = off
    bool on_signal = true;        // checkpoint when a stop signal arrives
    uint64_t skip_first_steps = 0;
  } checkpoint;

  // Whether a larger or a smaller metric is better.
  enum class Mode { min, max };

  // Which checkpoints survive garbage collection (the union of the rules).
  struct Retention {
    uint64_t keep_last = 3;
    uint64_t keep_best = 1;
    std::string metric = "val_loss";
    Mode mode = Mode::min;
    uint64_t keep_every_steps = 0;  // 0 = off
    uint64_t max_total_bytes = 0;   // 0 = unlimited
  } retention;

  // Whether a new attempt resumes: automatic = from the newest valid checkpoint if any,
  // required = refuse to start without one, off = always from scratch.
  enum class Resume { automatic, required, off };

  // How many times to come back, and how fast after a local failure.
  struct Restart {
    Resume resume = Resume::automatic;
    uint64_t max_requeues = 50;
    uint64_t max_failures = 3;         // failed attempts in a row without a new checkpoint
    double backoff_seconds = 5;        // first wait before a local restart, doubled each time
    double max_backoff_seconds = 300;  // the doubling stops here
  } restart;

  // Which signals mean "stop", and how long a stop may take.
  struct Stop {
    std::vector<int> signals = {SIGUSR1, SIGTERM, SIGINT};  // signal numbers
    double grace_seconds = 25;
    double hang_seconds = 0;  // 0 = off
  } stop;

  // How the job comes back after a stop.
  struct Requeue {
    std::string mode = "auto";  // auto | scontrol | sbatch | exit | local | none
    int exit_code = 75;         // 1..255, for mode exit
  } requeue;

  // The node-local tier (docs/storage.md): the trainer commits to `local`, the supervisor drains
  // each commit to the checkpoint dir in the background.
  struct Storage {
    std::string local_spec;  // as written ("" = no local tier), e.g. "$TMPDIR/lifeline"
    std::string local;       // expanded; "" while a variable it names is unset (expanded again at run time)
    bool drain = true;       // async (true) | off: checkpoints stay on the local disk only
    uint64_t keep_local = 2;        // committed checkpoints kept on the local tier (>= 1)
    uint64_t drain_bandwidth = 0;   // bytes/s a drain may use; 0 = unlimited
    bool enabled() const { return !local_spec.empty(); }
  } storage;

  std::string source;  // file it came from, "" for built-in defaults
};

// A policy file that cannot be used. Each problem reads "FILE:LINE:COL: key 'a.b': message"
// (line and column 1-based), or "FILE: message" when no position applies (e.g. unreadable file).
// A file with several bad keys gives them all: what() is the messages in file order, one per
// line (with one problem, exactly its message); messages() lists them one by one.
struct PolicyError : std::runtime_error {
  using runtime_error::runtime_error;
  // Several problems at once; `messages` must not be empty.
  explicit PolicyError(const std::vector<std::string>& messages);

  // Each problem's message, in file order: {what()} when constructed from one message.
  std::vector<std::string> messages() const;

 private:
  std::shared_ptr<const std::vector<std::string>> messages_;  // null: what() is the only one
};

// policies/default.yaml's values; source is "".
Policy default_policy();

// Reads and validates a policy file. Throws PolicyError.
Policy load_policy_file(const std::string& path);
// As above, and appends advice that is not an error ("FILE:LINE:COL: warning: key 'a.b': ...").
Policy load_policy_file(const std::string& path, std::vector<std::string>& warnings);

// Parses YAML text; source_name is used in messages and stored in Policy::source.
// Throws PolicyError, never a yaml-cpp exception.
Policy parse_policy(const std::string& yaml_text, const std::string& source_name);
Policy parse_policy(const std::string& yaml_text, const std::string& source_name,
                    std::vector<std::string>& warnings);

// Expands ${VAR} and $VAR (and $$ to $) using lookup, which returns nullptr for an unset
// variable. Throws std::invalid_argument naming the variable when one is unset or empty.
std::string expand_variables(const std::string& text,
                             const std::function<const char*(const std::string&)>& lookup);

// "min"/"max", "auto"/"required"/"off": the spelling used in policy files.
const char* to_string(Policy::Mode mode);
const char* to_string(Policy::Resume resume);
// "USR1", "TERM", ...; the number as text for a signal without a known name.
std::string signal_name(int signo);
// SIGUSR1 for "USR1", "SIGUSR1", "usr1"; nullopt for a name that is not a catchable stop
// signal (KILL and STOP cannot be caught).
std::optional<int> signal_from_name(const std::string& name);

}  // namespace lifeline
