#include "store/dir_safety.h"

#include <dirent.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace lifeline {
namespace {

// "uid 1000 (alice)", or "uid 1000" when the name is unknown.
std::string user_text(uid_t uid) {
  std::string s = "uid " + std::to_string(uid);
  struct passwd pw {};
  struct passwd* found = nullptr;
  char buf[4096];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found) s += " (" + std::string(found->pw_name) + ")";
  return s;
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", unsigned(mode & 07777));
  return buf;
}

bool world_writable_without_sticky(const struct stat& st) {
  return (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX);
}

}  // namespace

std::string unsafe_dir_reason(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return "";  // nothing to judge yet
  uid_t me = geteuid();
  if (st.st_uid != me && st.st_uid != 0)
    return "checkpoint directory " + dir + " is owned by " + user_text(st.st_uid) + ", not by you (" +
           user_text(me) + ") or root: its owner controls what lifeline would read, write and delete there; "
           "use a directory of your own";
  if (world_writable_without_sticky(st))
    return "checkpoint directory " + dir + " is writable by every user (mode " + mode_text(st.st_mode) +
           "): anyone could plant links or FIFOs in it; run chmod o-w " + dir + ", or use a directory of your own";
  // The parents of its real path, and of the path as given (a symbolic link to it lives there).
  std::unique_ptr<char, decltype(&free)> real(realpath(dir.c_str(), nullptr), &free);
  std::string given = dir;
  if (given.empty() || given[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd)) given = std::string(cwd) + "/" + given;
  }
  for (std::string path : {real ? std::string(real.get()) : std::string(), given}) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    while (path.size() > 1) {
      size_t slash = path.find_last_of('/');
      if (slash == std::string::npos) break;
      path = slash == 0 ? "/" : path.substr(0, slash);
      struct stat parent {};
      if (::stat(path.c_str(), &parent) != 0) continue;
      if (world_writable_without_sticky(parent))
        return "checkpoint directory " + dir + " is inside " + path + ", which is writable by every user (mode " +
               mode_text(parent.st_mode) + ") without the sticky bit: anyone could replace the checkpoint " +
               "directory; run chmod o-w " + path + " (or chmod +t " + path + "), or use a directory of your own";
    }
  }
  return "";
}

std::string checkpoint_dir_problem(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return "no checkpoint directory " + dir;
    return "cannot read checkpoint directory " + dir + ": " + std::strerror(errno);
  }
  if (!S_ISDIR(st.st_mode)) return dir + " is not a directory";
  DIR* d = opendir(dir.c_str());
  if (!d) return "cannot read checkpoint directory " + dir + ": " + std::strerror(errno);
  closedir(d);
  return "";
}

}  // namespace lifeline
