#include <ATen/CPUGeneratorImpl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <system_error>
#include <thread>

#include "lifeline/torch.h"

namespace lifeline::torch_state {

namespace {

namespace optim = torch::optim;
using torch::serialize::OutputArchive;

// Serializes `archive` through `sink(data, size)` so that no exception ever crosses PyTorch's
// serializer. One thrown through its writer callback unwinds through its zip writer, whose
// destructor then writes the archive's end through the callback again and throws a second time:
// std::terminate. (Returning a short count instead makes the serializer throw, with the same end.)
// So the first exception is kept, the pieces after it are dropped, the serializer finishes and
// is destroyed, and only then is the exception rethrown, here, outside PyTorch.
template <class Sink>
void save_through(OutputArchive& archive, Sink&& sink) {
  std::exception_ptr failure;
  archive.save_to([&](const void* data, size_t size) -> size_t {
    if (!failure) {
      try {
        sink(data, size);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    return size;
  });
  if (failure) std::rethrow_exception(failure);
}

// Serializes an archive into one string, grown once to `expected` bytes.
std::string to_bytes(OutputArchive& archive, size_t expected) {
  std::string bytes;
  bytes.reserve(expected + (1u << 20));
  save_through(archive, [&bytes](const void* data, size_t size) { bytes.append(static_cast<const char*>(data), size); });
  return bytes;
}

// Runs one write into `c`. A write error has failed the checkpoint already (its staging folder
// is gone, its commit() reports the error) and is not thrown further; anything else is.
template <class Write>
void guarded(Checkpoint& c, Write&& write) {
  if (c.failed()) return;  // the rest of the state is skipped
  try {
    write();
  } catch (const std::exception&) {
    if (!c.failed()) throw;
  }
}

// Streams an archive into a checkpoint file, checksummed as it goes: no copy of the state in
// memory, no second read. The writer function, not save_to(path), which would name the archive
// inside the file after the file and so change the bytes.
void write_archive(Checkpoint& c, const std::string& name, OutputArchive& archive) {
  guarded(c, [&] {
    CheckpointFile file = c.open_file(name);
    save_through(archive, [&file](const void* data, size_t size) { file.write(data, size); });
    file.close();
  });
}

template <class T>
void write_value(Checkpoint& c, const std::string& name, const T& value) {
  if (c.failed()) return;
  using torch::operator<<;
  OutputArchive archive(std::make_shared<torch::jit::CompilationUnit>());
  archive << value;  // what torch::save does
  write_archive(c, name, archive);
}

torch::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();  // a copy
}

size_t nbytes(const torch::Tensor& t) { return t.defined() ? size_t(t.numel()) * t.element_size() : 0; }

// Keeps the buffers of the last snapshot for the next one. A page already mapped costs only the
// copy; a fresh one a page fault as well, and faults dominate (1 GiB on the benchmark machine:
// about 0.1 s with reused buffers, 0.55 s with fresh ones). Between saves it holds one copy of
// the state. Thread-safe: buffers come back when a background save drops its snapshot.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  static std::shared_ptr<BufferPool> instance() {
    static std::shared_ptr<BufferPool> pool = std::make_shared<BufferPool>();
    return pool;
  }

  // A copy of a contiguous CPU tensor in a pooled buffer.
  torch::Tensor copy(const torch::Tensor& t) {
    size_t size = nbytes(t);
    Buffer buffer = take(size);
    parallel_copy(static_cast<char*>(buffer.get()), static_cast<const char*>(t.data_ptr()), size);
    void* data = buffer.get();
    std::shared_ptr<BufferPool> self = shared_from_this();
    Unmap unmap = buffer.get_deleter();
    auto give_back = [self, size, unmap, raw = buffer.release()](void*) { self->give(Buffer(raw, unmap), size); };
    return torch::from_blob(data, t.sizes(), t.strides(), give_back, t.options());
  }

  // Frees the buffers the last snapshot did not reuse (the state's shapes changed).
  void trim() {
    std::lock_guard<std::mutex> lock(mu_);
    free_.clear();
  }

  // Allocates buffers of these sizes and faults their pages in, on a thread of its own.
  void warm(std::vector<size_t> sizes) {
    join_warmer();
    std::lock_guard<std::mutex> lock(mu_);
    warmer_ = std::thread([this, sizes = std::move(sizes)] {
      for (size_t size : sizes) {
        Buffer b = allocate(size);
        std::memset(b.get(), 0, size);
        give(std::move(b), size);
      }
    });
  }

  // Waits for warm() to finish.
  void join_warmer() {
    std::thread t;
    {
      std::lock_guard<std::mutex> lock(mu_);
      t = std::move(warmer_);
    }
    if (t.joinable()) t.join();
  }

  ~BufferPool() { join_warmer(); }

 private:
  // A buffer is a mapping of its own, not a block from the trainer's allocator: big and
  // long-lived, it would otherwise sit in the allocator the training step takes its
  // temporaries from.
  struct Unmap {
    size_t size = 0;
    void operator()(void* p) const { munmap(p, size); }
  };
  using Buffer = std::unique_ptr<void, Unmap>;

  Buffer take(size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        Buffer b = std::move(it->second);
        free_.erase(it);
        return b;
      }
    }
    return allocate(size);
  }

  // memcpy on up to 4 threads, the caller's included, whatever LibTorch's intra-op setting
  // (trainers often set it to 1): the cores are idle while training waits for the snapshot, and
  // one thread does not saturate memory bandwidth (1 GiB on the benchmark machine: 0.055 s on
  // one thread, 0.044 s on two).
  static void parallel_copy(char* dst, const char* src, size_t size) {
    constexpr size_t kMinPart = 32u << 20;
    size_t parts = std::min<size_t>({std::max(1u, std::thread::hardware_concurrency()), 4, size / kMinPart});
    if (parts <= 1) {
      std::memcpy(dst, src, size);
      return;
    }
    const size_t part = size / parts;
    std::vector<std::thread> helpers;
    size_t launched_to = part;  // the helpers copy [part, launched_to)
    try {
      for (size_t i = 1; i < parts; ++i) {
        size_t begin = i * part, end = i + 1 == parts ? size : begin + part;
        helpers.emplace_back([=] { std::memcpy(dst + begin, src + begin, end - begin); });
        launched_to = end;
      }
    } catch (const std::system_error&) {  // no thread to be had: the rest on this one
    }
    std::memcpy(dst, src, part);
    std::memcpy(dst + launched_to, src + launched_to, size - launched_to);
    for (auto& h : helpers) h.join();
  }

  static Buffer allocate(size_t size) {
    size = std::max<size_t>(size, 1);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return Buffer(p, Unmap{size});
  }

  void give(Buffer b, size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(size, std::move(b));
  }

  std::mutex mu_;
  std::multimap<size_t, Buffer> free_;
  std::thread warmer_;
};

// Counts and keeps the copies a snapshot makes; without `keep`, only lists the pooled sizes
// a snapshot would take (for prepare()).
struct Copier {
  explicit Copier(std::vector<torch::Tensor>* k) : keep(k) {}
  size_t bytes = 0;
  std::vector<torch::Tensor>* keep;
  std::shared_ptr<BufferPool> pool = BufferPool::instance();
  std::vector<size_t> pooled_sizes;

  // A copy of `t` with its own storage (undefined stays undefined).
  torch::Tensor operator()(const torch::Tensor& t) {
    if (!t.defined()) return t;
    bytes += nbytes(t);
    torch::Tensor d = t.detach();
    bool poolable = d.device().type() == torch::kCPU && d.is_contiguous() && nbytes(d) >= (1u << 20);
    if (poolable) pooled_sizes.push_back(nbytes(d));
    if (!keep) return t;
    keep->push_back(poolable ? pool->copy(d) : d.clone());
    return keep->back();
  }
};

// Module::save's layout (parameters, buffers, serializable children), with copied tensors.
void copy_module(const torch::nn::Module& m, OutputArchive& archive, Copier& copy_of) {
  for (const auto& p : m.named_parameters(/*recurse=*/false)) {
    torch::Tensor c = copy_of(p.value());
    if (c.defined()) c.requires_grad_(p.value().requires_grad());
    archive.write(p.key(), c);
  }
  for (const auto& b : m.named_buffers(/*recurse=*/false)) archive.write(b.key(), copy_of(b.value()), true);
  for (const auto& child : m.named_children()) {
    if (!child.value()->is_serializable()) continue;
    OutputArchive child_archive(archive.compilation_unit());
    copy_module(*child.value(), child_archive, copy_of);
    archive.write(child.key(), child_archive);
  }
}

// A deep copy of one parameter's optimizer state, or null for a type not known here.
std::unique_ptr<optim::OptimizerParamState> copy_state(const optim::OptimizerParamState& s, Copier& copy_of) {
  if (auto* a = dynamic_cast<const optim::AdamParamState*>(&s)) {
    auto c = std::make_unique<optim::AdamParamState>(*a);
    c->exp_avg(copy_of(a->exp_avg()));
    c->exp_avg_sq(copy_of(a->exp_avg_sq()));
    c->max_exp_avg_sq(copy_of(a->max_exp_avg_sq()));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::AdamWParamState*>(&s)) {
    auto c = std::make_unique<optim::AdamWParamState>(*a);
    c->exp_avg(copy_of(a->exp_avg()));
    c->exp_avg_sq(copy_of(a->exp_avg_sq()));
    c->max_exp_avg_sq(copy_of(a->max_exp_avg_sq()));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::SGDParamState*>(&s)) {
    auto c = std::make_unique<optim::SGDParamState>(*a);
    c->momentum_buffer(copy_of(a->momentum_buffer()));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::RMSpropParamState*>(&s)) {
    auto c = std::make_unique<optim::RMSpropParamState>(*a);
    c->square_avg(copy_of(a->square_avg()));
    c->momentum_buffer(copy_of(a->momentum_buffer()));
    c->grad_avg(copy_of(a->grad_avg()));
    return c;
  }
  if (auto* a = dynamic_cast<const optim::AdagradParamState*>(&s)) {
    auto c = std::make_unique<optim::AdagradParamState>(*a);
    c->sum(copy_of(a->sum()));
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
  if (c.failed()) return;
  {
    OutputArchive archive(std::make_shared<torch::jit::CompilationUnit>());
    model.save(archive);
    write_archive(c, "model.pt", archive);
  }
  write_value(c, "optimizer.pt", optimizer);
  write_value(c, "rng.pt", rng_state());
  write_value(c, "counters.pt", torch::tensor({int64_t(step)}, torch::kInt64));
}

void prepare(torch::nn::Module& model, torch::optim::Optimizer& optimizer) {
  Copier sizes(nullptr);
  for (const auto& p : model.parameters()) sizes(p);
  for (const auto& b : model.buffers()) sizes(b);
  for (auto& kv : optimizer.state()) copy_state(*kv.second, sizes);  // lists, copies nothing
  sizes.pool->warm(std::move(sizes.pooled_sizes));
}

std::shared_ptr<Snapshot> snapshot(torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step) {
  BufferPool::instance()->join_warmer();
  auto s = std::make_shared<Snapshot>();
  s->step = step;
  torch::NoGradGuard no_grad;
  Copier copy_of(&s->copies);
  copy_module(model, s->model, copy_of);
  s->model_bytes = copy_of.bytes;
  const size_t model_copies = s->copies.size();

  auto& live = optimizer.state();
  std::vector<std::unique_ptr<optim::OptimizerParamState>> copies;
  copies.reserve(live.size());
  for (auto& kv : live) {
    auto c = copy_state(*kv.second, copy_of);
    if (!c) break;
    copies.push_back(std::move(c));
  }
  if (copies.size() == live.size()) {
    StateSwap swap(live, copies);
    s->optimizer << optimizer;  // Optimizer::save, which now sees the copies
    s->tensor_bytes = copy_of.bytes;
  } else {
    s->copies.resize(model_copies);  // drop the partial state copies
    s->optimizer_bytes = to_bytes(s->optimizer << optimizer, 0);
    s->tensor_bytes = s->model_bytes + s->optimizer_bytes.size();
  }
  s->rng = rng_state();
  copy_of.pool->trim();
  return s;
}

void persist(Checkpoint& c, Snapshot& s) {
  // Streamed straight into the staging folder. No second in-memory copy: on the background
  // thread that would fault in as many fresh pages as the state has, contending with the
  // training thread for the address space.
  write_archive(c, "model.pt", s.model);
  if (s.optimizer_bytes.empty()) {
    write_archive(c, "optimizer.pt", s.optimizer);
  } else {
    guarded(c, [&] { c.write_file("optimizer.pt", s.optimizer_bytes.data(), s.optimizer_bytes.size()); });
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

uint64_t load_weights(const std::string& folder, torch::nn::Module& model) {
  {
    torch::serialize::InputArchive archive;
    archive.load_from(folder + "/model.pt");
    model.load(archive);
  }
  torch::Tensor counters;
  torch::load(counters, folder + "/counters.pt");
  return uint64_t(counters[0].item<int64_t>());
}

}  // namespace lifeline::torch_state
