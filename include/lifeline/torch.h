#pragma once
// lifeline_torch: saves and loads a LibTorch training state (module, optimizer, RNG states,
// step) into a checkpoint folder, so a resumed run continues bit-exactly.
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "lifeline/client.h"

namespace lifeline::torch_state {

// Writes model.pt, optimizer.pt, rng.pt and counters.pt into the checkpoint's folder.
void save(Checkpoint& checkpoint, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
          uint64_t step);

// Restores what save() wrote; returns the step the checkpoint holds.
uint64_t load(const std::string& folder, torch::nn::Module& model, torch::optim::Optimizer& optimizer);

}  // namespace lifeline::torch_state
