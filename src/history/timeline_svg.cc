#include "history/timeline_svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <sstream>
#include <vector>

#include "common/format.h"
#include "common/json_text.h"

namespace lifeline {

namespace {

// Picture geometry and palette, in px and CSS colours.
constexpr double kWidth = 1000;
constexpr double kLeft = 24, kRight = 24;
constexpr double kHeaderHeight = 84;
constexpr double kRowHeight = 62;
constexpr double kBarOffset = 10;  // from the row's label baseline to the bar's top
constexpr double kBarHeight = 18;
constexpr double kCharWidth = 6.9;  // average advance of the 12 px sans-serif used for labels
const char* const kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";
const char* const kInk = "#111827";
const char* const kMuted = "#6b7280";
const char* const kGrid = "#e5e7eb";
const char* const kUseful = "#4c78a8";
const char* const kUnsaved = "#a8c8e8";
const char* const kSave = "#f58518";
const char* const kLost = "#e45756";
const char* const kCommit = "#111827";
const char* const kSignal = "#b91c1c";
const char* const kFork = "#15803d";    // a fork's start (--init-from)

// XML text: markup escaped, and valid UTF-8 (a directory name may hold any bytes).
std::string esc(const std::string& s) {
  std::string out;
  for (char c : valid_utf8(s)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// Maps wall-clock nanoseconds onto the x axis.
struct TimeAxis {
  uint64_t t0 = 0, t1 = 1;
  double x0 = kLeft, x1 = kWidth - kRight;
  double x(uint64_t t) const {
    double f = (double(t) - double(t0)) / double(t1 - t0);
    return x0 + f * (x1 - x0);
  }
};

// A tick step (seconds) that gives 5 to 10 ticks over `span` seconds.
double tick_step(double span) {
  static const double steps[] = {1,    2,    5,     10,    15,    30,    60,     120,    300,   600,
                                 900,  1800, 3600,  7200,  10800, 21600, 43200,  86400,  172800, 604800};
  for (double s : steps)
    if (span / s <= 10) return s;
  return std::ceil(span / 10 / 604800) * 604800;
}

std::string clock_label(uint64_t secs, double step, bool with_date) {
  time_t t = time_t(secs);
  tm utc{};
  gmtime_r(&t, &utc);
  char buf[40];
  if (step >= 86400)
    std::strftime(buf, sizeof buf, "%m-%d", &utc);
  else if (with_date)
    std::strftime(buf, sizeof buf, step >= 60 ? "%m-%d %H:%M" : "%m-%d %H:%M:%S", &utc);
  else
    std::strftime(buf, sizeof buf, step >= 60 ? "%H:%M" : "%H:%M:%S", &utc);
  return buf;
}

std::string day_of(uint64_t ns) {
  time_t t = time_t(ns / 1000000000ull);
  tm utc{};
  gmtime_r(&t, &utc);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &utc);
  return buf;
}

std::string signal_text(const Attempt& a) {
  for (const auto& s : a.signals)
    if (!s.name.empty()) return "SIG" + s.name;
  return "";
}

// "attempt 2 · job 17 · preempted": what the bar is, in the words of the table.
std::string headline(const Attempt& a) {
  std::string s = "attempt " + std::to_string(a.attempt);
  if (a.job_id) s += " \u00b7 job " + *a.job_id;
  if (a.running) return s + " \u00b7 running";
  std::string reason = a.end_reason == "time_limit" ? "time limit" : a.end_reason;
  if (a.end_reason == "failed" && a.hang) reason = "failed (hung)";
  else if (a.end_reason == "failed" && a.exit_code) reason = "failed (exit " + std::to_string(*a.exit_code) + ")";
  else if (a.end_reason == "lost") reason = "lost (end not recorded)";
  std::string sig = signal_text(a);
  if (!sig.empty() && a.end_reason != "completed" && a.end_reason != "failed") reason += " by " + sig;
  return s + " \u00b7 " + reason;
}

// The details after the headline: where, from which step, what it kept and lost.
std::string details(const Attempt& a) {
  std::vector<std::string> parts;
  if (!a.host.empty()) parts.push_back(a.host);
  if (a.parent)  // a fork (--init-from): a warm start from another run's checkpoint
    parts.push_back("forked from step " + std::to_string(a.parent->step) + " of " + a.parent->dir);
  else
    parts.push_back(a.resumed_from_step ? "resumed from step " + std::to_string(*a.resumed_from_step)
                                        : std::string("from scratch"));
  std::string ck = std::to_string(a.checkpoints) + (a.checkpoints == 1 ? " checkpoint" : " checkpoints");
  if (a.last_checkpoint_step) ck += " (last step " + std::to_string(*a.last_checkpoint_step) + ")";
  parts.push_back(ck);
  if (a.running)
    parts.push_back(human_duration(a.at_risk_seconds) + " unsaved");
  else if (a.end_reason != "completed")
    parts.push_back("lost " + human_duration(a.lost_seconds) + (a.end_estimated ? " (estimated)" : ""));
  if (std::string r = requeue_text(a); r != "none") parts.push_back("requeue: " + r);
  return fmt::format("{}", fmt::join(parts, " \u00b7 "));
}

// Approximate rendered width of UTF-8 text (the middle dot counts once).
double text_width(const std::string& s, double char_width = kCharWidth) {
  size_t chars = 0;
  for (unsigned char c : s)
    if ((c & 0xc0) != 0x80) ++chars;
  return double(chars) * char_width;
}

// Appends SVG elements; keeps the markup in one style.
class Svg {
 public:
  void rect(double x, double y, double w, double h, const std::string& fill, const std::string& extra = "") {
    out_ << "  <rect x=\"" << num(x) << "\" y=\"" << num(y) << "\" width=\"" << num(std::max(w, 0.0))
         << "\" height=\"" << num(h) << "\" fill=\"" << fill << "\"" << (extra.empty() ? "" : " " + extra)
         << "/>\n";
  }
  void line(double x1, double y1, double x2, double y2, const std::string& stroke, double width,
            const std::string& extra = "") {
    out_ << "  <line x1=\"" << num(x1) << "\" y1=\"" << num(y1) << "\" x2=\"" << num(x2) << "\" y2=\"" << num(y2)
         << "\" stroke=\"" << stroke << "\" stroke-width=\"" << num(width) << "\""
         << (extra.empty() ? "" : " " + extra) << "/>\n";
  }
  void text(double x, double y, const std::string& body, const std::string& attrs) {
    out_ << "  <text x=\"" << num(x) << "\" y=\"" << num(y) << "\" " << attrs << ">" << body << "</text>\n";
  }
  void raw(const std::string& s) { out_ << s; }
  std::string str() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

std::string fill_attr(const char* color) { return std::string("fill=\"") + color + "\""; }

}  // namespace

std::string timeline_svg(const Ledger& ledger, const std::string& title, uint64_t now_ns) {
  const auto& attempts = ledger.attempts;
  const Summary& s = ledger.summary;
  double chart_top = kHeaderHeight;
  double rows = double(std::max<size_t>(attempts.size(), 1));
  double axis_y = chart_top + rows * kRowHeight + 4;
  double height = axis_y + 78;

  TimeAxis ax;
  if (!attempts.empty()) {
    uint64_t lo = s.first_start_ns, hi = std::max<uint64_t>(s.last_end_ns, lo + 1000000000ull);
    uint64_t pad = (hi - lo) / 50;
    ax.t0 = lo - std::min(lo, pad);
    ax.t1 = hi + pad;
  }

  Svg svg;
  char head[512];
  std::snprintf(head, sizeof head,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
                "font-family=\"%s\" font-size=\"12\">\n",
                kWidth, height, kWidth, height, kFont);
  svg.raw(head);
  svg.raw("  <defs>\n"
          "    <pattern id=\"lost\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
          "patternTransform=\"rotate(45)\">\n"
          "      <rect width=\"6\" height=\"6\" fill=\"#fbd5d5\"/>\n"
          "      <line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"" + std::string(kLost) +
          "\" stroke-width=\"3\"/>\n"
          "    </pattern>\n"
          "  </defs>\n");
  svg.rect(0, 0, kWidth, height, "#ffffff");

  // Header: what this is, and the summary in one line each.
  svg.text(kLeft, 28, esc("lifeline history \u00b7 " + title), "font-size=\"16\" font-weight=\"bold\" " + fill_attr(kInk));
  if (attempts.empty()) {
    svg.text(kLeft, 54, "no attempts recorded yet", fill_attr(kMuted));
    svg.raw("</svg>\n");
    return svg.str();
  }
  std::string line1 = std::to_string(s.attempts) + (s.attempts == 1 ? " attempt" : " attempts") + " \u00b7 " +
                      (s.state == "running" ? "running now" : "last: " + s.state) + " \u00b7 " +
                      human_duration(s.wall_seconds) + " supervised over " + human_duration(s.span_seconds);
  std::string goodput = s.goodput_percent ? [&] {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f%%", *s.goodput_percent);
    return std::string(b);
  }() : std::string("n/a");
  std::string line2 = "goodput " + goodput + " \u00b7 useful " + human_duration(s.useful_seconds) +
                      " \u00b7 checkpoint saves " + human_duration(s.checkpoint_seconds) + " \u00b7 lost work " +
                      human_duration(s.lost_seconds);
  std::string causes = interruptions_text(s);
  line1 += " \u00b7 interruptions: " + (causes.empty() ? std::string("none") : causes);
  svg.text(kLeft, 50, esc(line1), fill_attr(kInk));
  svg.text(kLeft, 68, esc(line2), fill_attr(kInk));

  // Grid and axis.
  double span_s = double(ax.t1 - ax.t0) / 1e9;
  double step = tick_step(span_s);
  uint64_t first_tick = uint64_t(std::ceil(double(ax.t0) / 1e9 / step) * step);
  std::string last_day;
  for (uint64_t t = first_tick; double(t) * 1e9 <= double(ax.t1); t += uint64_t(step)) {
    double x = ax.x(t * 1000000000ull);
    svg.line(x, chart_top - 6, x, axis_y, kGrid, 1);
    svg.line(x, axis_y, x, axis_y + 5, kMuted, 1);
    std::string day = day_of(t * 1000000000ull);
    bool with_date = !last_day.empty() && day != last_day && step < 86400;
    last_day = day;
    svg.text(x, axis_y + 18, clock_label(t, step, with_date), "text-anchor=\"middle\" font-size=\"11\" " + fill_attr(kMuted));
  }
  svg.line(ax.x0, axis_y, ax.x1, axis_y, kMuted, 1);
  svg.text(ax.x0, axis_y + 36, esc("time (UTC) from " + day_of(ax.t0)), "font-size=\"11\" " + fill_attr(kMuted));

  // One row per attempt: label, bar, marks.
  for (size_t i = 0; i < attempts.size(); ++i) {
    const Attempt& a = attempts[i];
    double label_y = chart_top + double(i) * kRowHeight + 14;
    double bar_y = label_y + kBarOffset;
    double mid = bar_y + kBarHeight / 2;
    double xs = ax.x(a.started_ns);
    double xe = std::max(ax.x(a.end_or(now_ns)), xs + 2);
    double xsafe = std::clamp(ax.x(a.last_safe_ns()), xs, xe);

    // The wait before this attempt (queued, or restarting), as a dotted lead-in.
    if (i > 0) {
      const Attempt& prev = attempts[i - 1];
      double xp = ax.x(prev.end_or(now_ns));
      if (xs - xp > 3) {
        svg.line(xp, mid, xs - 1, mid, kMuted, 1.2, "stroke-dasharray=\"2 3\"");
        std::string wait = "waited " + human_duration(double(a.started_ns - prev.end_or(now_ns)) / 1e9);
        // Under the dotted line, ending at the bar; it may reach left under the previous row's end.
        if (xs - 8 - text_width(wait, 6) > kLeft)
          svg.text(xs - 8, bar_y + kBarHeight + 13, esc(wait), "text-anchor=\"end\" font-size=\"10\" " + fill_attr(kMuted));
      }
    }

    // Label: bold headline, then details, kept inside the picture.
    std::string h = headline(a), d = details(a);
    double w = text_width(h, 7.6) + 10 + text_width(d, 6.3);
    double lx = std::clamp(xs, kLeft, std::max(kLeft, kWidth - kRight - w));
    svg.raw("  <text x=\"" + num(lx) + "\" y=\"" + num(label_y) + "\" " + fill_attr(kInk) + "><tspan font-weight=\"bold\">" +
            esc(h) + "</tspan><tspan dx=\"10\" font-size=\"11\" fill=\"" + kMuted + "\">" + esc(d) + "</tspan></text>\n");

    // Bar: kept work, then lost (ended) or unsaved (running) work.
    svg.rect(xs, bar_y, xsafe - xs, kBarHeight, kUseful);
    if (a.running) {
      svg.rect(xsafe, bar_y, xe - xsafe, kBarHeight, kUnsaved);
      svg.line(xe, bar_y - 4, xe, bar_y + kBarHeight + 4, kInk, 1.5, "stroke-dasharray=\"3 2\"");
      svg.text(xe + 4, mid + 4, "now", "font-size=\"10\" " + fill_attr(kMuted));
    } else if (a.end_reason == "completed") {
      svg.rect(xsafe, bar_y, xe - xsafe, kBarHeight, kUseful);
    } else {
      svg.rect(xsafe, bar_y, std::max(xe - xsafe, 1.5), kBarHeight, "url(#lost)", "stroke=\"" + std::string(kLost) + "\" stroke-width=\"0.8\"");
    }
    if (a.end_estimated) {
      // The real end is unknown: fade out after the last known activity.
      double until = i + 1 < attempts.size() ? ax.x(attempts[i + 1].started_ns) : ax.x1;
      double xq = std::min(xe + 40, until - 2);
      if (xq > xe + 6) {
        svg.line(xe + 2, mid, xq, mid, kLost, 1.5, "stroke-dasharray=\"1 3\"");
        svg.text(xq + 3, mid + 4, "?", "font-weight=\"bold\" " + fill_attr(kLost));
      }
    }

    // Checkpoint saves (duration) and commits (tick, step below the bar).
    double last_label_x = -1e9;
    for (const auto& c : a.commits) {
      double xc = ax.x(c.time_ns);
      double xb = ax.x(c.time_ns - std::min<uint64_t>(c.time_ns, uint64_t(c.duration_s * 1e9)));
      if (xc - xb >= 1) svg.rect(xb, bar_y, xc - xb, kBarHeight, kSave);
      svg.line(xc, bar_y - 3, xc, bar_y + kBarHeight + 3, kCommit, 1.3);
      std::string label = std::to_string(c.step);
      double lw = text_width(label, 5.6);
      if (xc - last_label_x > lw + 8) {
        svg.text(xc, bar_y + kBarHeight + 13, label, "text-anchor=\"middle\" font-size=\"9.5\" " + fill_attr(kMuted));
        last_label_x = xc;
      }
    }

    // A fork's start: a green diamond on the bar's left edge, the source in its tooltip.
    if (a.parent)
      svg.raw("  <path class=\"fork\" d=\"M" + num(xs) + " " + num(bar_y - 5) + " l5 " + num(kBarHeight / 2 + 5) + " l-5 " +
              num(kBarHeight / 2 + 5) + " l-5 " + num(-(kBarHeight / 2 + 5)) + " z\" fill=\"" + kFork + "\"><title>" +
              esc(parent_words(*a.parent)) + "</title></path>\n");

    // Stop signals: a red flag at the moment they arrived.
    for (const auto& sig : a.signals) {
      double xg = ax.x(sig.time_ns);
      svg.line(xg, bar_y - 6, xg, bar_y + kBarHeight, kSignal, 1.6);
      svg.raw("  <path d=\"M" + num(xg) + " " + num(bar_y - 6) + " l7 3 l-7 3 z\" fill=\"" + kSignal + "\"/>\n");
    }
  }

  // Key: the few marks that are not words.
  double ky = axis_y + 58;
  double kx = kLeft;
  auto key = [&](const std::string& swatch, const std::string& label) {
    svg.raw(swatch);
    svg.text(kx + 18, ky + 9, esc(label), "font-size=\"11\" " + fill_attr(kMuted));
    kx += 18 + text_width(label, 6.2) + 18;
  };
  auto box = [&](const std::string& fill) {
    return "  <rect x=\"" + num(kx) + "\" y=\"" + num(ky) + "\" width=\"12\" height=\"11\" fill=\"" + fill + "\"/>\n";
  };
  key(box(kUseful), "work kept");
  key(box(kSave), "checkpoint save");
  key("  <line x1=\"" + num(kx + 6) + "\" y1=\"" + num(ky - 2) + "\" x2=\"" + num(kx + 6) + "\" y2=\"" + num(ky + 13) +
          "\" stroke=\"" + kCommit + "\" stroke-width=\"1.3\"/>\n",
      "commit (step below)");
  key(box("url(#lost)"), "lost work (after the last checkpoint)");
  key(box(kUnsaved), "not yet checkpointed");
  if (std::any_of(attempts.begin(), attempts.end(), [](const Attempt& a) { return a.parent.has_value(); }))
    key("  <path d=\"M" + num(kx + 6) + " " + num(ky - 1) + " l5 6.5 l-5 6.5 l-5 -6.5 z\" fill=\"" + kFork + "\"/>\n",
        "forked from another run (--init-from)");
  key("  <path d=\"M" + num(kx + 4) + " " + num(ky) + " l7 3 l-7 3 z\" fill=\"" + kSignal + "\"/>\n  <line x1=\"" +
          num(kx + 4) + "\" y1=\"" + num(ky) + "\" x2=\"" + num(kx + 4) + "\" y2=\"" + num(ky + 12) + "\" stroke=\"" +
          kSignal + "\" stroke-width=\"1.6\"/>\n",
      "stop signal");
  svg.raw("</svg>\n");
  return svg.str();
}

}  // namespace lifeline
