#include "diffuse/models/mlp.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/models/layers.h"
#include "diffuse/shape_string.h"

namespace diffuse {

namespace mlp_detail {

namespace nn = torch::nn;
using torch::Tensor;

// Pre-activation residual block conditioned on the (activated) timestep embedding.
class Block : public nn::Module {
 public:
  Block(int64_t hidden, bool layer_norm) : nn::Module("MlpBlock") {
    if (layer_norm) norm_ = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({hidden})));
    fc1_ = register_module("fc1", nn::Linear(hidden, hidden));
    emb_ = register_module("emb", nn::Linear(hidden, hidden));
    fc2_ = register_module("fc2", nn::Linear(hidden, hidden));
  }

  Tensor forward(const Tensor& h, const Tensor& emb) {
    Tensor r = norm_ ? silu_owned(norm_->forward(h)) : at::silu(h);  // h itself must survive
    r = fc1_->forward(r);
    r.add_(emb_->forward(emb));  // fc1's fresh output (not saved for backward)
    r = fc2_->forward(silu_owned(std::move(r)));
    return r.add_(h);
  }

 private:
  nn::LayerNorm norm_{nullptr};
  nn::Linear fc1_{nullptr}, emb_{nullptr}, fc2_{nullptr};
};

}  // namespace mlp_detail

MlpOptions MlpOptions::from_config(const ModelConfig& cfg, int64_t data_dim, int64_t out_dim, int64_t num_classes) {
  MlpOptions o;
  o.data_dim = data_dim;
  o.out_dim = out_dim;
  o.hidden = cfg.hidden;
  o.num_blocks = cfg.num_blocks;
  o.num_classes = resolve_num_classes(cfg, num_classes);
  return o;
}

void validate(const MlpOptions& opt) {
  if (opt.data_dim < 1)
    throw UsageError("MLP data dimension (data.channels / the toy data's dimension) must be >= 1 (got " +
                     std::to_string(opt.data_dim) + ")");
  if (opt.out_dim < 1) throw UsageError("MLP out_dim must be >= 1 (got " + std::to_string(opt.out_dim) + ")");
  if (opt.hidden < 1) throw UsageError("model.hidden: must be >= 1 (got " + std::to_string(opt.hidden) + ")");
  if (opt.num_blocks < 0)
    throw UsageError("model.num_blocks: must be >= 0 (got " + std::to_string(opt.num_blocks) + ")");
  if (opt.num_classes < 0)
    throw UsageError("model.num_classes: must be >= 0 (got " + std::to_string(opt.num_classes) + ")");
}

Mlp::Mlp(const MlpOptions& opt) : Network("Mlp", opt.data_dim, opt.out_dim, opt.num_classes), opt_(opt) {
  namespace nn = torch::nn;
  validate(opt_);
  const int64_t h = opt_.hidden;
  time_fc1_ = nn::Linear(h, h);
  time_fc2_ = nn::Linear(h, h);
  register_module("time_embed", nn::Sequential(time_fc1_, nn::SiLU(), time_fc2_));
  if (opt_.num_classes > 0) label_emb_ = register_module("label_emb", nn::Embedding(opt_.num_classes + 1, h));
  in_proj_ = register_module("in_proj", nn::Linear(opt_.data_dim, h));
  auto list = register_module("blocks", nn::ModuleList());
  for (int64_t i = 0; i < opt_.num_blocks; ++i) {
    auto block = std::make_shared<mlp_detail::Block>(h, opt_.layer_norm);
    list->push_back(block);
    blocks_.push_back(std::move(block));
  }
  if (opt_.layer_norm) out_norm_ = register_module("out_norm", nn::LayerNorm(nn::LayerNormOptions({h})));
  out_proj_ = register_module("out_proj", nn::Linear(h, opt_.out_dim));
  zero_parameters(*out_proj_);
}

torch::Tensor Mlp::forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != opt_.data_dim)
    throw std::invalid_argument("Mlp: expected x of shape [B, " + std::to_string(opt_.data_dim) + "], got " +
                                shape_string(x));
  const int64_t batch = x.size(0);
  torch::Tensor emb = time_fc1_->forward(timestep_embedding(batch_timesteps(t, batch, x.device()), opt_.hidden));
  emb = time_fc2_->forward(silu_owned(std::move(emb)));
  if (label_emb_) emb.add_(label_emb_->forward(batch_labels(y, batch, x.device())));
  const torch::Tensor emb_act = silu_owned(std::move(emb));

  torch::Tensor h = in_proj_->forward(x);
  for (const auto& block : blocks_) h = block->forward(h, emb_act);
  h = out_norm_ ? silu_owned(out_norm_->forward(h)) : at::silu(h);
  return out_proj_->forward(h);
}

}  // namespace diffuse
