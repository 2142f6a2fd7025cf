// lifeline-train-example: a small LibTorch network trained on deterministic synthetic data,
// checkpointed through the lifeline client. An interrupted and resumed run ends with the
// same parameter digest as an uninterrupted one.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "lifeline/client.h"
#include "lifeline/torch.h"
#include "store/checksum.h"

namespace {

// The network: two linear layers; Adam gives the optimizer state that must survive resumes.
struct Net : torch::nn::Module {
  Net() : fc1(register_module("fc1", torch::nn::Linear(16, 64))), fc2(register_module("fc2", torch::nn::Linear(64, 1))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1, fc2;
};

std::string parameter_digest(Net& net) {
  auto hasher = lifeline::make_hasher("sha256");
  for (const auto& p : net.named_parameters()) {
    torch::Tensor t = p.value().contiguous();
    hasher->update(p.key().data(), p.key().size());
    hasher->update(t.data_ptr(), size_t(t.numel()) * t.element_size());
  }
  return hasher->hex_digest();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lifeline-train-example: deterministic LibTorch trainer for lifeline"};
  uint64_t steps = 240, seed = 1, crash_at = 0, log_every = 0;
  int64_t delay_ms = 0;
  bool crash_once = false;
  std::string digest_out;
  app.add_option("--steps", steps, "steps to train")->check(CLI::PositiveNumber);
  app.add_option("--step-delay-ms", delay_ms, "sleep per step, to make runs long enough to interrupt")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", seed, "random seed");
  app.add_option("--digest-out", digest_out, "write the sha256 hex of the final parameters here");
  app.add_option("--crash-at-step", crash_at, "abort when reaching this step");
  app.add_flag("--crash-once", crash_once, "crash only when LIFELINE_ATTEMPT is 0");
  app.add_option("--log-every", log_every, "print 'step N' every N steps (0: never)");
  CLI11_PARSE(app, argc, argv);

  torch::set_num_threads(1);
  auto client = lifeline::Client::from_env();
  torch::manual_seed(seed);
  Net net;
  torch::optim::Adam opt(net.parameters(), torch::optim::AdamOptions(1e-3));

  uint64_t step = 0;
  if (auto r = client.resume()) {
    step = lifeline::torch_state::load(r->path, net, opt);
    std::printf("train-example: resumed from step %llu (%s)\n", static_cast<unsigned long long>(step), r->path.c_str());
  } else {
    std::printf("train-example: starting at step 0\n");
  }
  std::fflush(stdout);
  bool can_save = client.active() || !client.checkpoint_dir().empty();
  while (step < steps) {
    torch::Tensor x = torch::randn({32, 16});
    torch::Tensor y = torch::sin(x.sum(1, true));
    torch::Tensor loss = torch::mse_loss(net.forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    ++step;
    if (crash_at && step == crash_at && (!crash_once || client.attempt() == 0)) {
      std::fprintf(stderr, "train-example: crashing at step %llu as asked\n", static_cast<unsigned long long>(step));
      std::abort();
    }
    if (log_every && step % log_every == 0) {
      std::printf("step %llu loss %.6f\n", static_cast<unsigned long long>(step), loss.item<double>());
      std::fflush(stdout);
    }
    if (delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if ((client.should_checkpoint(step) || step == steps) && can_save) {
      auto ckpt = client.begin_checkpoint(step);
      lifeline::torch_state::save(ckpt, net, opt, step);
      ckpt.commit({{"val_loss", loss.item<double>()}});
      if (client.should_exit() && step < steps) {
        std::printf("train-example: stopping at step %llu after its checkpoint\n", static_cast<unsigned long long>(step));
        return 0;
      }
    }
  }
  std::string digest = parameter_digest(net);
  std::printf("train-example: finished %llu steps, digest %s\n", static_cast<unsigned long long>(steps), digest.c_str());
  if (!digest_out.empty()) std::ofstream(digest_out) << digest << "\n";
  return 0;
}
