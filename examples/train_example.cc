// lifeline-train-example: a small LibTorch network trained on deterministic synthetic data,
// checkpointed through the lifeline client. An interrupted and resumed run ends with the
// same parameter digest as an uninterrupted one (with the same flags). --async checkpoints in
// the background; --state-mib makes the training state big, for benchmarks.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include "lifeline/client.h"
#include "lifeline/torch.h"
#include "store/checksum.h"

namespace {

// The network: two linear layers; Adam gives the optimizer state that must survive resumes.
// --state-mib adds a wide square layer (its weight is the bulk of the state) that every step
// runs forward and backward on a widened slice of the batch, through a tiny penalty: each step
// then computes on, and updates, all of the state and its Adam moments, as a big model does.
struct Net : torch::nn::Module {
  explicit Net(int64_t wide_floats)
      : fc1(register_module("fc1", torch::nn::Linear(16, 64))), fc2(register_module("fc2", torch::nn::Linear(64, 1))) {
    int64_t d = int64_t(std::sqrt(double(wide_floats)));
    if (d > 0) wide = register_parameter("wide", torch::zeros({d, d}));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::tanh(fc1(x))); }
  torch::Tensor loss(torch::Tensor x, torch::Tensor y) {
    torch::Tensor l = torch::mse_loss(forward(x), y);
    if (!wide.defined()) return l;
    int64_t d = wide.size(0);
    torch::Tensor u = x.narrow(0, 0, 4).repeat({1, d / x.size(1) + 1}).narrow(1, 0, d);  // 4 rows: 16 d^2 flops
    return l + 1e-6 * u.matmul(wide).mean();
  }
  torch::nn::Linear fc1, fc2;
  torch::Tensor wide;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string parameter_digest(Net& net) {
  auto hasher = lifeline::make_hasher("sha256");
  for (const auto& p : net.named_parameters()) {
    torch::Tensor t = p.value().contiguous();
    hasher->update(p.key().data(), p.key().size());
    hasher->update(t.data_ptr(), size_t(t.numel()) * t.element_size());
  }
  return hasher->hex_digest();
}

// This process's rank in a distributed launch (RANK, as torchrun sets it); 0 alone.
uint64_t rank_env_value() {
  const char* r = std::getenv("RANK");
  return r ? std::strtoull(r, nullptr, 10) : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lifeline-train-example: deterministic LibTorch trainer for lifeline"};
  uint64_t steps = 240, seed = 1, crash_at = 0, log_every = 0, state_mib = 0, die_in_save = 0, die_rank = 0;
  int64_t delay_ms = 0;
  bool crash_once = false, async = false, report = false;
  std::string digest_out, warm_start = "continue";
  app.add_option("--steps", steps, "steps to train")->check(CLI::PositiveNumber);
  app.add_option("--step-delay-ms", delay_ms, "sleep per step, to make runs long enough to interrupt")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "random seed");
  app.add_option("--digest-out", digest_out, "write the sha256 hex of the final parameters here");
  app.add_option("--crash-at-step", crash_at, "abort when reaching this step");
  app.add_flag("--crash-once", crash_once, "crash (or die in the save) only when LIFELINE_ATTEMPT is 0");
  app.add_option("--die-in-save", die_in_save,
                 "SIGKILL this process while it writes the checkpoint of this step (files written, not committed)");
  app.add_option("--die-rank", die_rank, "with --die-in-save: only the process whose RANK is this (default 0)");
  app.add_option("--log-every", log_every, "print 'step N' every N steps (0: never)");
  app.add_flag("--async", async, "checkpoint asynchronously: copy the state, write it in the background");
  app.add_option("--state-mib", state_mib, "make the training state (parameters + Adam moments) about this big");
  app.add_flag("--report", report, "print each checkpoint's stall and the training rate");
  app.add_option("--warm-start", warm_start,
                 "starting from another run's checkpoint (lifeline run --init-from): reset = its weights only, step 0, "
                 "a fresh optimizer; continue = everything, continuing from its step")
      ->check(CLI::IsMember({"reset", "continue"}));
  CLI11_PARSE(app, argc, argv);

  torch::set_num_threads(1);
  auto client = lifeline::Client::from_env();
  torch::manual_seed(seed);
  // Parameters and Adam's two moments: 12 bytes per float of the wide layer.
  Net net(int64_t((state_mib << 20) / 12));
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3));

  uint64_t step = 0;
  if (auto r = client.resume(); r && r->warm() && warm_start == "reset") {
    uint64_t from = lifeline::torch_state::load_weights(r->path, net);
    std::printf("train-example: warm start (reset) from step %llu (%s): weights digest %s, step 0, fresh optimizer\n",
                static_cast<unsigned long long>(from), r->path.c_str(), parameter_digest(net).c_str());
  } else if (r) {
    step = lifeline::torch_state::load(r->path, net, opt);
    if (r->warm())
      std::printf("train-example: warm start (continue) from step %llu (%s): weights digest %s\n",
                  static_cast<unsigned long long>(step), r->path.c_str(), parameter_digest(net).c_str());
    else
      std::printf("train-example: resumed from step %llu (%s)\n", static_cast<unsigned long long>(step), r->path.c_str());
  } else {
    std::printf("train-example: starting at step 0\n");
  }
  std::fflush(stdout);
  bool can_save = client.active() || !client.checkpoint_dir().empty();
  const uint64_t first_step = step;
  auto started = std::chrono::steady_clock::now();
  double train_s = 0, stall_s = 0;
  uint64_t saves = 0;
  std::vector<double> step_s;  // each step's training time (--report)
  // Steps per second over this run's training, checkpoint stalls included, the final save not.
  auto print_rate = [&] {
    if (!report) return;
    std::printf("train-example: trained %llu steps in %.3f s (%.2f steps/s); checkpoint stall %.3f s over %llu saves\n",
                static_cast<unsigned long long>(step - first_step), train_s, double(step - first_step) / train_s,
                stall_s, static_cast<unsigned long long>(saves));
    std::printf("train-example: step times (s):");
    for (double t : step_s) std::printf(" %.4f", t);
    std::printf("\n");
    std::fflush(stdout);
  };
  while (step < steps) {
    auto step_t0 = std::chrono::steady_clock::now();
    torch::Tensor x = torch::randn({32, 16});
    torch::Tensor y = torch::sin(x.sum(1, true));
    torch::Tensor loss = net.loss(x, y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    ++step;
    // Once the optimizer state exists: the first snapshot's buffers are faulted in meanwhile.
    if (async && step == first_step + 1) lifeline::torch_state::prepare(net, opt);
    if (crash_at && step == crash_at && (!crash_once || client.attempt() == 0)) {
      std::fprintf(stderr, "train-example: crashing at step %llu as asked\n", static_cast<unsigned long long>(step));
      std::abort();
    }
    if (log_every && step % log_every == 0) {
      std::printf("step %llu loss %.6f\n", static_cast<unsigned long long>(step), loss.item<double>());
      std::fflush(stdout);
    }
    if (delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if (report) step_s.push_back(seconds_since(step_t0));
    if (step == steps) train_s = seconds_since(started);
    if ((client.should_checkpoint(step) || step == steps) && can_save) {
      auto t0 = std::chrono::steady_clock::now();
      bool saved_this_step = true;  // a save was started (async) or committed (sync)
      bool save_failed = false;
      std::map<std::string, double> metrics{{"val_loss", loss.item<double>()}};
      // A failed save (disk full, I/O error) is reported by the client (stderr, the supervisor's
      // history) and training goes on: the older checkpoints are intact.
      try {
        if (async) {
          saved_this_step = lifeline::torch_state::save_async(client, net, opt, step, metrics);
        } else {
          auto ckpt = client.begin_checkpoint(step);
          lifeline::torch_state::save(ckpt, net, opt, step);
          if (die_in_save == step && rank_env_value() == die_rank && (!crash_once || client.attempt() == 0)) {
            std::fprintf(stderr, "train-example: dying in the save of step %llu as asked\n", static_cast<unsigned long long>(step));
            std::raise(SIGKILL);
          }
          saved_this_step = ckpt.commit(metrics);
          save_failed = !saved_this_step;
        }
      } catch (const std::exception& e) {  // not the disk's: out of memory for the snapshot, say
        std::fprintf(stderr, "train-example: checkpoint of step %llu failed: %s; training goes on\n",
                     static_cast<unsigned long long>(step), e.what());
        saved_this_step = false;
        save_failed = true;
      }
      double stall = seconds_since(t0);
      if (step < steps) {
        stall_s += stall;
        saves += saved_this_step;
      }
      if (report && saved_this_step)
        std::printf("train-example: checkpoint of step %llu: stall %.6f s (%s)\n", static_cast<unsigned long long>(step),
                    stall, async ? "async" : "sync");
      if (client.should_exit() && step < steps) {
        bool durable = client.wait_for_saves();  // the stop checkpoint is durable and acked before we leave
        train_s = seconds_since(started);
        print_rate();
        const char* after = save_failed || !durable ? "a failed checkpoint"
                            : saved_this_step       ? "its checkpoint"
                                                    : "the checkpoint that was in flight";
        std::printf("train-example: stopping at step %llu after %s\n", static_cast<unsigned long long>(step), after);
        return 0;
      }
    }
  }
  if (!client.wait_for_saves()) std::printf("train-example: the last checkpoint failed (see above)\n");
  if (train_s == 0) train_s = seconds_since(started);
  print_rate();
  std::string digest = parameter_digest(net);
  std::printf("train-example: finished %llu steps, digest %s\n", static_cast<unsigned long long>(steps), digest.c_str());
  if (!digest_out.empty()) std::ofstream(digest_out) << digest << "\n";
  return 0;
}
