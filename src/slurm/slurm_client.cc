#include "slurm/slurm_client.h"

#include <ctime>
#include <sstream>
#include <thread>

namespace lifeline {

JobFields parse_job_fields(const std::string& line) {
  JobFields f;
  std::istringstream in(line);
  std::string token, key;
  while (in >> token) {
    size_t eq = token.find('=');
    // A token is a new field when it looks like Key=...; otherwise it continues the last value.
    bool is_key = eq != std::string::npos && eq > 0 && std::isupper(static_cast<unsigned char>(token[0]));
    if (is_key) {
      key = token.substr(0, eq);
      f[key] = token.substr(eq + 1);
    } else if (!key.empty()) {
      f[key] += " " + token;
    }
  }
  return f;
}

std::optional<uint64_t> parse_slurm_time(const std::string& text) {
  tm t{};
  if (text.empty() || text == "Unknown" || text == "None") return std::nullopt;
  if (!strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &t)) return std::nullopt;
  t.tm_isdst = -1;
  time_t secs = mktime(&t);
  if (secs < 0) return std::nullopt;
  return uint64_t(secs) * 1000000000ull;
}

SlurmClient::SlurmClient(CommandRunner& runner, int tries, std::chrono::milliseconds timeout)
    : runner_(runner), tries_(tries), timeout_(timeout) {}

CommandResult SlurmClient::run_with_retries(const std::vector<std::string>& argv) {
  CommandResult r;
  for (int i = 0; i < tries_; ++i) {
    r = runner_.run(argv, timeout_);
    // Retry what may be transient (timeouts, slurmctld busy); a command that cannot start won't improve.
    if (r.ok() || (r.status == -1 && !r.timed_out)) break;
    if (i + 1 < tries_) std::this_thread::sleep_for(std::chrono::milliseconds(500 << i));
  }
  return r;
}

std::optional<JobFields> SlurmClient::show_job(const std::string& job_id) {
  CommandResult r = run_with_retries({"scontrol", "show", "job", "-o", job_id});
  if (!r.ok() || r.out.empty()) return std::nullopt;
  return parse_job_fields(r.out.substr(0, r.out.find('\n')));
}

std::optional<uint64_t> SlurmClient::end_time_ns(const std::string& job_id) {
  auto f = show_job(job_id);
  if (!f) return std::nullopt;
  auto it = f->find("EndTime");
  if (it == f->end()) return std::nullopt;
  // A job without a time limit shows an EndTime years away; treat as unknown.
  if (f->count("TimeLimit") && (*f)["TimeLimit"] == "UNLIMITED") return std::nullopt;
  return parse_slurm_time(it->second);
}

SlurmOutcome SlurmClient::requeue(const std::string& job_id) {
  std::vector<std::string> argv = {"scontrol", "requeue", job_id};
  CommandResult r = run_with_retries(argv);
  return {r.ok(), r.describe(argv)};
}

SlurmOutcome SlurmClient::resubmit(const std::string& script, const std::vector<std::string>& args,
                                   const std::string& workdir) {
  std::vector<std::string> argv = {"sbatch", "--parsable"};
  if (!workdir.empty()) argv.push_back("--chdir=" + workdir);
  argv.push_back(script);
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = run_with_retries(argv);
  std::string id = r.out.substr(0, r.out.find_first_of(";\n"));
  return {r.ok(), r.ok() ? id : r.describe(argv)};
}

std::string SlurmClient::scontrol_missing_hint() {
  if (program_available("scontrol")) return "";
  return "scontrol is not available here (inside a container?): use --requeue exit with the site's "
         "RequeueExit, or --requeue sbatch where sbatch is available";
}

}  // namespace lifeline
