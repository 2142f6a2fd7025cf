#include <ATen/CPUGeneratorImpl.h>

#include <mutex>
#include <sstream>

#include "lifeline/torch.h"

namespace lifeline::torch_state {

namespace {

namespace optim = torch::optim;
using torch::serialize::OutputArchive;

// Serializes an archive into one string, grown once to `expected` bytes.
std::string to_bytes(OutputArchive& archive, size_t expected) {
  std::string bytes;
  bytes.reserve(expected + (1u << 20));
  archive.save_to([&bytes](const void* data, size_t size) -> size_t {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

void write_archive(Checkpoint& c, const std::string& name, OutputArchive& archive, size_t expected) {
  std::string bytes = to_bytes(archive, expected);
  c.write_file(name, bytes.data(), bytes.size());
}

template <class T>
void write_value(Checkpoint& c, const std::string& name, const T& value) {
  OutputArchive archive(std::make_shared<torch::jit::CompilationUnit>());
  archive << value;  // what torch::save does
  write_archive(c, name, archive, 0);
}

torch::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();  // a copy
}

size_t nbytes(const torch::Tensor& t) { return t.defined() ? size_t(t.numel()) * t.element_size() : 0; }

// A copy of `t` with its own storage (undefined stays undefined).
torch::Tensor copy_of(const torch::Tensor& t, size_t& bytes) {
  if (!t.defined()) return t;
  bytes += nbytes(t);
  return t.detach().clone();
}

// Module::save's layout (parameters, buffers, serializable children), with copied tensors.
void copy_module(const torch::nn::Module& m, OutputArchive& archive, size_t& bytes) {
  for (const auto& p : m.named_parameters(/*recurse=*/false)) {
    torch::Tensor c = copy_of(p.value(), bytes);
    if (c.defined()) c.requires_grad_(p.value().requires_grad());
    archive.write(p.key(), c);
  }
  for (const auto& b : m.named_buffers(/*recurse=*/false)) archive.write(b.key(), copy_of(b.value(), bytes), true);
  for (const auto& child : m.named_children()) {
    if (!child.value()->is_serializable()) continue;
    OutputArchive child_archive(archive.compilation_unit());
    copy_module(*child.value(), child_archive, bytes);
    archive.write(child.key(), child_archive);
  }
}

// A deep copy of one parameter's optimizer state, or null for a type not known here.
std::unique_ptr<optim::OptimizerParamState> copy_state(const optim::OptimizerParamState& s, size_t& bytes) {
  if (auto* a = dynamic_cast<const optim::AdamParamState*>(&s)) {
    auto c = std::make_unique<optim::AdamParamState>(*a);
    c->exp_avg(copy_of(a->exp_avg(), bytes));
    c->exp_avg_sq(copy_of(a->exp_avg_sq(), bytes));
    c->max_exp_avg_sq(copy_of(a->max_exp_avg_sq(), bytes));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::AdamWParamState*>(&s)) {
    auto c = std::make_unique<optim::AdamWParamState>(*a);
    c->exp_avg(copy_of(a->exp_avg(), bytes));
    c->exp_avg_sq(copy_of(a->exp_avg_sq(), bytes));
    c->max_exp_avg_sq(copy_of(a->max_exp_avg_sq(), bytes));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::SGDParamState*>(&s)) {
    auto c = std::make_unique<optim::SGDParamState>(*a);
    c->momentum_buffer(copy_of(a->momentum_buffer(), bytes));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::RMSpropParamState*>(&s)) {
    auto c = std::make_unique<optim::RMSpropParamState>(*a);
    c->square_avg(copy_of(a->square_avg(), bytes));
    c->momentum_buffer(copy_of(a->momentum_buffer(), bytes));
    c->grad_avg(copy_of(a->grad_avg(), bytes));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::AdagradParamState*>(&s)) {
    auto c = std::make_unique<optim::AdagradParamState>(*a);
    c->sum(copy_of(a->sum(), bytes));
    return c;
  }
  return nullptr;
}

// Puts copies in place of an optimizer's live state for as long as it lives, so that
// Optimizer::save() writes the copies; puts the live state back however it ends.
class StateSwap {
 public:
  using StateMap = ska::flat_hash_map<std::string, std::unique_ptr<optim::OptimizerParamState>>;
  StateSwap(StateMap& live, std::vector<std::unique_ptr<optim::OptimizerParamState>>& copies)
      : live_(live), copies_(copies) {
    swap_all();
  }
  ~StateSwap() { swap_all(); }
  StateSwap(const StateSwap&) = delete;
  StateSwap& operator=(const StateSwap&) = delete;

 private:
  void swap_all() {
    size_t i = 0;
    for (auto& kv : live_) std::swap(kv.second, copies_[i++]);
  }
  StateMap& live_;
  std::vector<std::unique_ptr<optim::OptimizerParamState>>& copies_;
};

}  // namespace

void save(Checkpoint& c, torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step) {
  {
    OutputArchive archive(std::make_shared<torch::jit::CompilationUnit>());
    model.save(archive);
    size_t expected = 0;
    for (const auto& p : model.parameters()) expected += nbytes(p);
    for (const auto& b : model.buffers()) expected += nbytes(b);
    write_archive(c, "model.pt", archive, expected);
  }
  write_value(c, "optimizer.pt", optimizer);
  write_value(c, "rng.pt", rng_state());
  write_value(c, "counters.pt", torch::tensor({int64_t(step)}, torch::kInt64));
}

std::shared_ptr<Snapshot> snapshot(torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step) {
  auto s = std::make_shared<Snapshot>();
  s->step = step;
  torch::NoGradGuard no_grad;
  copy_module(model, s->model, s->model_bytes);
  s->tensor_bytes = s->model_bytes;

  auto& live = optimizer.state();
  std::vector<std::unique_ptr<optim::OptimizerParamState>> copies;
  copies.reserve(live.size());
  size_t state_bytes = 0;
  for (auto& kv : live) {
    auto c = copy_state(*kv.second, state_bytes);
    if (!c) break;
    copies.push_back(std::move(c));
  }
  if (copies.size() == live.size()) {
    StateSwap swap(live, copies);
    s->optimizer << optimizer;  // Optimizer::save, which now sees the copies
    s->tensor_bytes += state_bytes;
  } else {
    s->optimizer_bytes = to_bytes(s->optimizer << optimizer, 0);
    s->tensor_bytes += s->optimizer_bytes.size();
  }
  s->rng = rng_state();
  return s;
}

void persist(Checkpoint& c, Snapshot& s) {
  write_archive(c, "model.pt", s.model, s.model_bytes);
  if (s.optimizer_bytes.empty()) {
    write_archive(c, "optimizer.pt", s.optimizer, s.tensor_bytes - s.model_bytes);
  } else {
    c.write_file("optimizer.pt", s.optimizer_bytes.data(), s.optimizer_bytes.size());
  }
  write_value(c, "rng.pt", s.rng);
  write_value(c, "counters.pt", torch::tensor({int64_t(s.step)}, torch::kInt64));
}

bool save_async(Client& client, torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step,
                const std::map<std::string, double>& metrics) {
  return client.save_async(
      step,
      [&]() -> PersistFn {
        std::shared_ptr<Snapshot> s = snapshot(model, optimizer, step);
        return [s](Checkpoint& c) { persist(c, *s); };
      },
      metrics);
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
