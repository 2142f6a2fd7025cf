#include "support/process.h"

#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <cstring>
#include <set>
#include <stdexcept>

#include "supervisor/child_environment.h"

namespace lifeline::test {
namespace bp = boost::process;

struct Process::Impl {
  bp::ipstream out;
  bp::child child;
  int status = -1;
};

Process::Process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env)
    : impl_(std::make_unique<Impl>()) {
  std::map<std::string, std::string> set;
  std::set<std::string> remove;
  for (const auto& [k, v] : env) {
    if (v.empty())
      remove.insert(k);
    else
      set[k] = v;
  }
  ChildEnvironment e(set, remove);
  std::vector<std::string> args(argv.begin() + 1, argv.end());
  boost::filesystem::path exe = argv[0];
  if (argv[0].find('/') == std::string::npos) exe = bp::search_path(argv[0]);
  if (exe.empty()) throw std::runtime_error(argv[0] + " not found in PATH");
  impl_->child = bp::child(bp::exe = exe, bp::args = args, e.initializer(), (bp::std_out & bp::std_err) > impl_->out);
}

Process::~Process() {
  if (impl_->child.valid() && impl_->child.running()) {
    ::kill(impl_->child.id(), SIGKILL);
    impl_->child.wait();
  }
}

pid_t Process::pid() const { return impl_->child.id(); }

std::string Process::wait_for_line(const std::string& needle) {
  std::string line;
  while (std::getline(impl_->out, line)) {
    output_ += line + "\n";
    if (line.find(needle) != std::string::npos) return line;
  }
  return "";
}

void Process::signal(int signo) const { ::kill(impl_->child.id(), signo); }

int Process::wait() {
  std::string line;
  while (std::getline(impl_->out, line)) output_ += line + "\n";
  impl_->child.wait();
  int raw = impl_->child.native_exit_code();
  if (WIFEXITED(raw)) return WEXITSTATUS(raw);
  if (WIFSIGNALED(raw)) return 128 + WTERMSIG(raw);
  return raw;
}

int run(const std::vector<std::string>& argv, std::string* out, const std::map<std::string, std::string>& env) {
  Process p(argv, env);
  int status = p.wait();
  if (out) *out = p.output();
  return status;
}

std::string binary(const char* env_var) {
  const char* v = std::getenv(env_var);
  if (!v || !*v) throw std::runtime_error(std::string(env_var) + " is not set (run the test through meson test)");
  return v;
}

int run_in_mount_namespace(const std::vector<std::string>& argv, const std::function<std::string()>& setup,
                           std::string* out) {
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    std::string failed;
    if (::unshare(CLONE_NEWNS) != 0)
      failed = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
    else if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      failed = std::string("make / private: ") + std::strerror(errno);
    else
      failed = setup();
    if (!failed.empty()) {
      std::fprintf(stderr, "test setup: %s\n", failed.c_str());
      ::_exit(99);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out->append(buf, size_t(n));
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace lifeline::test
