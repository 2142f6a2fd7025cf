#include "support/slurm_cluster.h"

#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "slurm/slurm_client.h"
#include "support/process.h"

namespace lifeline::test {

SlurmCluster::SlurmCluster(const std::string& state_dir, const std::vector<std::string>& options)
    : state_dir_(state_dir), script_(std::string(LIFELINE_SOURCE_DIR) + "/tests/slurm/cluster.sh") {
  std::vector<std::string> argv = {"/bin/bash", script_, "start", state_dir_};
  argv.insert(argv.end(), options.begin(), options.end());
  std::string out;
  int rc = run(argv, &out);
  auto pos = out.find("export SLURM_CONF=");
  if (rc != 0 || pos == std::string::npos)
    throw std::runtime_error("cluster.sh start failed (" + std::to_string(rc) + "):\n" + out);
  std::string conf = out.substr(pos + 18);
  conf = conf.substr(0, conf.find('\n'));
  if (!conf.empty() && (conf.front() == '\'' || conf.front() == '"')) conf = conf.substr(1, conf.size() - 2);
  setenv("SLURM_CONF", conf.c_str(), 1);
  // Written by `cluster.sh start --nodes N`: "nK NAMESPACE ADDRESS" per line; absent (or
  // removed by a one-node start) for the loopback cluster.
  std::ifstream nodes(state_dir_ + "/nodes");
  for (std::string line; std::getline(nodes, line);) {
    std::istringstream words(line);
    std::vector<std::string> node(3);
    if (words >> node[0] >> node[1] >> node[2]) nodes_.push_back(node);
  }
}

SlurmCluster::~SlurmCluster() {
  run({"/bin/bash", script_, "stop", state_dir_});
  unsetenv("SLURM_CONF");
}

std::string SlurmCluster::submit(const std::vector<std::string>& sbatch_options, const std::string& script,
                                 const std::vector<std::string>& args,
                                 const std::map<std::string, std::string>& env) {
  std::vector<std::string> argv = {"sbatch", "--parsable"};
  argv.insert(argv.end(), sbatch_options.begin(), sbatch_options.end());
  argv.push_back(script);
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  int rc = run(argv, &out, env);
  if (rc != 0) throw std::runtime_error("sbatch failed: " + out);
  return out.substr(0, out.find_first_of(";\n"));
}

std::map<std::string, std::string> SlurmCluster::job(const std::string& id) const {
  std::string out;
  if (run({"scontrol", "show", "job", "-o", id}, &out) != 0) return {};
  return parse_job_fields(out.substr(0, out.find('\n')));
}

std::string SlurmCluster::state(const std::string& id) const {
  auto j = job(id);
  auto it = j.find("JobState");
  return it == j.end() ? "" : it->second;
}

bool SlurmCluster::wait_until(const std::function<bool()>& what, std::chrono::seconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (what()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return what();
}

bool SlurmCluster::wait_for_end(const std::string& id, std::chrono::seconds timeout) const {
  return wait_until(
      [&] {
        std::string s = state(id);
        return s == "COMPLETED" || s == "FAILED" || s == "CANCELLED" || s == "TIMEOUT" || s == "NODE_FAIL" ||
               s == "OUT_OF_MEMORY" || s == "BOOT_FAIL" || s == "DEADLINE";
      },
      timeout);
}

int SlurmCluster::scancel(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"scancel"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

int SlurmCluster::node_count() const { return nodes_.empty() ? 1 : static_cast<int>(nodes_.size()); }

std::string SlurmCluster::node_namespace(int k) const {
  return k >= 1 && k <= static_cast<int>(nodes_.size()) ? nodes_[k - 1][1] : "";
}

std::string SlurmCluster::node_address(int k) const {
  return k >= 1 && k <= static_cast<int>(nodes_.size()) ? nodes_[k - 1][2] : "";
}

}  // namespace lifeline::test
