#pragma once
// Each `lifeline` subcommand registers itself on the CLI11 app; the chosen command's exit
// status is stored in `rc` (0 success, 1 "no", 2 usage or input error; `run`: README.md, "Exit status"; docs/contract.md).
#include <CLI/CLI.hpp>
#include <string>

namespace lifeline::cli {

void register_run_command(CLI::App& app, int& rc);
void register_checkpoint_commands(CLI::App& app, int& rc);   // checkpoints, verify
void register_policy_commands(CLI::App& app, int& rc);       // policy check, policy explain
void register_gc_command(CLI::App& app, int& rc);            // gc
void register_history_commands(CLI::App& app, int& rc);      // history, status, request

// DIR if given, else $LIFELINE_CKPT_DIR, else ./checkpoints; made absolute.
std::string resolve_ckpt_dir(const std::string& given, const std::string& policy_dir = "");

}  // namespace lifeline::cli
