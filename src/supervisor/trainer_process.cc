#include "supervisor/trainer_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <stdexcept>

#include "supervisor/child_environment.h"

namespace lifeline {
namespace bp = boost::process;

namespace {
// Puts the child in a process group of its own, so escalation reaches its children too.
struct NewProcessGroup : bp::extend::handler {
  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::setpgid(0, 0);
  }
};
}  // namespace

TrainerProcess::TrainerProcess(const std::vector<std::string>& argv,
                               const std::map<std::string, std::string>& extra_env) {
  if (argv.empty()) throw std::runtime_error("no training command given");
  boost::filesystem::path exe = argv[0];
  if (argv[0].find('/') == std::string::npos) {
    exe = bp::search_path(argv[0]);
    if (exe.empty()) throw std::runtime_error("training command '" + argv[0] + "' not found in PATH");
  } else if (::access(argv[0].c_str(), X_OK) != 0) {
    throw std::runtime_error("training command '" + argv[0] + "' is not an executable file");
  }
  ChildEnvironment env(extra_env);
  std::vector<std::string> args(argv.begin() + 1, argv.end());
  std::error_code ec;
  bp::child child(bp::exe = exe, bp::args = args, env.initializer(), NewProcessGroup{}, ec);
  if (ec) throw std::runtime_error("cannot start '" + argv[0] + "': " + ec.message());
  pid_ = child.id();
  // This object reaps the trainer itself (waitpid), so Boost's handle lets go of it.
  child.detach();
  // Close the race where the group is signalled before the child ran setpgid.
  ::setpgid(pid_, pid_);
}

TrainerProcess::~TrainerProcess() {
  if (pid_ > 0 && !status_) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
}

std::optional<int> TrainerProcess::poll_exit() {
  if (status_) return status_;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    if (WIFEXITED(st))
      status_ = WEXITSTATUS(st);
    else if (WIFSIGNALED(st))
      status_ = 128 + WTERMSIG(st);
    else
      status_ = 255;
  }
  return status_;
}

void TrainerProcess::signal_group(int signo) const {
  if (pid_ > 0 && !status_) {
    if (::kill(-pid_, signo) != 0) ::kill(pid_, signo);
  }
}

void TrainerProcess::signal(int signo) const {
  if (pid_ > 0 && !status_) ::kill(pid_, signo);
}

}  // namespace lifeline
