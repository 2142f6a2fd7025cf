#pragma once
// Reading the tables of the human output (`history`, `checkpoints`) back in tests: which column
// starts where in the header, whether every row's cells start at those same screen columns, and
// what a row holds in each column.
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

namespace lifeline::test {

// The lines of `text`, each "…" (three bytes, one column) turned into "~", so that byte offsets
// are screen columns.
inline std::vector<std::string> screen_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    for (size_t at; (at = line.find("\u2026")) != std::string::npos;) line.replace(at, 3, "~");
    out.push_back(line);
  }
  return out;
}

// The index of the first line that starts with `prefix`, or lines.size().
inline size_t line_starting(const std::vector<std::string>& lines, const std::string& prefix) {
  for (size_t i = 0; i < lines.size(); ++i)
    if (lines[i].rfind(prefix, 0) == 0) return i;
  return lines.size();
}

// Where each of `names` starts in `header`, searched in order; an empty vector when one is missing.
inline std::vector<size_t> column_starts(const std::string& header, const std::vector<std::string>& names) {
  std::vector<size_t> out;
  size_t from = 0;
  for (const auto& n : names) {
    size_t at = header.find(n, from);
    if (at == std::string::npos) return {};
    out.push_back(at);
    from = at + n.size();
  }
  return out;
}

// Whether `row` has a cell starting at every one of `starts`: a non-space there, and a space just
// before it (so no cell of an earlier column runs into it).
inline bool aligned(const std::string& row, const std::vector<size_t>& starts) {
  for (size_t s : starts) {
    if (s >= row.size() || row[s] == ' ') return false;
    if (s > 0 && row[s - 1] != ' ') return false;
  }
  return true;
}

// Column i of `row`: from its start to the next column's, without the padding.
inline std::string cell(const std::string& row, const std::vector<size_t>& starts, size_t i) {
  if (starts[i] >= row.size()) return "";
  std::string c = i + 1 < starts.size() ? row.substr(starts[i], starts[i + 1] - starts[i]) : row.substr(starts[i]);
  while (!c.empty() && c.back() == ' ') c.pop_back();
  return c;
}

}  // namespace lifeline::test
