#pragma once
// ClientEnv: the LIFELINE_* variables a supervisor passes to its trainer, for client tests.
#include <stdlib.h>

#include <string>

namespace lifeline::test {

// Sets LIFELINE_CONTROL (unset when empty) and LIFELINE_CKPT_DIR, clears the resume variables,
// and clears all four when it goes out of scope.
struct ClientEnv {
  ClientEnv(const std::string& control, const std::string& dir) {
    if (control.empty())
      unsetenv("LIFELINE_CONTROL");
    else
      setenv("LIFELINE_CONTROL", control.c_str(), 1);
    setenv("LIFELINE_CKPT_DIR", dir.c_str(), 1);
    unsetenv("LIFELINE_RESUME_FROM");
    unsetenv("LIFELINE_RESUME_STEP");
  }
  ~ClientEnv() {
    for (const char* v : {"LIFELINE_CONTROL", "LIFELINE_CKPT_DIR", "LIFELINE_RESUME_FROM", "LIFELINE_RESUME_STEP"})
      unsetenv(v);
  }
  ClientEnv(const ClientEnv&) = delete;
  ClientEnv& operator=(const ClientEnv&) = delete;
};

}  // namespace lifeline::test
