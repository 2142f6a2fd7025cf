#include "supervisor/trainer_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <stdexcept>

#include "supervisor/child_environment.h"

namespace lifeline {
namespace bp = boost::process;

namespace {
// Sets the child up before exec: a process group of its own (so escalation reaches its
// children too), killed with the supervisor (PR_SET_PDEATHSIG: a trainer must never outlive
// lifeline, even a kill -9 of it), and the default disposition and an empty mask for every
// signal lifeline itself ignores or blocks (SIG_IGN survives exec: a trainer would inherit an
// ignored SIGPIPE). Only async-signal-safe calls: this runs between fork and exec.
struct TrainerSetup : bp::extend::handler {
  pid_t supervisor = ::getpid();  // taken in the parent, before the fork
  bool ignore_user_signals = false;
  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The supervisor died between fork and prctl: nobody would deliver that signal any more.
    if (::getppid() != supervisor) ::_exit(127);
    for (int s : {SIGPIPE, SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGCONT, SIGCHLD}) ::signal(s, SIG_DFL);
    if (ignore_user_signals) {
      ::signal(SIGUSR1, SIG_IGN);
      ::signal(SIGUSR2, SIG_IGN);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
  }
};
}  // namespace

TrainerProcess::TrainerProcess(const std::vector<std::string>& argv,
                               const std::map<std::string, std::string>& extra_env, bool ignore_user_signals) {
  if (argv.empty()) throw std::runtime_error("no training command given");
  boost::filesystem::path exe = resolve(argv[0]);
  ChildEnvironment env(extra_env);
  std::vector<std::string> args(argv.begin() + 1, argv.end());
  std::error_code ec;
  TrainerSetup setup;
  setup.ignore_user_signals = ignore_user_signals;
  bp::child child(bp::exe = exe, bp::args = args, env.initializer(), setup, ec);
  if (ec) throw std::runtime_error("cannot start '" + argv[0] + "': " + ec.message());
  pid_ = child.id();
  // This object reaps the trainer itself (waitpid), so Boost's handle lets go of it.
  child.detach();
  // Close the race where the group is signalled before the child ran setpgid.
  ::setpgid(pid_, pid_);
}

std::string TrainerProcess::resolve(const std::string& argv0) {
  if (argv0.empty()) throw std::runtime_error("no training command given");
  if (argv0.find('/') == std::string::npos) {
    boost::filesystem::path exe = bp::search_path(argv0);
    if (exe.empty()) throw std::runtime_error("training command '" + argv0 + "' not found in PATH");
    return exe.string();
  }
  struct stat st {};
  if (::stat(argv0.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || ::access(argv0.c_str(), X_OK) != 0)
    throw std::runtime_error("training command '" + argv0 + "' is not an executable file");
  return argv0;
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
