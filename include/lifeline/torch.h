#pragma once
// lifeline_torch: saves and loads a LibTorch training state (module, optimizer, RNG states,
// step) into a checkpoint folder, so a resumed run continues bit-exactly. Synchronously (save),
// or asynchronously: snapshot() copies the state to memory, the only part that stalls
// training, and persist() writes that copy on the client's background save thread.
//
// A write error (disk full, I/O error) is not thrown by save() or persist(): it fails the
// checkpoint at once (its staging folder is removed), the rest of the state is skipped, and the
// checkpoint's commit() returns false with that error, printed and counted for the supervisor
// (Checkpoint::failed() tells before). Training goes on; older checkpoints stay intact. No
// exception ever crosses PyTorch's serializer (which would end in std::terminate). Errors that
// are not the disk's (a serializer error, out of memory) still throw.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lifeline/client.h"

namespace lifeline::torch_state {

// Writes model.pt, optimizer.pt, rng.pt and counters.pt into the checkpoint's folder.
void save(Checkpoint& checkpoint, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
          uint64_t step);

// Restores what save() wrote; returns the step the checkpoint holds.
uint64_t load(const std::string& folder, torch::nn::Module& model, torch::optim::Optimizer& optimizer);

// Restores only the model's parameters and buffers of what save() wrote (a warm start from
// another run's checkpoint that begins a new training: fresh optimizer, RNG untouched); returns
// the step the checkpoint holds.
uint64_t load_weights(const std::string& folder, torch::nn::Module& model);

// A training state copied to memory (parameters, buffers, optimizer state, RNG, step), laid out
// as save() lays it out; training may change the live tensors while it is persisted.
struct Snapshot {
  torch::serialize::OutputArchive model;
  torch::serialize::OutputArchive optimizer;
  std::string optimizer_bytes;  // set instead of `optimizer` for an optimizer type copied by serializing
  torch::Tensor rng;
  uint64_t step = 0;
  size_t tensor_bytes = 0;  // bytes of tensor data copied
  size_t model_bytes = 0;   // of which parameters and buffers
  // Second references to every copy: the serializer memoizes shared tensors, so copies must be
  // shared as the live tensors are for persist() to write save()'s bytes.
  std::vector<torch::Tensor> copies;
};

// Copies the state. Parameters and buffers are copied as Module::save writes them (a module
// that overrides save() is copied by its parameters, buffers and children all the same);
// Adam, AdamW, SGD, RMSprop and Adagrad state is copied tensor by tensor, any other optimizer
// is serialized here. Tensors stay on their device.
std::shared_ptr<Snapshot> snapshot(torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step);

// Maps the buffers snapshot() will copy into and faults their pages in, on a thread of its own,
// and returns at once. The buffers are mappings of lifeline's own, not blocks of the trainer's
// allocator, whose heap they would otherwise crowd. Call it once after the first optimizer step
// (when the optimizer state exists): the first snapshot then costs what later ones do, a copy,
// instead of a page fault per 4 KiB as well (1 GiB on the benchmark machine: about 0.07 s
// instead of 0.5 s).
// Snapshot buffers are kept for the next snapshot: between saves they hold one copy of the state.
void prepare(torch::nn::Module& model, torch::optim::Optimizer& optimizer);

// Writes a snapshot: the same files, byte for byte, as save() of the state it copied.
// Consumes the snapshot's archives (call it once per snapshot).
void persist(Checkpoint& checkpoint, Snapshot& snapshot);

// Client::save_async with snapshot() and persist(): returns false when no save was needed
// (a stop request already answered by a commit).
bool save_async(Client& client, torch::nn::Module& model, torch::optim::Optimizer& optimizer, uint64_t step,
                const std::map<std::string, double>& metrics = {});

}  // namespace lifeline::torch_state
