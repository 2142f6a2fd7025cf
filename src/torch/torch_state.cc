#include <ATen/CPUGeneratorImpl.h>
#include <mutex>
#include <sstream>

#include "lifeline/torch.h"

namespace lifeline::torch_state {

namespace {

template <class T>
void save_to(Checkpoint& c, const std::string& name, const T& value) {
  std::ostringstream out;
  torch::save(value, out);
  std::string bytes = out.str();
  c.write_file(name, bytes.data(), bytes.size());
}

}  // namespace

void save(Checkpoint& c, torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step) {
  {
    torch::serialize::OutputArchive archive;
    model.save(archive);
    std::ostringstream out;
    archive.save_to(out);
    std::string bytes = out.str();
    c.write_file("model.pt", bytes.data(), bytes.size());
  }
  save_to(c, "optimizer.pt", optimizer);
  auto gen = at::detail::getDefaultCPUGenerator();
  torch::Tensor rng;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    rng = gen.get_state();
  }
  save_to(c, "rng.pt", rng);
  save_to(c, "counters.pt", torch::tensor({int64_t(step)}, torch::kInt64));
}

uint64_t load(const std::string& folder, torch::nn::Module& model, torch::optim::Optimizer& optimizer) {
  {
    torch::serialize::InputArchive archive;
    archive.load_from(folder + "/model.pt");
    model.load(archive);
  }
  torch::load(optimizer, folder + "/optimizer.pt");
  torch::Tensor rng;
  torch::load(rng, folder + "/rng.pt");
  auto gen = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng);
  }
  torch::Tensor counters;
  torch::load(counters, folder + "/counters.pt");
  return uint64_t(counters[0].item<int64_t>());
}

}  // namespace lifeline::torch_state
