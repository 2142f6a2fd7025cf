#include "cli/table.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>

namespace lifeline::cli {
namespace {

constexpr const char* kGap = "  ";
constexpr size_t kGapWidth = 2;
constexpr size_t kMinShrunk = 8;  // a shrinkable column keeps at least this (or its header's width)

bool continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

size_t display_width(const std::string& text) {
  size_t n = 0;
  for (char c : text) n += continuation(c) ? 0 : 1;
  return n;
}

std::string ellipsize(const std::string& text, size_t width) {
  if (display_width(text) <= width) return text;
  if (width == 0) return "";
  // Keep width - 1 code points, then the ellipsis.
  size_t kept = 0, i = 0;
  while (i < text.size()) {
    if (!continuation(text[i])) {
      if (kept == width - 1) break;
      ++kept;
    }
    ++i;
  }
  return text.substr(0, i) + "\u2026";
}

size_t output_width() {
  if (::isatty(STDOUT_FILENO)) {
    winsize ws{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  }
  if (const char* c = std::getenv("COLUMNS"); c != nullptr && *c != '\0') {
    size_t n = 0;
    const char* end = c + std::strlen(c);
    auto [p, ec] = std::from_chars(c, end, n);
    if (ec == std::errc() && p == end && n > 0) return n;
  }
  return 0;
}

Table::Table(std::vector<TableColumn> columns) : columns_(std::move(columns)) {}

void Table::add(std::vector<std::string> cells) {
  cells.resize(columns_.size());
  rows_.push_back(std::move(cells));
}

std::string Table::render(size_t max_width) const {
  const size_t n = columns_.size();
  std::vector<size_t> width(n);
  for (size_t c = 0; c < n; ++c) {
    width[c] = display_width(columns_[c].head);
    for (const auto& row : rows_) width[c] = std::max(width[c], display_width(row[c]));
  }
  auto total = [&] {
    size_t t = n > 0 ? (n - 1) * kGapWidth : 0;
    for (size_t w : width) t += w;
    return t;
  };
  // Too wide: take one column at a time from the widest shrinkable column.
  while (max_width > 0 && total() > max_width) {
    size_t best = n;
    for (size_t c = 0; c < n; ++c) {
      if (!columns_[c].shrinkable) continue;
      size_t floor = std::max(kMinShrunk, display_width(columns_[c].head));
      if (width[c] > floor && (best == n || width[c] > width[best])) best = c;
    }
    if (best == n) break;  // nothing left to cut: the lines run over
    --width[best];
  }
  auto line = [&](auto cell_of) {
    std::string out;
    for (size_t c = 0; c < n; ++c) {
      std::string cell = ellipsize(cell_of(c), width[c]);
      if (c > 0) out += kGap;
      out += cell;
      if (c + 1 < n) out.append(width[c] - display_width(cell), ' ');
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + '\n';
  };
  std::string out = line([&](size_t c) -> const std::string& { return columns_[c].head; });
  for (const auto& row : rows_) out += line([&](size_t c) -> const std::string& { return row[c]; });
  return out;
}

}  // namespace lifeline::cli
