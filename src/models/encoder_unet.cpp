#include "diffuse/models/encoder_unet.h"

#include <torch/torch.h>

#include <cmath>
#include <string>

#include "diffuse/error.h"
#include "diffuse/shape_string.h"
#include "models/unet_blocks.h"

namespace diffuse {

namespace nn = torch::nn;
using torch::Tensor;

// CLIP's AttentionPool2d as guided-diffusion has it: the spatial mean joins the H*W positions
// as a first token, a learned positional embedding is added, and multi-head attention (q, k, v
// split before the heads) is read out at that first token through c_proj.
class EncoderUNet::AttentionPool : public nn::Module {
 public:
  AttentionPool(int64_t spatial, int64_t channels, int64_t head_channels, int64_t out_channels)
      : nn::Module("AttentionPool2d"), heads_(channels / head_channels) {
    pos_ = register_parameter("positional_embedding", torch::randn({channels, spatial * spatial + 1}) /
                                                          std::sqrt(static_cast<double>(channels)));
    qkv_ = register_module("qkv_proj", nn::Conv1d(nn::Conv1dOptions(channels, 3 * channels, 1)));
    proj_ = register_module("c_proj", nn::Conv1d(nn::Conv1dOptions(channels, out_channels, 1)));
  }

  Tensor forward(const Tensor& x) {
    const int64_t b = x.size(0), c = x.size(1);
    if (x.size(2) * x.size(3) + 1 != pos_.size(1))
      throw std::invalid_argument("EncoderUNet: attention pooling was built for " + std::to_string(pos_.size(1) - 1) +
                                  " positions, got " + shape_string(x));
    Tensor h = x.reshape({b, c, -1});
    h = at::cat({h.mean(-1, /*keepdim=*/true), h}, -1) + pos_.to(h.scalar_type());
    const Tensor a = qkv_attention(qkv_->forward(h), heads_, QkvOrder::New);
    return proj_->forward(a.narrow(2, 0, 1)).squeeze(2);  // c_proj is per position: only token 0 is read
  }

 private:
  int64_t heads_;
  Tensor pos_;
  nn::Conv1d qkv_{nullptr}, proj_{nullptr};
};

EncoderUNet::EncoderUNet(const UNetOptions& opt, ClassifierPool pool)
    : Network("EncoderUNet", opt.in_channels, opt.out_channels, 0), opt_(opt), pool_(pool) {
  using namespace unet_detail;
  if (opt_.num_classes != 0) throw std::invalid_argument("EncoderUNet: a classifier is not label-conditioned");
  validate(opt_);
  const int64_t mc = opt_.model_channels, emb_dim = 4 * mc;
  time_fc1_ = nn::Linear(mc, emb_dim);
  time_fc2_ = nn::Linear(emb_dim, emb_dim);
  register_module("time_embed", nn::Sequential(time_fc1_, nn::SiLU(), time_fc2_));

  Encoder encoder = build_encoder(*this, opt_);
  input_blocks_ = encoder.input_blocks;
  middle_block_ = encoder.middle_block;
  const int64_t ch = encoder.channels;

  if (pool_ == ClassifierPool::Spatial || pool_ == ClassifierPool::SpatialV2) {
    // upstream's out = Sequential(Linear, ReLU, Linear) or (Linear, GroupNorm32, SiLU, Linear) over
    // the concatenated block means: out.0, out.2 / out.0, out.1, out.3.
    int64_t features = encoder.channels;  // the middle block's
    for (const int64_t c : encoder.skip_channels) features += c;
    constexpr int64_t kWidth = 2048;
    spatial_head_ = nn::Sequential(nn::Linear(features, kWidth));
    if (pool_ == ClassifierPool::Spatial) {
      spatial_head_->push_back(nn::ReLU());
    } else {
      spatial_head_->push_back(make_group_norm(kWidth));
      spatial_head_->push_back(nn::SiLU());
    }
    spatial_head_->push_back(nn::Linear(kWidth, opt_.out_channels));
    register_module("out", spatial_head_);
    return;
  }
  // upstream's out = Sequential(normalization, SiLU, head...): the names out.0, out.2 / out.3.
  out_norm_ = make_group_norm(ch);
  auto out = register_module("out", nn::ModuleList());
  out->push_back(out_norm_);
  out->push_back(nn::SiLU());
  if (pool_ == ClassifierPool::Attention) {
    if (opt_.num_head_channels < 1 || ch % opt_.num_head_channels != 0)
      throw UsageError("model.num_head_channels: attention pooling needs heads of num_head_channels that divide the " +
                       std::to_string(ch) + " channels of the last level (got " +
                       std::to_string(opt_.num_head_channels) + ")");
    attention_pool_ = std::make_shared<AttentionPool>(opt_.image_size / encoder.downsample, ch, opt_.num_head_channels,
                                                      opt_.out_channels);
    out->push_back(attention_pool_);
  } else {
    out->push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
    out_conv_ = nn::Conv2d(nn::Conv2dOptions(ch, opt_.out_channels, 1));
    zero_parameters(*out_conv_);
    out->push_back(out_conv_);
    out->push_back(nn::Flatten());
  }
}

torch::Tensor EncoderUNet::block_means(torch::Tensor h, const torch::Tensor& emb) const {
  std::vector<Tensor> means;
  means.reserve(input_blocks_.size() + 1);
  for (const auto& block : input_blocks_) {
    h = block->forward(h, emb);
    means.push_back(h.mean({2, 3}).to(torch::kFloat));
  }
  means.push_back(middle_block_->forward(h, emb).mean({2, 3}).to(torch::kFloat));
  return at::cat(means, 1);
}

torch::Tensor EncoderUNet::embedding(const torch::Tensor& x, const torch::Tensor& t) {
  if (!x.defined() || x.dim() != 4 || x.size(1) != in_channels() || x.size(2) != opt_.image_size ||
      x.size(3) != opt_.image_size)
    throw std::invalid_argument("EncoderUNet: expected x of shape [B, " + std::to_string(in_channels()) + ", " +
                                std::to_string(opt_.image_size) + ", " + std::to_string(opt_.image_size) + "], got " +
                                shape_string(x));
  const int64_t batch = x.size(0);
  Tensor emb = time_fc1_->forward(timestep_embedding(batch_timesteps(t, batch, x.device()), opt_.model_channels));
  emb = time_fc2_->forward(silu_owned(std::move(emb)));
  return silu_owned(std::move(emb));  // the SiLU that starts every ResBlock's emb_layers
}

torch::Tensor EncoderUNet::trunk(torch::Tensor h, const torch::Tensor& emb) {
  for (const auto& block : input_blocks_) h = block->forward(h, emb);
  h = middle_block_->forward(h, emb);
  return group_norm_act(out_norm_, h, Activation::SiLU);
}

torch::Tensor EncoderUNet::forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
  const Tensor emb = embedding(x, t);
  if (spatial_head_) return spatial_head_->forward(block_means(x, emb));
  const Tensor h = trunk(x, emb);
  if (attention_pool_) return attention_pool_->forward(h);
  return out_conv_->forward(h.mean({2, 3}, /*keepdim=*/true)).flatten(1);
}

torch::Tensor EncoderUNet::features(const torch::Tensor& x, const torch::Tensor& t) {
  if (attention_pool_)
    throw UsageError(
        "a classifier with model.pool attention has no pooled feature vector; train the feature "
        "network with model.pool adaptive or spatial");
  const Tensor emb = embedding(x, t);
  if (spatial_head_) return block_means(x, emb);
  return trunk(x, emb).mean({2, 3}).to(torch::kFloat);
}

}  // namespace diffuse
