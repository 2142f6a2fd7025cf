#include "slurm/command_runner.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/process.hpp>
#include <fmt/format.h>
#include <future>

namespace lifeline {
namespace bp = boost::process;

std::string CommandResult::describe(const std::vector<std::string>& argv) const {
  std::string cmd = fmt::format("{}", fmt::join(argv, " "));
  std::string what = timed_out ? "timed out" : status < 0 ? "could not start" : "exit " + std::to_string(status);
  std::string detail = err.empty() ? out : err;
  while (!detail.empty() && (detail.back() == '\n' || detail.back() == ' ')) detail.pop_back();
  return cmd + ": " + what + (detail.empty() ? "" : ": " + detail);
}

bool program_available(const std::string& program) {
  if (program.find('/') != std::string::npos) return ::access(program.c_str(), X_OK) == 0;
  return !bp::search_path(program).empty();
}

CommandResult ProcessCommandRunner::run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  CommandResult r;
  if (argv.empty()) return r;
  boost::filesystem::path exe = argv[0];
  if (argv[0].find('/') == std::string::npos) exe = bp::search_path(argv[0]);
  if (exe.empty()) {
    r.err = argv[0] + " not found in PATH";
    return r;
  }
  boost::asio::io_context io;
  std::future<std::string> out, err;
  std::error_code ec;
  std::vector<std::string> args(argv.begin() + 1, argv.end());
  // scontrol prints times as the user's SLURM_TIME_FORMAT says ("relative", strftime shapes);
  // parse_slurm_time reads only the standard one. Only scontrol's: a resubmitted job would
  // inherit it from sbatch.
  // set(), not operator[]: Boost 1.74's environment::find compares the key past the end of a
  // shorter entry (AddressSanitizer: heap-buffer-overflow); the implementation's set() checks sizes.
  bp::environment env = boost::this_process::environment();
  if (exe.filename() == "scontrol") env.set("SLURM_TIME_FORMAT", "standard");
  bp::child child(bp::exe = exe, bp::args = args, bp::std_in.close(), bp::std_out > out, bp::std_err > err,
                  bp::env = env, io, ec);
  if (ec) {
    r.err = ec.message();
    return r;
  }
  io.run_for(timeout);
  if (!io.stopped()) {
    r.timed_out = true;
    ::kill(child.id(), SIGKILL);
    io.run_for(std::chrono::seconds(2));
  }
  child.wait(ec);
  int raw = child.native_exit_code();
  if (r.timed_out)
    r.status = -1;
  else if (WIFEXITED(raw))
    r.status = WEXITSTATUS(raw);
  else if (WIFSIGNALED(raw))
    r.status = 128 + WTERMSIG(raw);
  auto take = [](std::future<std::string>& f) {
    if (f.valid() && f.wait_for(std::chrono::seconds(0)) == std::future_status::ready) return f.get();
    return std::string();
  };
  r.out = take(out);
  r.err = take(err);
  return r;
}

}  // namespace lifeline
