#pragma once
// TempDir: a fresh directory under $TMPDIR for one test, removed afterwards.
#include <stdlib.h>

#include <filesystem>
#include <string>

namespace lifeline::test {

class TempDir {
 public:
  TempDir() : TempDir(std::filesystem::temp_directory_path()) {}
  // Under `parent` instead of $TMPDIR (a test that needs a particular file system).
  explicit TempDir(const std::filesystem::path& parent) {
    std::string tmpl = (parent / "lifeline-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

}  // namespace lifeline::test
