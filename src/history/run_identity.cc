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
  if (j.contains("parent")) id.parent = parent_from_json(j["parent"]);
  return id;
}

bool write_run_identity(const std::string& dir, const RunIdentity& id, std::string* error) {
  json j{{"run_id", id.run_id ? json(*id.run_id) : json(nullptr)},
         {"command", id.command},
         {"policy", id.policy},
         {"completed", id.completed},
         {"parent", parent_json(id.parent)}};
  return write_status_file(dir, kRunIdentityName, dump_json(j, 2) + "\n", error, /*durable=*/true);
}

json parent_json(const std::optional<RunParent>& p) {
  if (!p) return nullptr;
  return {{"dir", p->dir},
          {"lineage", p->lineage.empty() ? json(nullptr) : json(p->lineage)},
          {"step", p->step},
          {"checkpoint", p->checkpoint}};
}

std::optional<RunParent> parent_from_json(const json& j) {
  if (!j.is_object() || !j.contains("dir") || !j["dir"].is_string()) return std::nullopt;
  RunParent p;
  p.dir = j["dir"].get<std::string>();
  if (j.contains("lineage") && j["lineage"].is_string()) p.lineage = j["lineage"].get<std::string>();
  if (j.contains("step") && j["step"].is_number_unsigned()) p.step = j["step"].get<uint64_t>();
  if (j.contains("checkpoint") && j["checkpoint"].is_string()) p.checkpoint = j["checkpoint"].get<std::string>();
  return p;
}

std::string parent_words(const RunParent& p) {
  return "forked from " + p.dir + " (lineage " + (p.lineage.empty() ? std::string("unknown") : p.lineage) + ", step " +
         std::to_string(p.step) + ")";
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
