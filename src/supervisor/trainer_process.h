#pragma once
// TrainerProcess launches the training command (argv, never a shell string) in its own
// process group with extra environment variables, and reports its exit without blocking.
#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lifeline {

class TrainerProcess {
 public:
  // Starts argv[0] (searched in PATH when it has no '/'). Throws std::runtime_error when the
  // command cannot be found or started. `ignore_user_signals`: the trainer starts with SIGUSR1
  // and SIGUSR2 ignored (several supervisors: Slurm's --signal reaches every process of the step,
  // and a launcher such as torchrun would die of it; the clients install their own handlers).
  TrainerProcess(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                 bool ignore_user_signals = false);
  TrainerProcess(const TrainerProcess&) = delete;
  TrainerProcess& operator=(const TrainerProcess&) = delete;
  // Kills and reaps a trainer that is still running.
  ~TrainerProcess();

  // The executable argv0 names (searched in PATH when it has no '/'); throws
  // std::runtime_error saying why when there is none. Writes nothing: a preflight check.
  static std::string resolve(const std::string& argv0);

  pid_t pid() const { return pid_; }
  // Reaps the trainer if it has exited: its shell-style status (code, or 128+signal).
  std::optional<int> poll_exit();
  // Sends `signo` to the trainer's whole process group.
  void signal_group(int signo) const;
  // Sends `signo` to the trainer process only.
  void signal(int signo) const;

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

}  // namespace lifeline
