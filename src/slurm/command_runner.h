#pragma once
// CommandRunner runs an external command given as argv (never a shell string) with a
// timeout and captures its output; an interface so tests can inject failures.
#include <chrono>
#include <string>
#include <vector>

namespace lifeline {

// What a command did.
struct CommandResult {
  int status = -1;          // exit status, 128+signal, or -1 when it could not start
  bool timed_out = false;
  std::string out, err;
  bool ok() const { return status == 0 && !timed_out; }
  // "scontrol requeue 12: exit 1: <stderr>" style summary.
  std::string describe(const std::vector<std::string>& argv) const;
};

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;
  virtual CommandResult run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) = 0;
};

// Runs commands with Boost.Process; kills them at the timeout.
class ProcessCommandRunner : public CommandRunner {
 public:
  CommandResult run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) override;
};

// True when `program` is found in PATH (or is an executable path).
bool program_available(const std::string& program);

}  // namespace lifeline
