#include "policy/policy.h"

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>

#include "policy/units.h"

namespace lifeline {
namespace {

constexpr size_t kMaxPolicyBytes = 1 << 20;  // a policy file is a page of text, not a megabyte

// The keys one section accepts, in the order messages list them.
struct SectionKeys {
  const char* section;
  std::vector<const char*> keys;
};

std::string lower(const std::string& s) {
  std::string out;
  for (char c : s) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of
// neighbours each cost 1 ("every_step" -> "every_steps" is 1, "keep_lsat" -> "keep_last" 1).
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// The candidate a mistyped key most likely meant, or "" when none is close.
std::string closest(const std::string& typed, const std::vector<const char*>& candidates) {
  const std::string t = lower(typed);
  std::string best;
  if (t.size() > 64) return best;  // no key is that long; spare the quadratic distance
  size_t best_d = SIZE_MAX;
  for (const char* c : candidates) {
    const std::string cand = c;
    size_t d = edit_distance(t, cand);
    bool prefix = t.size() >= 4 && (cand.rfind(t, 0) == 0 || t.rfind(cand, 0) == 0);
    bool close = d <= 2 || d * 3 <= cand.size() || prefix;
    if (close && d < best_d) {
      best = cand;
      best_d = d;
    }
  }
  return best;
}

// A signal lifeline can trap, with its name without the SIG prefix.
struct NamedSignal {
  const char* name;
  int number;
};

const std::vector<NamedSignal>& catchable_signals() {
  static const std::vector<NamedSignal> kSignals = {
      {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"INT", SIGINT},
      {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"ALRM", SIGALRM}, {"XCPU", SIGXCPU},
#ifdef SIGPWR
      {"PWR", SIGPWR},
#endif
  };
  return kSignals;
}

std::string strip_sig(const std::string& name) {
  std::string up;
  for (char c : name) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (up.size() > 3 && up.compare(0, 3, "SIG") == 0) up.erase(0, 3);
  return up;
}

// Where a message points: 1-based line and column.
struct Where {
  int line = 1;
  int column = 1;
};

Where where(const YAML::Mark& m) {
  if (m.is_null() || m.line < 0 || m.column < 0) return Where{};
  return Where{m.line + 1, m.column + 1};
}

// The first tab in the indentation of a line (before its first other character), if any.
std::optional<Where> indentation_tab(const std::string& text) {
  int line = 1;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    for (size_t i = start; i < end && (text[i] == ' ' || text[i] == '\t'); ++i)
      if (text[i] == '\t') return Where{line, int(i - start) + 1};
    start = end + 1;
    ++line;
  }
  return std::nullopt;
}

// Text from the file as it may appear in a message: control characters as '?', at most 60
// characters.
std::string shown(const std::string& text) {
  std::string out;
  for (char c : text.substr(0, 60)) out += std::iscntrl(static_cast<unsigned char>(c)) ? '?' : c;
  if (text.size() > 60) out += "...";
  return out;
}

// What a node is, in words, for "expected X, got Y".
std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "nothing";
    case YAML::NodeType::Scalar:
      break;
  }
  if (n.Tag() == "!") return "the string \"" + shown(n.Scalar()) + "\"";
  return "'" + shown(n.Scalar()) + "'";
}

bool is_quoted(const YAML::Node& n) { return n.Tag() == "!"; }

// Notes where each YAML document starts and ignores everything else.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;

  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// Where a second document (or text the parser cannot place in the first) begins, if any.
// Parses at most two documents. Throws YAML::ParserException on a syntax error.
std::optional<YAML::Mark> second_document(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts events;
  for (int i = 0; i < 2 && parser.HandleNextDocument(events); ++i) {
  }
  if (events.starts.size() < 2) return std::nullopt;
  return events.starts[1];
}

// One problem with the file, and where it is (so that problems list in file order). Thrown by
// the reader's checks; the key being read catches it, records it and reading goes on.
struct Problem : PolicyError {
  Problem(Where w, const std::string& message) : PolicyError(message), at(w) {}
  Where at;
};

// One key's value and where it sits, handed to the typed readers.
struct Value {
  YAML::Node node;
  std::string path;  // "checkpoint.every_steps"
  Where at;          // the value, or the key when the value is empty
};

// Walks one YAML document into a Policy. A structural problem (YAML syntax, not a mapping, an
// empty file) throws PolicyError at once; a problem of one key is recorded and reading goes on
// with the next key, and the end throws one PolicyError listing them all in file order. Checks
// across keys run only when every key was read. Advice goes to warnings. Remembers where each
// key was given for cross-key checks.
class PolicyReader {
 public:
  PolicyReader(std::string source, std::vector<std::string>* warnings)
      : source_(std::move(source)), warnings_(warnings) {}

  Policy read(const std::string& text) {
    try {
      return read_all(text);
    } catch (const Problem& e) {  // a structural problem: the caller sees a plain PolicyError
      throw PolicyError(std::string(e.what()));
    }
  }

 private:
  Policy read_all(const std::string& text) {
    YAML::Node root;
    try {
      // Not YAML::LoadAll: in yaml-cpp 0.7 it loops forever on stray top-level text such
      // as a lone ",", because the parser then reports endless empty documents.
      std::optional<YAML::Mark> second = second_document(text);
      if (second)
        fail_at(where(*second), "",
                "a policy file holds one YAML document; another document or stray text starts "
                "here");
      root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
      // yaml-cpp's word for a tab in the indentation is "illegal map value" or the like.
      if (auto tab = indentation_tab(text))
        fail_at(*tab, "", "YAML syntax error: tabs are not allowed in YAML indentation; indent with spaces");
      fail_at(where(e.mark), "", "YAML syntax error: " + e.msg);
    } catch (const YAML::Exception& e) {
      fail_at(where(e.mark), "", "YAML error: " + e.msg);
    }
    if (root.IsNull())
      fail_at(Where{}, "", "the file is empty; a policy file needs at least 'version: 1'");

    Policy p = default_policy();
    p.source = source_;
    try {
      read_root(root, p);
    } catch (const YAML::Exception& e) {  // not expected: every read is checked first
      problem_at(where(e.mark), "", "YAML error: " + e.msg);
    }
    if (problems_.empty()) check_combinations(p);
    if (!problems_.empty()) {
      std::stable_sort(problems_.begin(), problems_.end(), [](const Problem& a, const Problem& b) {
        return std::pair(a.at.line, a.at.column) < std::pair(b.at.line, b.at.column);
      });
      std::vector<std::string> messages;
      for (const Problem& e : problems_) messages.emplace_back(e.what());
      throw PolicyError(messages);
    }
    advise(p);
    return p;
  }

  std::string message_at(Where w, const std::string& key, const std::string& message) const {
    return position(w) + (key.empty() ? "" : "key '" + key + "': ") + message;
  }
  [[noreturn]] void fail_at(Where w, const std::string& key, const std::string& message) const {
    throw Problem(w, message_at(w, key, message));
  }
  // Records a problem without stopping.
  void problem_at(Where w, const std::string& key, const std::string& message) const {
    problems_.emplace_back(w, message_at(w, key, message));
  }
  // Runs one key's read; a problem it finds is recorded, and reading goes on.
  template <typename Read>
  void recording(Read read) const {
    try {
      read();
    } catch (const Problem& e) {
      problems_.push_back(e);
    } catch (const YAML::Exception& e) {  // not expected: every read is checked first
      problem_at(where(e.mark), "", "YAML error: " + e.msg);
    }
  }
  [[noreturn]] void fail(const Value& v, const std::string& message) const {
    fail_at(v.at, v.path, message);
  }
  void warn_at(Where w, const std::string& key, const std::string& message) const {
    if (warnings_ != nullptr)
      warnings_->push_back(position(w) + "warning: key '" + key + "': " + message);
  }
  std::string position(Where w) const {
    return source_ + ":" + std::to_string(w.line) + ":" + std::to_string(w.column) + ": ";
  }

  // Where the value of `path` was given; else where its section was; else the top.
  Where at(const std::string& path) const {
    auto it = values_.find(path);
    if (it != values_.end()) return it->second;
    auto dot = path.find('.');
    if (dot != std::string::npos) {
      it = keys_.find(path.substr(0, dot));
      if (it != keys_.end()) return it->second;
    }
    return Where{};
  }
  bool given(const std::string& path) const { return values_.count(path) != 0; }

  // Checks a mapping's keys (plain, not repeated) and hands each value to `read_one`.
  template <typename ReadOne>
  void walk_map(const YAML::Node& map, const std::string& prefix, ReadOne read_one) {
    std::map<std::string, Where> seen;
    for (const auto& kv : map) {
      recording([&] {
        const YAML::Node& key = kv.first;
        const YAML::Node& value = kv.second;
        if (!key.IsScalar())
          fail_at(where(key.Mark()), prefix.empty() ? "?" : prefix,
                  "a key must be a plain name, got " + describe(key));
        const std::string name = key.Scalar();
        const std::string path = prefix.empty() ? shown(name) : prefix + "." + shown(name);
        const Where key_at = where(key.Mark());
        auto [first, fresh] = seen.emplace(name, key_at);
        if (!fresh)
          fail_at(key_at, path,
                  "duplicate key (first given at line " + std::to_string(first->second.line) +
                      ", column " + std::to_string(first->second.column) + ")");
        const Where value_at = value.IsNull() ? key_at : where(value.Mark());
        keys_[path] = key_at;
        values_[path] = value_at;
        read_one(name, Value{value, path, value_at}, key_at);
      });
    }
  }

  void read_root(const YAML::Node& root, Policy& p) {
    if (!root.IsMap())
      fail_at(where(root.Mark()), "",
              "expected a mapping of sections (" + fmt::format("{}", fmt::join(top_level_keys(), ", ")) + "), got " +
                  describe(root));
    bool have_version = false;
    walk_map(root, "", [&](const std::string& name, const Value& v, Where key_at) {
      if (name == "version") {
        have_version = true;  // a bad value is its own problem, not a missing version
        uint64_t version = read_uint(v);
        if (version != 1)
          fail(v, "unsupported version " + std::to_string(version) +
                      "; this lifeline reads version 1");
        return;
      }
      for (const auto& s : schema()) {
        if (name == s.section) {
          read_section(v, s, p);
          return;
        }
      }
      unknown_key(name, v.path, key_at, top_level_keys(), "");
    });
    if (!have_version)
      problem_at(where(root.Mark()), "version", "missing; a policy file starts with 'version: 1'");
  }

  void read_section(const Value& section, const SectionKeys& keys, Policy& p) {
    if (section.node.IsNull()) return;  // "checkpoint:" with nothing under it: all defaults
    if (!section.node.IsMap())
      fail(section, std::string("expected a mapping of keys (e.g. '") + keys.keys[0] +
                        ": ...'), got " + describe(section.node));
    walk_map(section.node, section.path,
             [&](const std::string& name, const Value& v, Where key_at) {
               if (!assign(keys.section, name, v, p))
                 unknown_key(name, v.path, key_at, keys.keys, keys.section);
             });
  }

  // How one key of the file is read into the policy.
  struct Field {
    const char* section;
    const char* key;
    void (*read)(const PolicyReader&, const Value&, Policy&);
  };

  // Every key a policy file may hold, section by section, in the order messages list them:
  // the one place to add a key.
  static const std::vector<Field>& fields() {
    using R = const PolicyReader&;
    using V = const Value&;
    static const std::vector<Field> kFields = {
        {"checkpoint", "dir", [](R r, V v, Policy& p) { p.checkpoint.dir = r.read_dir(v); }},
        {"checkpoint", "every_steps",
         [](R r, V v, Policy& p) { p.checkpoint.every_steps = r.read_uint(v); }},
        {"checkpoint", "every_seconds",
         [](R r, V v, Policy& p) { p.checkpoint.every_seconds = r.read_duration(v); }},
        {"checkpoint", "on_signal",
         [](R r, V v, Policy& p) { p.checkpoint.on_signal = r.read_bool(v); }},
        {"checkpoint", "skip_first_steps",
         [](R r, V v, Policy& p) { p.checkpoint.skip_first_steps = r.read_uint(v); }},

        {"retention", "keep_last",
         [](R r, V v, Policy& p) { p.retention.keep_last = r.read_uint(v); }},
        {"retention", "keep_best",
         [](R r, V v, Policy& p) { p.retention.keep_best = r.read_uint(v); }},
        {"retention", "metric", [](R r, V v, Policy& p) { p.retention.metric = r.read_string(v); }},
        {"retention", "mode",
         [](R r, V v, Policy& p) {
           p.retention.mode =
               r.read_choice(v, {"min", "max"}) == "min" ? Policy::Mode::min : Policy::Mode::max;
         }},
        {"retention", "keep_every_steps",
         [](R r, V v, Policy& p) { p.retention.keep_every_steps = r.read_uint(v); }},
        {"retention", "max_total_bytes",
         [](R r, V v, Policy& p) { p.retention.max_total_bytes = r.read_size(v); }},

        {"restart", "resume",
         [](R r, V v, Policy& p) {
           const std::string m = r.read_choice(v, {"auto", "required", "off"});
           p.restart.resume = m == "auto"       ? Policy::Resume::automatic
                              : m == "required" ? Policy::Resume::required
                                                : Policy::Resume::off;
         }},
        {"restart", "max_requeues",
         [](R r, V v, Policy& p) { p.restart.max_requeues = r.read_uint(v); }},
        {"restart", "max_failures",
         [](R r, V v, Policy& p) { p.restart.max_failures = r.read_uint(v); }},
        {"restart", "backoff_seconds",
         [](R r, V v, Policy& p) { p.restart.backoff_seconds = r.read_duration(v); }},
        {"restart", "max_backoff_seconds",
         [](R r, V v, Policy& p) { p.restart.max_backoff_seconds = r.read_duration(v); }},

        {"stop", "signals", [](R r, V v, Policy& p) { p.stop.signals = r.read_signals(v); }},
        {"stop", "grace_seconds",
         [](R r, V v, Policy& p) { p.stop.grace_seconds = r.read_duration(v); }},
        {"stop", "hang_seconds",
         [](R r, V v, Policy& p) { p.stop.hang_seconds = r.read_duration(v); }},

        {"storage", "local",
         [](R r, V v, Policy& p) {
           p.storage.local_spec = r.read_string(v);
           p.storage.local = r.read_dir_later(v);
         }},
        {"storage", "drain",
         [](R r, V v, Policy& p) { p.storage.drain = r.read_choice(v, {"async", "off"}) == "async"; }},
        {"storage", "keep_local",
         [](R r, V v, Policy& p) {
           p.storage.keep_local = r.read_uint(v);
           if (p.storage.keep_local == 0) r.fail(v, "must be at least 1: the newest local checkpoint is what a drain copies");
         }},
        {"storage", "drain_bandwidth", [](R r, V v, Policy& p) { p.storage.drain_bandwidth = r.read_rate(v); }},

        {"requeue", "mode",
         [](R r, V v, Policy& p) {
           p.requeue.mode =
               r.read_choice(v, {"auto", "scontrol", "sbatch", "exit", "local", "none"});
         }},
        {"requeue", "exit_code",
         [](R r, V v, Policy& p) {
           int64_t code = r.read_int(v);
           if (code < 1 || code > 255)
             r.fail(v, "must be between 1 and 255, got " + std::to_string(code));
           p.requeue.exit_code = static_cast<int>(code);
         }},
    };
    return kFields;
  }

  // The sections and their keys, derived from fields().
  static const std::vector<SectionKeys>& schema() {
    static const std::vector<SectionKeys> kSchema = [] {
      std::vector<SectionKeys> out;
      for (const Field& f : fields()) {
        if (out.empty() || std::strcmp(out.back().section, f.section) != 0)
          out.push_back({f.section, {}});
        out.back().keys.push_back(f.key);
      }
      return out;
    }();
    return kSchema;
  }

  static const std::vector<const char*>& top_level_keys() {
    static const std::vector<const char*> kTop = [] {
      std::vector<const char*> out = {"version"};
      for (const SectionKeys& s : schema()) out.push_back(s.section);
      return out;
    }();
    return kTop;
  }

  // Reads one known key into p; false when the key is not part of the section.
  bool assign(const std::string& section, const std::string& key, const Value& v, Policy& p) const {
    for (const Field& f : fields()) {
      if (section == f.section && key == f.key) {
        f.read(*this, v, p);
        return true;
      }
    }
    return false;
  }

  [[noreturn]] void unknown_key(const std::string& name, const std::string& path, Where key_at,
                                const std::vector<const char*>& here, const std::string& section) {
    const std::string lname = lower(name);
    // Right name, wrong place: a section indented under another, or a key in the wrong section.
    if (!section.empty()) {
      for (const auto& s : schema())
        if (lname == s.section)
          fail_at(key_at, path, "'" + name + "' is a top-level section; un-indent it");
    }
    std::string homes;
    for (const auto& s : schema()) {
      if (s.section == section) continue;
      for (const char* k : s.keys)
        if (lname == k) homes += (homes.empty() ? "'" : " or '") + std::string(s.section) + "'";
    }
    if (!homes.empty())
      fail_at(key_at, path, "unknown key; '" + lname + "' belongs under " + homes);
    std::string guess = closest(name, here);
    if (!guess.empty()) fail_at(key_at, path, "unknown key; did you mean '" + guess + "'?");
    fail_at(key_at, path, "unknown key; expected one of: " + fmt::format("{}", fmt::join(here, ", ")));
  }

  // --- typed readers ---------------------------------------------------------------

  const std::string& scalar(const Value& v, const char* expected) const {
    if (!v.node.IsScalar())
      fail(v, std::string("expected ") + expected + ", got " + describe(v.node));
    return v.node.Scalar();
  }

  int64_t read_int(const Value& v) const {
    const std::string& s = scalar(v, "a whole number");
    if (is_quoted(v.node))
      fail(v, "expected a whole number, got " + describe(v.node) + " (remove the quotes)");
    int64_t n = 0;
    const char* end = s.data() + s.size();
    auto [p, ec] = std::from_chars(s.data(), end, n);
    if (ec == std::errc() && p == end) return n;
    if (ec == std::errc::result_out_of_range && p == end) fail(v, "too large, got " + shown(s));
    double d = 0;
    auto [pd, ecd] = std::from_chars(s.data(), end, d);
    if (ecd == std::errc() && pd == end) fail(v, "expected a whole number, got " + shown(s));
    fail(v, "expected a whole number, got " + describe(v.node));
  }

  uint64_t read_uint(const Value& v) const {
    const std::string& s = scalar(v, "a whole number");
    if (!is_quoted(v.node) && !s.empty() && s[0] == '-') {
      double d = 0;
      auto [pd, ecd] = std::from_chars(s.data(), s.data() + s.size(), d);
      if (ecd == std::errc() && pd == s.data() + s.size())
        fail(v, "must not be negative, got " + shown(s));
    }
    if (!is_quoted(v.node) && !s.empty() && std::isdigit(static_cast<unsigned char>(s[0]))) {
      uint64_t n = 0;
      const char* end = s.data() + s.size();
      auto [p, ec] = std::from_chars(s.data(), end, n);
      if (ec == std::errc() && p == end) return n;
      if (ec == std::errc::result_out_of_range && p == end) fail(v, "too large, got " + shown(s));
    }
    return static_cast<uint64_t>(read_int(v));  // not a plain number: read_int says why
  }

  double read_duration(const Value& v) const {
    const std::string& s = scalar(v, "a duration like 90s, 30m or 2h");
    try {
      return parse_duration(s);
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  uint64_t read_size(const Value& v) const {
    const std::string& s = scalar(v, "a size like 500MB or 50GiB");
    try {
      return parse_size(s);
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  bool read_bool(const Value& v) const {
    scalar(v, "true or false");
    bool b = false;
    if (is_quoted(v.node) || !YAML::convert<bool>::decode(v.node, b))
      fail(v, "expected true or false, got " + describe(v.node));
    return b;
  }

  std::string read_string(const Value& v) const { return scalar(v, "a name"); }

  std::string read_choice(const Value& v, const std::vector<const char*>& choices) const {
    const std::string want = "one of " + fmt::format("{}", fmt::join(choices, ", "));
    const std::string s = lower(scalar(v, want.c_str()));
    for (const char* c : choices)
      if (s == c) return c;
    fail(v, "expected " + want + "; got " + describe(v.node));
  }

  std::vector<int> read_signals(const Value& v) const {
    if (!v.node.IsSequence())
      fail(v, "expected a list of signal names like [USR1, TERM, INT], got " + describe(v.node));
    std::vector<int> out;
    for (size_t i = 0; i < v.node.size(); ++i) {
      recording([&] {  // each bad name is its own problem
        const YAML::Node item = v.node[i];
        Value iv{item, v.path + "[" + std::to_string(i) + "]",
                 item.IsNull() ? v.at : where(item.Mark())};
        const std::string name = scalar(iv, "a signal name like USR1");
        const std::string bare = strip_sig(name);
        if (bare == "KILL" || bare == "STOP")
          fail(iv, "SIG" + bare + " cannot be caught; use USR1, TERM or INT");
        std::optional<int> sig = signal_from_name(name);
        if (!sig) {
          std::vector<const char*> names;
          for (const auto& s : catchable_signals()) names.push_back(s.name);
          fail(iv, "unknown signal '" + shown(name) + "'; expected one of " + fmt::format("{}", fmt::join(names, ", ")));
        }
        if (std::find(out.begin(), out.end(), *sig) != out.end())
          fail(iv, signal_name(*sig) + " is listed twice");
        out.push_back(*sig);
      });
    }
    return out;
  }

  std::string read_dir(const Value& v) const {
    const std::string& s = scalar(v, "a directory path");
    try {
      return expand_variables(s, [](const std::string& name) { return std::getenv(name.c_str()); });
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  // A directory whose variables may be set only where the job runs ($TMPDIR on a compute node):
  // "" when one is unset here (the supervisor expands it again and refuses then).
  std::string read_dir_later(const Value& v) const {
    const std::string& s = scalar(v, "a directory path");
    try {
      return expand_variables(s, [](const std::string& name) { return std::getenv(name.c_str()); });
    } catch (const std::invalid_argument& e) {
      warn_at(v.at, v.path, std::string(e.what()) + " here; it is expanded again where the job runs");
      return "";
    }
  }

  // Bytes per second: a size, optionally followed by "/s" ("200MB/s", "1GiB"); 0 = unlimited.
  uint64_t read_rate(const Value& v) const {
    std::string s = scalar(v, "a rate like 200MB/s");
    if (s.size() > 2 && s.compare(s.size() - 2, 2, "/s") == 0) s.resize(s.size() - 2);
    try {
      return parse_size(s);
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  // --- checks across keys ----------------------------------------------------------

  void check_combinations(const Policy& p) const {
    if (p.retention.keep_best > 0 && p.retention.metric.empty())
      problem_at(at("retention.metric"), "retention.metric",
              "empty, but keep_best is " + std::to_string(p.retention.keep_best) +
                  "; name the metric to rank by, or set keep_best: 0");
    if (p.restart.max_backoff_seconds < p.restart.backoff_seconds) {
      const char* key = given("restart.max_backoff_seconds") ? "restart.max_backoff_seconds"
                                                             : "restart.backoff_seconds";
      problem_at(at(key), key,
              "max_backoff_seconds (" + format_duration(p.restart.max_backoff_seconds) +
                  ") is shorter than backoff_seconds (" +
                  format_duration(p.restart.backoff_seconds) + ")");
    }
  }

  void advise(const Policy& p) const {
    const auto& c = p.checkpoint;
    const auto& r = p.retention;
    if (c.every_steps == 0 && c.every_seconds == 0 && !c.on_signal)
      warn_at(at("checkpoint.on_signal"), "checkpoint",
              "every_steps, every_seconds and on_signal are all off: lifeline never asks for "
              "a checkpoint, so only those the trainer makes on its own will exist");
    if (c.on_signal && p.stop.signals.empty())
      warn_at(at("stop.signals"), "stop.signals", "empty, so checkpoint.on_signal never fires");
    if (c.on_signal && !p.stop.signals.empty() && p.stop.grace_seconds == 0)
      warn_at(at("stop.grace_seconds"), "stop.grace_seconds",
              "0 while checkpoint.on_signal is true: a stop checkpoint gets no time to finish");
    if (p.storage.enabled() && !p.storage.drain)
      warn_at(at("storage.drain"), "storage.drain",
              "off: checkpoints stay on the node-local disk only; a job that comes back on another node "
              "starts from what the checkpoint dir holds");
    if (p.restart.resume == Policy::Resume::off)
      warn_at(at("restart.resume"), "restart.resume",
              "off: every requeue and restart begins training from scratch");
    if (r.keep_every_steps > 0 && c.every_steps > 0 && r.keep_every_steps % c.every_steps != 0) {
      uint64_t both = std::lcm(r.keep_every_steps, c.every_steps);
      warn_at(at("retention.keep_every_steps"), "retention.keep_every_steps",
              std::to_string(r.keep_every_steps) +
                  " is not a multiple of checkpoint.every_steps (" + std::to_string(c.every_steps) +
                  "): of the periodic checkpoints only those at multiples of " +
                  std::to_string(both) + " are kept forever");
    }
  }

  std::string source_;
  std::vector<std::string>* warnings_;
  std::map<std::string, Where> keys_;    // path -> where the key was written
  std::map<std::string, Where> values_;  // path -> where its value was written
  mutable std::vector<Problem> problems_;  // per-key problems so far, in the order found
};

}  // namespace

namespace {

std::string joined_lines(const std::vector<std::string>& messages) {
  std::string out;
  for (const std::string& m : messages) out += (out.empty() ? "" : "\n") + m;
  return out;
}

}  // namespace

PolicyError::PolicyError(const std::vector<std::string>& messages)
    : std::runtime_error(joined_lines(messages)),
      messages_(std::make_shared<const std::vector<std::string>>(messages)) {}

std::vector<std::string> PolicyError::messages() const {
  if (messages_) return *messages_;
  return {what()};
}

Policy default_policy() { return Policy{}; }

Policy parse_policy(const std::string& yaml_text, const std::string& source_name,
                    std::vector<std::string>& warnings) {
  return PolicyReader(source_name, &warnings).read(yaml_text);
}

Policy parse_policy(const std::string& yaml_text, const std::string& source_name) {
  return PolicyReader(source_name, nullptr).read(yaml_text);
}

Policy load_policy_file(const std::string& path, std::vector<std::string>& warnings) {
  struct CloseFile {  // Closes the policy file however reading ends.
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, CloseFile> f(std::fopen(path.c_str(), "rb"));
  if (!f) throw PolicyError(path + ": cannot open policy file: " + std::strerror(errno));
  std::string text;
  std::array<char, 8192> buf;
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    text.append(buf.data(), n);
    if (text.size() > kMaxPolicyBytes)
      throw PolicyError(path + ": larger than 1 MiB; this is not a policy file");
  }
  if (std::ferror(f.get()))
    throw PolicyError(path + ": cannot read policy file: " + std::strerror(errno));
  return parse_policy(text, path, warnings);
}

Policy load_policy_file(const std::string& path) {
  std::vector<std::string> ignored;
  return load_policy_file(path, ignored);
}

std::string expand_variables(const std::string& text,
                             const std::function<const char*(const std::string&)>& lookup) {
  auto name_char = [](char c, bool first) {
    return c == '_' || std::isalpha(static_cast<unsigned char>(c)) ||
           (!first && std::isdigit(static_cast<unsigned char>(c)));
  };
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '$' || i + 1 == text.size()) {
      out += text[i++];
      continue;
    }
    std::string name;
    if (text[i + 1] == '$') {
      out += '$';
      i += 2;
      continue;
    } else if (text[i + 1] == '{') {
      size_t close = text.find('}', i + 2);
      if (close == std::string::npos)
        throw std::invalid_argument("'${' without a closing '}' in \"" + shown(text) + "\"");
      name = text.substr(i + 2, close - i - 2);
      bool ok = !name.empty();
      for (size_t k = 0; k < name.size(); ++k) ok = ok && name_char(name[k], k == 0);
      if (!ok)
        throw std::invalid_argument("'${" + shown(name) +
                                    "}' is not a variable name (letters, digits and _; "
                                    "write $$ for a literal $)");
      i = close + 1;
    } else if (name_char(text[i + 1], true)) {
      size_t j = i + 1;
      while (j < text.size() && name_char(text[j], false)) ++j;
      name = text.substr(i + 1, j - i - 1);
      i = j;
    } else {
      out += text[i++];  // a lone $ stays, as in the shell
      continue;
    }
    const char* value = lookup(name);
    if (value == nullptr)
      throw std::invalid_argument("environment variable " + name + " is not set");
    if (*value == '\0')
      throw std::invalid_argument("environment variable " + name + " is set but empty");
    out += value;
  }
  return out;
}

const char* to_string(Policy::Mode mode) { return mode == Policy::Mode::min ? "min" : "max"; }

const char* to_string(Policy::Resume resume) {
  switch (resume) {
    case Policy::Resume::automatic:
      return "auto";
    case Policy::Resume::required:
      return "required";
    case Policy::Resume::off:
      return "off";
  }
  return "auto";
}

std::string signal_name(int signo) {
  for (const auto& s : catchable_signals())
    if (s.number == signo) return s.name;
  return std::to_string(signo);
}

std::optional<int> signal_from_name(const std::string& name) {
  const std::string bare = strip_sig(name);
  for (const auto& s : catchable_signals())
    if (bare == s.name) return s.number;
  return std::nullopt;
}

}  // namespace lifeline
