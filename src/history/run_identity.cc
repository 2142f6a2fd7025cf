#include "history/run_identity.h"

#include <nlohmann/json.hpp>

#include "common/json_text.h"
#include "common/regular_file.h"
#include "history/supervisor_record.h"

namespace lifeline {

using json = nlohmann::json;

std::optional<RunIdentity> read_run_identity(const std::string& dir, std::string* error) {
  std::string text, why;
  if (!read_regular_file(dir + "/" + kRunIdentityName, 1 << 20, text, why)) {
    if (error) *error = why;
    return std::nullopt;
  }
  json j = json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("command") || !j["command"].is_array()) {
    if (error) *error = dir + "/" + kRunIdentityName + ": not a run identity (a JSON object with a command)";
    return std::nullopt;
  }
  RunIdentity id;
  if (j.contains("run_id") && j["run_id"].is_string()) id.run_id = j["run_id"].get<std::string>();
  for (const auto& w : j["command"])
    if (w.is_string()) id.command.push_back(w.get<std::string>());
  if (j.contains("policy") && j["policy"].is_string()) id.policy = j["policy"].get<std::string>();
  id.completed = j.value("completed", false);
  return id;
}

bool write_run_identity(const std::string& dir, const RunIdentity& id, std::string* error) {
  json j{{"run_id", id.run_id ? json(*id.run_id) : json(nullptr)},
         {"command", id.command},
         {"policy", id.policy},
         {"completed", id.completed}};
  return write_status_file(dir, kRunIdentityName, dump_json(j, 2) + "\n", error, /*durable=*/true);
}

std::string command_words(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& w : argv) {
    if (!out.empty()) out += ' ';
    bool plain = !w.empty() && w.find_first_of(" \t\n'\"\\$`*?[]{}()<>|&;#~") == std::string::npos;
    if (plain) {
      out += w;
    } else {
      out += '\'';
      for (char c : w) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

IdentityCheck check_run_identity(const RunIdentity& was, const RunIdentity& now) {
  IdentityCheck c;
  if (was.run_id && now.run_id) {
    if (*was.run_id == *now.run_id) return c;  // named the same: the user says it is one run
    c.verdict = IdentityCheck::Verdict::refuse;
    c.why = "it holds run '" + *was.run_id + "', this is run '" + *now.run_id + "'";
    return c;
  }
  if (was.command == now.command) return c;
  c.why = "its run's command was `" + command_words(was.command) + "`, this one is `" + command_words(now.command) + "`";
  c.verdict = was.completed ? IdentityCheck::Verdict::refuse : IdentityCheck::Verdict::changed;
  return c;
}

}  // namespace lifeline
