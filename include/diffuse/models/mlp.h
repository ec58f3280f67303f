// A small residual MLP denoiser for low-dimensional (2-D toy) data.
//
//   emb = Linear(SiLU(Linear(sinusoidal(t, hidden)))) [+ label embedding]
//   h   = Linear(x)                                            (input projection to `hidden`)
//   h   = h + fc2(SiLU(fc1(SiLU(norm(h))) + emb_proj(SiLU(emb))))     x num_blocks
//   out = out_proj(SiLU(norm(h)))                               (out_proj zero-initialised)
// norm is LayerNorm(hidden) or the identity.
#pragma once

#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "diffuse/models/network.h"

namespace diffuse {

struct ModelConfig;

struct MlpOptions {
  int64_t data_dim = 2;  // input dimension D
  int64_t out_dim = 2;   // 2 x D when sigma is learned
  int64_t hidden = 256;  // width of every block (and of the timestep embedding)
  int64_t num_blocks = 3;
  bool layer_norm = true;
  int64_t num_classes = 0;  // > 0: class-conditional, label num_classes = null

  static MlpOptions from_config(const ModelConfig& cfg, int64_t data_dim, int64_t out_dim, int64_t num_classes);
};

// Throws UsageError naming the key (model.hidden, model.num_blocks, ...).
void validate(const MlpOptions& opt);

namespace mlp_detail {
class Block;
}

class Mlp : public Network {
 public:
  explicit Mlp(const MlpOptions& opt);

  // x: [B, data_dim] -> [B, out_dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y = {}) override;

  const MlpOptions& options() const { return opt_; }

 private:
  MlpOptions opt_;
  torch::nn::Linear time_fc1_{nullptr}, time_fc2_{nullptr}, in_proj_{nullptr}, out_proj_{nullptr};
  torch::nn::Embedding label_emb_{nullptr};
  torch::nn::LayerNorm out_norm_{nullptr};
  std::vector<std::shared_ptr<mlp_detail::Block>> blocks_;
};

}  // namespace diffuse
