// How long a checkpoint stalls training: a synchronous save (serialize, write, checksum,
// fsync, manifest, rename) against an asynchronous one (snapshot to memory on the training
// thread; the rest on the client's background thread), for one LibTorch state of N MiB
// (a square linear layer whose weight and Adam moments make up the state).
// The first asynchronous snapshot faults in fresh buffers; later ones reuse them. Between
// saves the state moves on by one training step.
// With --prepare, torch_state::prepare() warms the snapshot buffers after the first step.
// Usage: async_save_bench DIR [--mib N] [--runs R] [--prepare]   (DIR: an empty scratch folder)
// Prints one JSON object: sync_s, async_stall_s (first first), async_background_s.
#include <stdlib.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "lifeline/client.h"
#include "lifeline/torch.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void train_step(torch::nn::Linear& layer, torch::optim::Adam& opt) {
  torch::Tensor x = torch::randn({4, layer->weight.size(1)});
  opt.zero_grad();
  layer->forward(x).mean().backward();
  opt.step();
}

std::string json_list(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: async_save_bench DIR [--mib N] [--runs R] [--prepare]\n");
    return 2;
  }
  std::string dir = std::filesystem::absolute(argv[1]).string();
  uint64_t mib = 1024, runs = 2;
  bool prepare = false;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--prepare") prepare = true;
    if (k == "--mib" && i + 1 < argc) mib = std::strtoull(argv[++i], nullptr, 10);
    if (k == "--runs" && i + 1 < argc) runs = std::strtoull(argv[++i], nullptr, 10);
  }
  try {
    std::filesystem::create_directories(dir);
    unsetenv("LIFELINE_CONTROL");
    setenv("LIFELINE_CKPT_DIR", dir.c_str(), 1);
    torch::set_num_threads(1);
    torch::manual_seed(1);
    // Weight + Adam's two moments: 12 bytes per weight.
    int64_t d = int64_t(std::sqrt(double(mib << 20) / 12.0));
    torch::nn::Linear layer(torch::nn::LinearOptions(d, d).bias(false));
    torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(1e-3));
    train_step(layer, opt);
    if (prepare) lifeline::torch_state::prepare(*layer, opt);
    lifeline::Client client = lifeline::Client::from_env();

    uint64_t step = 1;
    std::vector<double> sync_s, stall_s, background_s;
    for (uint64_t r = 0; r < runs; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      auto w = client.begin_checkpoint(step);
      lifeline::torch_state::save(w, *layer, opt, step);
      if (!w.commit()) return 1;
      sync_s.push_back(seconds_since(t0));
      for (const auto& e : std::filesystem::directory_iterator(dir)) std::filesystem::remove_all(e.path());
      train_step(layer, opt);
      ++step;
    }
    for (uint64_t r = 0; r < runs + 1; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      lifeline::torch_state::save_async(client, *layer, opt, step);
      stall_s.push_back(seconds_since(t0));
      train_step(layer, opt);  // training goes on while the save is written
      if (!client.wait_for_saves()) return 1;
      background_s.push_back(seconds_since(t0));
      for (const auto& e : std::filesystem::directory_iterator(dir)) std::filesystem::remove_all(e.path());
      ++step;
    }
    std::printf("{\"mib\": %llu, \"prepare\": %s, \"sync_s\": %s, \"async_stall_s\": %s, \"async_background_s\": %s}\n",
                static_cast<unsigned long long>(mib), prepare ? "true" : "false", json_list(sync_s).c_str(), json_list(stall_s).c_str(),
                json_list(background_s).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "async_save_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
