#pragma once
// Process: a real child process for end-to-end tests, with its stdout+stderr read line by
// line, so a test waits for what the program says instead of sleeping.
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lifeline::test {

class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const;
  // Reads lines until one contains `needle` (returned), or "" at end of output.
  std::string wait_for_line(const std::string& needle);
  void signal(int signo) const;
  // Reads the rest of the output and waits; returns the shell-style exit status.
  int wait();
  // Everything read so far.
  const std::string& output() const { return output_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string output_;
};

// Runs to completion; returns the status and fills `out` with the output.
int run(const std::vector<std::string>& argv, std::string* out = nullptr,
        const std::map<std::string, std::string>& env = {});

// Runs argv in a child in a mount namespace of its own (unshare(CLONE_NEWNS), / made private)
// after `setup` ran there (mounts that vanish with the child; it returns "" or what failed, which
// is printed and gives status 99); stdout and stderr go to `out`. The exit status.
int run_in_mount_namespace(const std::vector<std::string>& argv, const std::function<std::string()>& setup,
                           std::string* out);

// Path of a built binary, from the environment variable meson sets for the test.
std::string binary(const char* env_var);

}  // namespace lifeline::test
