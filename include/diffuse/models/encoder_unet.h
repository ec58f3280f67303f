// guided-diffusion's EncoderUNetModel: the noisy-image classifier of classifier guidance
// (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", sec. 4). The UNet's
// time embedding, input blocks and middle block, then a head to one logit per class: GroupNorm,
// SiLU and attention pooling (CLIP's AttentionPool2d) or the spatial mean and a 1x1 convolution;
// or (spatial, spatial_v2) the spatial mean of every input block's and the middle block's output,
// concatenated, into a two-layer MLP of width 2048 (ReLU; GroupNorm and SiLU for v2).
// The same settings give upstream's parameters with its state-dict names and shapes
// (input_blocks.1.0.in_layers.2.weight, ..., out.2.positional_embedding, out.2.c_proj.weight).
#pragma once

#include <torch/types.h>

#include <memory>
#include <vector>

#include "diffuse/config.h"
#include "diffuse/models/network.h"
#include "diffuse/models/unet.h"

namespace diffuse {

namespace unet_detail {
class EmbedSequential;
}

class EncoderUNet : public Network {
 public:
  // opt as for the UNet, with out_channels the class count and num_classes 0 (the classifier is
  // not conditioned on a label). Attention pooling needs opt.num_head_channels > 0. Throws
  // UsageError naming the config key otherwise.
  EncoderUNet(const UNetOptions& opt, ClassifierPool pool);

  // x: [B, in_channels, image_size, image_size]; t as for any network; y is ignored.
  // Returns the logits [B, out_channels].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y = {}) override;

  // The pooled representation the head reads, [B, D] float32: the spatial mean of the normalised
  // trunk (adaptive pool; D = the last level's channels) or every block's spatial mean (spatial,
  // spatial_v2). What a Fashion-MNIST classifier gives FID/KID as features (eval/fid.h), as
  // Inception's pool3 does. Attention pooling has no such vector: UsageError.
  torch::Tensor features(const torch::Tensor& x, const torch::Tensor& t);

  const UNetOptions& options() const { return opt_; }
  ClassifierPool pool() const { return pool_; }

 private:
  class AttentionPool;
  // The spatial pools' features: every input block's and the middle block's spatial mean, [B, sum of channels].
  torch::Tensor block_means(torch::Tensor h, const torch::Tensor& emb) const;
  // The checked input's time embedding (SiLU applied), and the normalised trunk (input blocks,
  // middle block, GroupNorm + SiLU) that the adaptive and attention heads read.
  torch::Tensor embedding(const torch::Tensor& x, const torch::Tensor& t);
  torch::Tensor trunk(torch::Tensor h, const torch::Tensor& emb);
  UNetOptions opt_;
  ClassifierPool pool_;
  torch::nn::Linear time_fc1_{nullptr}, time_fc2_{nullptr};
  std::vector<std::shared_ptr<unet_detail::EmbedSequential>> input_blocks_;
  std::shared_ptr<unet_detail::EmbedSequential> middle_block_;
  torch::nn::GroupNorm out_norm_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};  // adaptive
  std::shared_ptr<AttentionPool> attention_pool_;
  torch::nn::Sequential spatial_head_{nullptr};  // spatial, spatial_v2
};

}  // namespace diffuse
