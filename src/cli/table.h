#pragma once
// Tables of the human (non-JSON) output of `history`, `checkpoints` and the like: every column
// as wide as its widest cell, two spaces between columns, all left-aligned so each row's cells
// start where the header's names start. Where a terminal is narrower than the table, the
// columns marked shrinkable are cut (ending in "…") down to a floor, widest first; the others
// (ids, steps, times) never are.
#include <cstddef>
#include <string>
#include <vector>

namespace lifeline::cli {

// One column of a Table: its header, and whether it may be cut to fit.
struct TableColumn {
  std::string head;
  bool shrinkable = false;  // may be cut to fit a narrow terminal
};

// Table collects rows and renders them aligned (see the top of this file).
class Table {
 public:
  explicit Table(std::vector<TableColumn> columns);

  // One row; missing cells are empty, extra cells are dropped.
  void add(std::vector<std::string> cells);

  // The header and rows, each ending in '\n', with no trailing spaces. max_width 0: no limit.
  std::string render(size_t max_width = 0) const;

 private:
  std::vector<TableColumn> columns_;
  std::vector<std::vector<std::string>> rows_;
};

// Columns on the screen (UTF-8 code points; control characters count one each).
size_t display_width(const std::string& text);

// `text` cut to at most `width` columns, ending in "…" when cut.
std::string ellipsize(const std::string& text, size_t width);

// The width human output should fit: the terminal's (TIOCGWINSZ) when stdout is one, else
// $COLUMNS when it is a positive number, else 0 (no limit: a pipe or a file gets whole lines).
size_t output_width();

}  // namespace lifeline::cli
