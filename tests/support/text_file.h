#pragma once
// Reading a whole text file, or its first line, in end-to-end tests (outputs, digests, histories).
#include <fstream>
#include <sstream>
#include <string>

namespace lifeline::test {

// The file's contents; "" when it cannot be read.
inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The file's first line, without its newline; "" when it cannot be read.
inline std::string first_line(const std::string& path) {
  std::string s = slurp(path);
  return s.substr(0, s.find('\n'));
}

}  // namespace lifeline::test
