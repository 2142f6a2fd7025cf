#pragma once
// build_app: the whole `lifeline` command tree (every subcommand registered), built in one place
// so that main, the man-page and completion generator and the tests all see the same CLI.
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

namespace lifeline::cli {

// The version `lifeline --version` prints and the man pages carry (meson's project version).
std::string version();

// The `lifeline` App with every subcommand; the chosen command's exit status goes into `rc`,
// which must outlive the App.
std::unique_ptr<CLI::App> build_app(int& rc);

}  // namespace lifeline::cli
