#pragma once
// SlurmCluster: a real one-node Slurm cluster (munge + slurmctld + slurmd on loopback)
// started by tests/slurm/cluster.sh for one test and stopped afterwards, plus the few
// scontrol/sbatch questions the tests ask it.
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lifeline::test {

class SlurmCluster {
 public:
  // Extra arguments for `cluster.sh start`, e.g. {"--grace", "20", "--send-user-signal"}.
  SlurmCluster(const std::string& state_dir, const std::vector<std::string>& options);
  ~SlurmCluster();
  SlurmCluster(const SlurmCluster&) = delete;
  SlurmCluster& operator=(const SlurmCluster&) = delete;

  // `sbatch --parsable OPTIONS SCRIPT ARGS` with extra environment; returns the job id.
  std::string submit(const std::vector<std::string>& sbatch_options, const std::string& script,
                     const std::vector<std::string>& args = {},
                     const std::map<std::string, std::string>& env = {});
  // `scontrol show job -o ID` as fields; empty when unknown.
  std::map<std::string, std::string> job(const std::string& id) const;
  std::string state(const std::string& id) const;
  // Polls `what` every 200 ms until true or `timeout`; returns whether it became true.
  static bool wait_until(const std::function<bool()>& what, std::chrono::seconds timeout);
  // Waits until the job has ended for good (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...).
  bool wait_for_end(const std::string& id, std::chrono::seconds timeout) const;
  // `scancel ARGS`.
  int scancel(const std::vector<std::string>& args) const;

  // Multi-node clusters (options {"--nodes", "N"}, N in 2..8; see tests/slurm/README.md).
  // Number of nodes: 1 for the default loopback cluster.
  int node_count() const;
  // Network namespace of node k (1-based, node "nK"), e.g. to `nsenter --net=/var/run/netns/NS`;
  // empty for the loopback cluster or an unknown k.
  std::string node_namespace(int k) const;
  // Address of node k on the cluster's bridge (10.77.X.(10+k)); empty as above.
  std::string node_address(int k) const;

 private:
  std::string state_dir_;
  std::string script_;
  // STATEDIR/nodes: one {name, namespace, address} per node of a multi-node cluster.
  std::vector<std::vector<std::string>> nodes_;
};

}  // namespace lifeline::test
