#pragma once
// ChildEnvironment: this process's environment with some variables set or removed, as the
// envp array a child process gets. It replaces Boost.Process 1.74's environment class, whose
// lookup reads past the end of shorter entries (AddressSanitizer: heap-buffer-overflow in
// basic_environment_impl::find).
#include <map>
#include <set>
#include <string>
#include <vector>

#include <boost/process/extend.hpp>

extern char** environ;

namespace lifeline {

class ChildEnvironment {
 public:
  ChildEnvironment(const std::map<std::string, std::string>& set, const std::set<std::string>& remove = {}) {
    for (char** e = environ; e && *e; ++e) {
      std::string entry = *e;
      std::string key = entry.substr(0, entry.find('='));
      if (!set.count(key) && !remove.count(key)) entries_.push_back(std::move(entry));
    }
    for (const auto& [k, v] : set) entries_.push_back(k + "=" + v);
    for (auto& e : entries_) pointers_.push_back(e.data());
    pointers_.push_back(nullptr);
  }
  ChildEnvironment(const ChildEnvironment&) = delete;
  ChildEnvironment& operator=(const ChildEnvironment&) = delete;

  // A Boost.Process initializer that hands this environment to execve.
  struct Initializer : boost::process::extend::handler {
    char** envp;
    template <class Executor>
    void on_setup(Executor& e) const {
      e.env = envp;
    }
  };
  Initializer initializer() { return Initializer{{}, pointers_.data()}; }

 private:
  std::vector<std::string> entries_;
  std::vector<char*> pointers_;
};

}  // namespace lifeline
