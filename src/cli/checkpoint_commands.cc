// `lifeline checkpoints` and `lifeline verify`: what is in a checkpoint directory, and which
// checkpoint a resume would use.
#include <fmt/format.h>

#include <cstdio>
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/table.h"
#include "common/clock.h"
#include "common/format.h"
#include "common/host.h"
#include "common/json_text.h"
#include "history/live_status.h"
#include "store/checkpoint_store.h"
#include "store/dir_safety.h"

namespace lifeline::cli {

namespace {

std::string metrics_text(const CheckpointInfo& c) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : c.metrics) parts.push_back(fmt::format("{}={:g}", k, v));
  return fmt::format("{}", fmt::join(parts, " "));
}

}  // namespace

void register_checkpoint_commands(CLI::App& app, int& rc) {
  {
    auto* sub = app.add_subcommand("checkpoints", "list checkpoints with their validity");
    auto dir = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    auto quick = std::make_shared<bool>(false);
    sub->add_option("DIR", *dir, "checkpoint directory");
    sub->add_flag("--json", *as_json, "JSON array (docs/contract.md)");
    sub->add_flag("--quick", *quick, "check manifests and sizes only, not checksums");
    sub->callback([=, &rc] {
      std::string d = resolve_ckpt_dir(*dir);
      if (std::string why = checkpoint_dir_problem(d); !why.empty()) {
        std::fprintf(stderr, "lifeline checkpoints: %s\n", why.c_str());
        rc = 2;
        return;
      }
      VerifyMode mode = *quick ? VerifyMode::quick : VerifyMode::full;
      auto list = list_checkpoints(d, mode);
      // A node-local tier (docs/storage.md): its checkpoints too, when its directory is on this host.
      std::vector<std::string> tiers(list.size(), "shared");
      nlohmann::json tier = tier_status(d);
      bool tiered = tier.is_object();
      if (tiered && tier.value("host", std::string()) == this_host() && tier["local_dir"].is_string()) {
        std::map<uint64_t, size_t> at;
        for (size_t i = 0; i < list.size(); ++i) at[list[i].step] = i;
        for (auto& c : list_checkpoints(tier["local_dir"].get<std::string>(), mode)) {
          auto it = at.find(c.step);
          if (it != at.end() && list[it->second].valid) {
            tiers[it->second] = "both";
          } else if (it != at.end()) {
            list[it->second] = c;  // the shared copy is damaged: the local one is what a resume here uses
            tiers[it->second] = "local";
          } else {
            list.push_back(c);
            tiers.push_back("local");
          }
        }
        std::vector<size_t> order(list.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return list[a].step < list[b].step; });
        std::vector<CheckpointInfo> l2;
        std::vector<std::string> t2;
        for (size_t i : order) l2.push_back(list[i]), t2.push_back(tiers[i]);
        list.swap(l2);
        tiers.swap(t2);
      }
      if (*as_json) {
        nlohmann::json arr = nlohmann::json::array();
        for (size_t i = 0; i < list.size(); ++i) {
          nlohmann::json o = checkpoint_object(list[i]);
          if (tiered) o["tier"] = tiers[i];
          arr.push_back(o);
        }
        std::printf("%s\n", dump_json(arr, 2).c_str());
      } else if (list.empty()) {
        std::printf("no checkpoints in %s\n", d.c_str());
      } else {
        std::vector<TableColumn> columns = {{"STEP"}, {"VALID"}};
        if (tiered) columns.push_back({"TIER"});
        columns.insert(columns.end(), {{"SIZE"}, {"CREATED"}, {"METRICS / PROBLEM", true}});
        Table table(columns);
        for (size_t i = 0; i < list.size(); ++i) {
          const auto& c = list[i];
          std::vector<std::string> row = {std::to_string(c.step), c.valid ? "yes" : "NO"};
          if (tiered) row.push_back(tiers[i]);
          row.insert(row.end(), {format_bytes(c.bytes), c.created_ns ? iso8601(c.created_ns) : "-",
                                 c.valid ? metrics_text(c) : c.problem});
          table.add(row);
        }
        std::fputs(table.render(output_width()).c_str(), stdout);
        if (tiered && tier.value("host", std::string()) != this_host())
          std::printf("(the node-local tier is on %s: its checkpoints are not listed from here)\n",
                      tier.value("host", std::string("?")).c_str());
      }
      rc = 0;
    });
  }
  {
    auto* sub = app.add_subcommand("verify", "which checkpoint a resume would use, and why");
    auto dir = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    sub->add_option("DIR", *dir, "checkpoint directory");
    sub->add_flag("--json", *as_json, "JSON object {resume, skipped}");
    sub->callback([=, &rc] {
      std::string d = resolve_ckpt_dir(*dir);
      if (std::string why = checkpoint_dir_problem(d); !why.empty()) {
        std::fprintf(stderr, "lifeline verify: %s\n", why.c_str());
        rc = 2;
        return;
      }
      ResumeChoice choice = choose_resume(d);
      if (*as_json) {
        nlohmann::json j;
        j["resume"] = choice.resume ? checkpoint_object(*choice.resume) : nlohmann::json(nullptr);
        j["skipped"] = nlohmann::json::array();
        for (const auto& s : choice.skipped) j["skipped"].push_back(checkpoint_object(s));
        std::printf("%s\n", dump_json(j, 2).c_str());
      } else {
        for (const auto& s : choice.skipped)
          std::printf("skip   step %llu: %s\n", static_cast<unsigned long long>(s.step), s.problem.c_str());
        if (choice.resume)
          std::printf("resume step %llu from %s\n", static_cast<unsigned long long>(choice.resume->step),
                      choice.resume->path.c_str());
        else
          std::printf("no valid checkpoint in %s: a run would start from scratch\n", d.c_str());
      }
      rc = choice.resume ? 0 : 1;
    });
  }
}

}  // namespace lifeline::cli
