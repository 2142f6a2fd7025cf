// `lifeline checkpoints` and `lifeline verify`: what is in a checkpoint directory, and which
// checkpoint a resume would use.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/clock.h"
#include "common/format.h"
#include "common/json_text.h"
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
      auto list = list_checkpoints(d, *quick ? VerifyMode::quick : VerifyMode::full);
      if (*as_json) {
        nlohmann::json arr = nlohmann::json::array();
        for (const auto& c : list) arr.push_back(checkpoint_object(c));
        std::printf("%s\n", dump_json(arr, 2).c_str());
      } else if (list.empty()) {
        std::printf("no checkpoints in %s\n", d.c_str());
      } else {
        std::printf("%-10s %-7s %10s  %-24s %s\n", "STEP", "VALID", "SIZE", "CREATED", "METRICS / PROBLEM");
        for (const auto& c : list)
          std::printf("%-10llu %-7s %10s  %-24s %s\n", static_cast<unsigned long long>(c.step),
                      c.valid ? "yes" : "NO", format_bytes(c.bytes).c_str(),
                      c.created_ns ? iso8601(c.created_ns).c_str() : "-",
                      c.valid ? metrics_text(c).c_str() : c.problem.c_str());
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
