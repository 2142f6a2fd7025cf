#include "store/init_from.h"

#include <sys/stat.h>

#include <filesystem>

#include "store/dir_safety.h"
#include "store/file_system.h"
#include "store/manifest.h"

namespace lifeline {

namespace fs = std::filesystem;

namespace {

// `p` absolute, links resolved as far as the path exists, normal form.
fs::path real(const std::string& p) {
  std::error_code ec;
  fs::path abs = fs::absolute(fs::path(p), ec);
  if (ec) abs = fs::path(p);
  fs::path r = fs::weakly_canonical(abs, ec);
  return (ec ? abs : r).lexically_normal();
}

// True when `inner` is `outer` or inside it (component by component).
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty() && std::next(o) == outer.end()) break;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

std::string skipped_words(const std::vector<CheckpointInfo>& skipped) {
  std::string out;
  for (const auto& s : skipped) out += "\n  skipped " + s.path + " (step " + std::to_string(s.step) + "): " + s.problem;
  return out;
}

}  // namespace

std::string init_from_path_problem(const std::string& path, const std::string& ckpt_dir, const std::string& local_dir) {
  if (path.empty()) return "--init-from: an empty path";
  fs::path src = real(path);
  for (const std::string& d : {ckpt_dir, local_dir}) {
    if (d.empty()) continue;
    fs::path own = real(d);
    if (within(src, own))
      return "--init-from " + path + ": it is " + (src == own ? "" : "inside ") + "this run's own checkpoint directory " +
             d + "; a fork starts from another run's checkpoints (a run resumes from its own without --init-from)";
    if (within(own, src))
      return "--init-from " + path + ": this run's checkpoint directory " + d +
             " is inside it; give the new run a directory outside the source run's";
  }
  return "";
}

std::optional<InitSource> resolve_init_from(const std::string& path, std::string* error) {
  auto fail = [&](const std::string& why) -> std::optional<InitSource> {
    if (error) *error = why;
    return std::nullopt;
  };
  InitSource s;
  s.given = real(path).string();
  struct stat st {};
  if (::stat(s.given.c_str(), &st) != 0) return fail("--init-from " + path + ": no such checkpoint directory or folder");
  if (!S_ISDIR(st.st_mode)) return fail("--init-from " + path + ": not a directory (a checkpoint directory or one checkpoint folder)");
  bool one_folder = step_from_folder_name(fs::path(s.given).filename().string()).has_value() ||
                    ::stat((s.given + "/" + kManifestName).c_str(), &st) == 0;
  if (one_folder) {
    s.dir = fs::path(s.given).parent_path().string();
    CheckpointInfo info = verify_checkpoint(s.given, VerifyMode::full);
    if (!info.valid) return fail("--init-from " + path + ": the checkpoint is not valid: " + info.problem);
    s.checkpoint = std::move(info);
  } else {
    s.dir = s.given;
    if (std::string why = checkpoint_dir_problem(s.dir); !why.empty()) return fail("--init-from " + path + ": " + why);
    ResumeChoice c = choose_resume(s.dir);
    if (!c.resume) {
      if (c.skipped.empty()) return fail("--init-from " + path + ": no checkpoint in it (no step-* folder)");
      return fail("--init-from " + path + ": no valid checkpoint in it" + skipped_words(c.skipped));
    }
    s.checkpoint = std::move(*c.resume);
    s.skipped = std::move(c.skipped);
  }
  FileRead text = default_file_system().read_file(s.checkpoint.path + "/" + kManifestName, kMaxManifestBytes);
  if (text.error == 0) {
    try {
      s.lineage = manifest_from_json(text.content).lineage;
    } catch (const std::exception&) {
      // verified a moment ago: a lineage is only for the record
    }
  }
  return s;
}

std::string init_from_world_problem(const InitSource& source, uint32_t world_size, bool reshard) {
  if (reshard || source.checkpoint.world_size == world_size) return "";
  return "--init-from " + source.given + ": checkpoint " + source.checkpoint.path + " was written by " +
         std::to_string(source.checkpoint.world_size) + " rank(s), this run has " + std::to_string(world_size) +
         ": start it with the same world size, or set LIFELINE_RESHARD=1 if the trainer reshards a checkpoint itself";
}

bool has_own_checkpoint(const std::string& dir) {
  auto folders = checkpoint_folders(dir);
  for (auto it = folders.rbegin(); it != folders.rend(); ++it)
    if (verify_checkpoint(dir + "/" + it->second, VerifyMode::quick).valid) return true;
  return false;
}

}  // namespace lifeline
