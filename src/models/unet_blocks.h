// The ADM UNet's building blocks (improved-diffusion's unet.py) and its encoder half (time
// embedding aside: input blocks and middle block), shared by the UNet and guided-diffusion's
// noisy-image classifier (EncoderUNet). Private to src/models.
#pragma once

#include <torch/nn.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/models/layers.h"
#include "diffuse/models/unet.h"

namespace diffuse {

namespace unet_detail {

namespace nn = torch::nn;
using torch::Tensor;

// A layer of a TimestepEmbedSequential: takes the activated timestep embedding as a second
// input (ignored by layers that are not conditioned on it).
class Layer : public nn::Module {
 public:
  explicit Layer(const std::string& name) : nn::Module(name) {}
  virtual Tensor forward(const Tensor& x, const Tensor& emb) = 0;
};

// The first 3x3 conv. Owns its weight and bias directly so that the state-dict names are
// improved-diffusion's (input_blocks.0.0.weight).
class InputConv : public Layer {
 public:
  InputConv(int64_t in_channels, int64_t out_channels) : Layer("Conv2d") {
    nn::Conv2d init(nn::Conv2dOptions(in_channels, out_channels, 3).padding(1));  // PyTorch's init
    weight_ = register_parameter("weight", init->weight);
    bias_ = register_parameter("bias", init->bias);
  }
  Tensor forward(const Tensor& x, const Tensor&) override {
    return at::conv2d(x, weight_, bias_, /*stride=*/1, /*padding=*/1);
  }

 private:
  Tensor weight_, bias_;
};

enum class Resample { None, Up, Down };

// Parameter-free 2x resampling: nearest-neighbour up, 2x2 average-pool down.
inline Tensor resample(const Tensor& x, Resample mode) {
  if (mode == Resample::Up) return upsample_nearest_2x(x);
  if (mode == Resample::Down) return at::avg_pool2d(x, {2, 2}, {2, 2});
  return x;
}

class ResBlock : public Layer {
 public:
  ResBlock(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels, bool scale_shift,
           Resample resample_mode)
      : Layer("ResBlock"),
        out_channels_(out_channels),
        dropout_(dropout),
        scale_shift_(scale_shift),
        resample_(resample_mode) {
    norm1_ = make_group_norm(channels);
    conv1_ = nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 3).padding(1));
    register_module("in_layers", nn::Sequential(norm1_, nn::SiLU(), conv1_));
    emb_fc_ = nn::Linear(emb_channels, (scale_shift ? 2 : 1) * out_channels);
    register_module("emb_layers", nn::Sequential(nn::SiLU(), emb_fc_));
    norm2_ = make_group_norm(out_channels);
    conv2_ = nn::Conv2d(nn::Conv2dOptions(out_channels, out_channels, 3).padding(1));
    zero_parameters(*conv2_);
    register_module("out_layers", nn::Sequential(norm2_, nn::SiLU(), nn::Dropout(dropout), conv2_));
    if (out_channels != channels)
      skip_ = register_module("skip_connection", nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 1)));
  }

  // emb: SiLU(timestep embedding), [B, emb_channels] (the SiLU that starts improved-diffusion's
  // emb_layers is applied once by the caller for all blocks).
  Tensor forward(const Tensor& x, const Tensor& emb) override {
    Tensor h = group_norm_act(norm1_, x, Activation::SiLU);
    Tensor xs = x;
    if (resample_ != Resample::None) {
      h = resample(h, resample_);
      xs = resample(x, resample_);
    }
    h = conv1_->forward(h);

    Tensor e = emb_fc_->forward(emb);
    if (e.scalar_type() != h.scalar_type()) e = e.to(h.scalar_type());
    const int64_t batch = e.size(0), c = out_channels_;
    if (scale_shift_) {
      // FiLM-style conditioning: SiLU(norm(h) * (1 + scale) + shift).
      const Tensor e2 = e.view({batch, 2 * c});
      h = group_norm_act(norm2_, h, Activation::SiLU, e2.narrow(1, 0, c), e2.narrow(1, c, c));
    } else {
      h.add_(e.view({batch, c, 1, 1}));  // h is conv1's output: its backward does not need it
      h = group_norm_act(norm2_, h, Activation::SiLU);
    }
    if (dropout_ > 0.0 && is_training()) h = at::dropout(h, dropout_, /*train=*/true);
    h = conv2_->forward(h);
    // In place on conv2's fresh output (not saved for backward).
    return skip_ ? h.add_(skip_->forward(xs)) : h.add_(xs);
  }

 private:
  int64_t out_channels_;
  double dropout_;
  bool scale_shift_;
  Resample resample_;
  nn::GroupNorm norm1_{nullptr}, norm2_{nullptr};
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, skip_{nullptr};
  nn::Linear emb_fc_{nullptr};
};

// Self-attention over the spatial positions (improved-diffusion's AttentionBlock). qkv and
// proj_out are Conv1d modules (as in the reference, so weights are [3C, C, 1] and [C, C, 1]);
// they are applied as 1x1 Conv2d on a view of the weight, which keeps the input's memory format.
class AttentionBlock : public Layer {
 public:
  AttentionBlock(int64_t channels, int64_t num_heads, QkvOrder order)
      : Layer("AttentionBlock"), num_heads_(num_heads), order_(order) {
    norm_ = register_module("norm", make_group_norm(channels));
    qkv_ = register_module("qkv", nn::Conv1d(nn::Conv1dOptions(channels, 3 * channels, 1)));
    proj_ = register_module("proj_out", nn::Conv1d(nn::Conv1dOptions(channels, channels, 1)));
    zero_parameters(*proj_);
  }

  Tensor forward(const Tensor& x, const Tensor&) override {
    const int64_t b = x.size(0), c = x.size(1), height = x.size(2), width = x.size(3);
    const Tensor qkv = at::conv2d(group_norm_act(norm_, x, Activation::None), qkv_->weight.unsqueeze(-1), qkv_->bias);
    Tensor a = qkv_attention(qkv.reshape({b, 3 * c, height * width}), num_heads_, order_).view({b, c, height, width});
    if (x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous())
      a = a.contiguous(at::MemoryFormat::ChannelsLast);
    Tensor h = at::conv2d(a, proj_->weight.unsqueeze(-1), proj_->bias);
    return h.add_(x);  // proj_out's fresh output
  }

 private:
  int64_t num_heads_;
  QkvOrder order_;
  nn::GroupNorm norm_{nullptr};
  nn::Conv1d qkv_{nullptr}, proj_{nullptr};
};

class Downsample : public Layer {
 public:
  Downsample(int64_t channels, bool use_conv) : Layer("Downsample") {
    if (use_conv)
      op_ = register_module("op", nn::Conv2d(nn::Conv2dOptions(channels, channels, 3).stride(2).padding(1)));
  }
  Tensor forward(const Tensor& x, const Tensor&) override {
    return op_ ? op_->forward(x) : resample(x, Resample::Down);
  }

 private:
  nn::Conv2d op_{nullptr};
};

class Upsample : public Layer {
 public:
  Upsample(int64_t channels, bool use_conv) : Layer("Upsample") {
    if (use_conv) conv_ = register_module("conv", nn::Conv2d(nn::Conv2dOptions(channels, channels, 3).padding(1)));
  }
  Tensor forward(const Tensor& x, const Tensor&) override {
    Tensor h = resample(x, Resample::Up);
    return conv_ ? conv_->forward(h) : h;
  }

 private:
  nn::Conv2d conv_{nullptr};
};

// improved-diffusion's TimestepEmbedSequential: children named 0, 1, ...
class EmbedSequential : public nn::Module {
 public:
  EmbedSequential() : nn::Module("TimestepEmbedSequential") {}
  void add(std::shared_ptr<Layer> layer) {
    register_module(std::to_string(layers_.size()), layer);
    layers_.push_back(std::move(layer));
  }
  Tensor forward(Tensor x, const Tensor& emb) {
    for (const auto& layer : layers_) x = layer->forward(x, emb);
    return x;
  }

 private:
  std::vector<std::shared_ptr<Layer>> layers_;
};

// The input blocks (registered on `owner` as "input_blocks") and the middle block
// ("middle_block") of opt's UNet, as improved-diffusion builds them. Returns the channels of each
// input block's output (the skip connections), the channels and downsampling factor at the end.
struct Encoder {
  std::vector<std::shared_ptr<EmbedSequential>> input_blocks;
  std::shared_ptr<EmbedSequential> middle_block;
  std::vector<int64_t> skip_channels;
  int64_t channels = 0;
  int64_t downsample = 1;
};
Encoder build_encoder(nn::Module& owner, const UNetOptions& opt);

// Self-attention for `ch` channels with opt's heads: num_head_channels wins; else num_heads, or
// num_heads_upsample in the output blocks when it is set (as guided-diffusion).
std::shared_ptr<Layer> make_attention(const UNetOptions& opt, int64_t ch, bool output_block);
std::shared_ptr<Layer> make_res_block(const UNetOptions& opt, int64_t in, int64_t out, Resample r);
bool attention_at(const UNetOptions& opt, int64_t downsample);

}  // namespace unet_detail

}  // namespace diffuse
