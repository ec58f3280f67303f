// ADM-style UNet: the architecture of OpenAI improved-diffusion's UNetModel (unet.py, nn.py),
// with guided-diffusion's num_head_channels, resblock_updown and use_new_attention_order options. The same settings
// give the same parameters, with the same state-dict names and shapes (time_embed.0.weight,
// input_blocks.1.0.in_layers.2.weight, ..., out.2.bias), so weights can be carried over.
//
// Layout: timestep embedding (sinusoidal, Linear, SiLU, Linear to 4 x model_channels) plus an
// optional label embedding; input blocks (3x3 conv, then per level num_res_blocks x [ResBlock,
// optional attention] and a downsample between levels); middle block (ResBlock, attention,
// ResBlock); output blocks (per level num_res_blocks + 1 x [ResBlock on the skip concatenation,
// optional attention], an upsample between levels); out = GroupNorm, SiLU, zero-initialised conv.
#pragma once

#include <torch/nn/modules/conv.h>
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

struct UNetOptions {
  int64_t image_size = 32;   // square inputs; fixes which levels get attention
  int64_t in_channels = 3;   // of the network's input: 2 x the image's for super-resolution
  int64_t out_channels = 3;  // 2 x the image's channels when sigma is learned
  int64_t model_channels = 64;
  std::vector<double> channel_mult = {1, 2, 2};  // level channels: unet_level_channels
  int64_t num_res_blocks = 2;
  // Feature-map sizes that get self-attention (e.g. {7} for the 7x7 level of a 28x28 input).
  std::vector<int64_t> attention_resolutions = {};
  int64_t num_heads = 4;
  int64_t num_head_channels = -1;   // > 0: heads = channels / num_head_channels
  int64_t num_heads_upsample = -1;  // heads of the output blocks (num_head_channels -1); -1 = num_heads
  bool use_new_attention_order = false;
  double dropout = 0.0;
  bool use_scale_shift_norm = true;
  bool resblock_updown = false;
  bool conv_resample = true;
  int64_t num_classes = 0;   // > 0: class-conditional, label num_classes = null
  int64_t low_res_size = 0;  // > 0: super-resolution (models/super_res.h makes the input)
  bool fourier_features = false;  // the first convolution also sees fourier_features(x)

  // The model.* keys of cfg plus the sizes the data (and the caller) decide.
  static UNetOptions from_config(const ModelConfig& cfg, int64_t image_size, int64_t in_channels, int64_t out_channels,
                                 int64_t num_classes);
};

// Throws UsageError naming the config key (model.*, data.image_size) when opt cannot build a
// UNet: sizes not divisible by 2^(levels-1), attention resolutions matching no level, channel
// counts GroupNorm(32) or the heads cannot split, dropout outside [0, 1), ...
void validate(const UNetOptions& opt);

// Channels of a level, model_channels * mult truncated as upstream's int(mult * model_channels);
// validate() requires the product to be whole.
int64_t unet_level_channels(int64_t model_channels, double mult);

// Feature-map sizes of the levels, image_size / 2^level (e.g. 28, 14, 7).
std::vector<int64_t> unet_level_sizes(const UNetOptions& opt);

// How the channels of qkv are laid out. Legacy (improved-diffusion's QKVAttentionLegacy): each
// head's q, k, v stacked, [heads, 3, ch]. New (guided-diffusion's QKVAttention): all of q, then
// k, then v, [3, heads, ch].
enum class QkvOrder { Legacy, New };

// QKV attention: qkv is [B, heads * 3 * ch, T] in `order`; returns softmax(q^T k / sqrt(ch))
// applied to v as [B, heads * ch, T]. Uses scaled_dot_product_attention on LibTorch >= 2.
torch::Tensor qkv_attention(const torch::Tensor& qkv, int64_t num_heads, QkvOrder order = QkvOrder::Legacy);

namespace unet_detail {
class EmbedSequential;
}

class UNet : public Network {
 public:
  explicit UNet(const UNetOptions& opt);

  // x: [B, in_channels, H, W] with H and W divisible by 2^(levels-1) (any memory format; the
  // output follows the network's working format). Returns [B, out_channels, H, W].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y = {}) override;

  const UNetOptions& options() const { return opt_; }

 private:
  UNetOptions opt_;
  torch::nn::Linear time_fc1_{nullptr}, time_fc2_{nullptr};
  torch::nn::Embedding label_emb_{nullptr};
  std::vector<std::shared_ptr<unet_detail::EmbedSequential>> input_blocks_, output_blocks_;
  std::shared_ptr<unet_detail::EmbedSequential> middle_block_;
  torch::nn::GroupNorm out_norm_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};
};

// VDM's Fourier features (Kingma et al. 2021, appendix): x with sin(2^n 2 pi x) and cos(2^n 2 pi x)
// for n = 6, 7 stacked on its channels, [B, C, H, W] -> [B, 5C, H, W]. At 2^6 2 pi one step of the
// 8-bit grid (2/255) turns the phase by about pi, so the features separate neighbouring values.
torch::Tensor with_fourier_features(const torch::Tensor& x);
constexpr int64_t kFourierChannelFactor = 5;

}  // namespace diffuse
