// How long a checkpoint stalls training: a synchronous save (serialize, write, checksum,
// fsync, manifest, rename) against an asynchronous one (snapshot to memory on the training
// thread; the rest on the client's background thread), for one LibTorch state of N MiB
// (a square linear layer whose weight and Adam moments make up the state).
// The first asynchronous snapshot faults in fresh buffers; later ones reuse them. Between
// saves the state moves on by one training step.
// With --prepare, torch_state::prepare() warms the snapshot buffers after the first step.
// Usage: async_save_bench DIR [--mib N] [--runs R] [--prepare] [--neighbour R]   (DIR: an empty scratch folder)
// Prints one JSON object: sync_s, async_stall_s (first first), async_background_s.
// With --neighbour R (only this, after prepare()): what each kind of save costs a memory-bound
// neighbour (bench/neighbour.h), R of each, 2 s apart: the state's raw bytes written as
// checkpoint files (the store alone: the baseline), torch_state::save (LibTorch's serializer
// + the store), and save_async + wait_for_saves (snapshot, then the same in the background).
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <string>
#include <vector>

#include "lifeline/client.h"
#include "lifeline/torch.h"
#include "neighbour.h"

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


void clear(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir)) std::filesystem::remove_all(e.path());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Raw store, LibTorch save and async save, in turn, beside a memory-bound neighbour.
int neighbour_bench(const std::string& dir, lifeline::Client& client, torch::nn::Linear& layer,
                    torch::optim::Adam& opt, uint64_t runs) {
  using lifeline::bench::Neighbour;
  auto& adam = static_cast<torch::optim::AdamParamState&>(*opt.state().begin()->second);
  const std::vector<torch::Tensor> state{layer->weight, adam.exp_avg(), adam.exp_avg_sq()};
  const char* names[] = {"store alone (raw bytes)", "torch_state::save", "save_async + wait"};
  std::vector<Neighbour::Span> spans;
  uint64_t step = 1;
  Neighbour neighbour;
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (uint64_t r = 0; r < runs; ++r) {
    for (int k = 0; k < 3; ++k) {
      int kind = int((k + r) % 3);  // which goes first rotates
      std::this_thread::sleep_for(std::chrono::seconds(2));
      double t0 = lifeline::bench::now_seconds();
      bool ok = true;
      if (kind == 0) {
        auto w = client.begin_checkpoint(++step);
        for (size_t i = 0; i < state.size(); ++i)
          w.write_file("t" + std::to_string(i) + ".bin", state[i].data_ptr(), size_t(state[i].nbytes()));
        ok = bool(w.commit());
      } else if (kind == 1) {
        auto w = client.begin_checkpoint(++step);
        lifeline::torch_state::save(w, *layer, opt, step);
        ok = bool(w.commit());
      } else {
        lifeline::torch_state::save_async(client, *layer, opt, ++step);
        ok = client.wait_for_saves();
      }
      spans.push_back({t0, lifeline::bench::now_seconds(), kind});
      if (!ok) return 1;
      clear(dir);
    }
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  neighbour.stop();
  const double typical = neighbour.median_pass();
  std::vector<double> lost[3], secs[3];
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto& s = spans[i];
    lost[s.kind].push_back(neighbour.lost(spans, i));
    secs[s.kind].push_back(s.to - s.from);
  }
  std::printf("| beside a neighbour (STREAM triad, %.0f ms a pass alone) | run, s (median) | neighbour time lost, s (median / each) | vs the store alone |\n",
              typical * 1e3);
  std::printf("|---|---|---|---|\n");
  for (int k = 0; k < 3; ++k) {
    std::printf("| %s | %.2f | %.2f /", names[k], median(secs[k]), median(lost[k]));
    for (double x : lost[k]) std::printf(" %.2f", x);
    std::printf(" | %.2f |\n", median(lost[k]) / std::max(median(lost[0]), 1e-3));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: async_save_bench DIR [--mib N] [--runs R] [--prepare] [--neighbour R]\n");
    return 2;
  }
  std::string dir = std::filesystem::absolute(argv[1]).string();
  uint64_t mib = 1024, runs = 2, neighbour = 0;
  bool prepare = false;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--prepare") prepare = true;
    if (k == "--mib" && i + 1 < argc) mib = std::strtoull(argv[++i], nullptr, 10);
    if (k == "--runs" && i + 1 < argc) runs = std::strtoull(argv[++i], nullptr, 10);
    if (k == "--neighbour" && i + 1 < argc) neighbour = std::strtoull(argv[++i], nullptr, 10);
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
    if (neighbour > 0) {
      lifeline::torch_state::prepare(*layer, opt);
      return neighbour_bench(dir, client, layer, opt, neighbour);
    }

    uint64_t step = 1;
    std::vector<double> sync_s, stall_s, background_s;
    for (uint64_t r = 0; r < runs; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      auto w = client.begin_checkpoint(step);
      lifeline::torch_state::save(w, *layer, opt, step);
      if (!w.commit()) return 1;
      sync_s.push_back(seconds_since(t0));
      clear(dir);
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
      clear(dir);
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
