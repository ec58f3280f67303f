#include "diffuse/models/unet.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/models/layers.h"
#include "diffuse/shape_string.h"
#include "models/unet_blocks.h"

namespace diffuse {

namespace {

using torch::Tensor;

std::string sizes_list(const std::vector<int64_t>& sizes) {
  std::string out;
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out;
}

std::string level_name(int64_t size) { return std::to_string(size) + "x" + std::to_string(size); }

bool contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

torch::Tensor with_fourier_features(const torch::Tensor& x) {
  std::vector<Tensor> parts{x};
  for (const int n : {6, 7}) {
    const auto phase = x * (std::ldexp(1.0, n) * 2.0 * M_PI);
    parts.push_back(torch::sin(phase));
    parts.push_back(torch::cos(phase));
  }
  return torch::cat(parts, 1);
}

UNetOptions UNetOptions::from_config(const ModelConfig& cfg, int64_t image_size, int64_t in_channels,
                                     int64_t out_channels, int64_t num_classes) {
  UNetOptions o;
  o.image_size = image_size;
  // SuperResModel: the low-resolution image is stacked on x_t's channels.
  o.in_channels = cfg.low_res_size > 0 ? 2 * in_channels : in_channels;
  o.out_channels = out_channels;
  o.model_channels = cfg.model_channels;
  o.channel_mult = cfg.channel_mult;
  o.num_res_blocks = cfg.num_res_blocks;
  o.attention_resolutions = cfg.attention_resolutions;
  o.num_heads = cfg.num_heads;
  o.num_head_channels = cfg.num_head_channels;
  o.num_heads_upsample = cfg.num_heads_upsample;
  o.use_new_attention_order = cfg.use_new_attention_order;
  o.dropout = cfg.dropout;
  o.use_scale_shift_norm = cfg.use_scale_shift_norm;
  o.resblock_updown = cfg.resblock_updown;
  o.conv_resample = cfg.conv_resample;
  o.num_classes = resolve_num_classes(cfg, num_classes);
  o.low_res_size = cfg.low_res_size;
  o.fourier_features = cfg.fourier_features;
  return o;
}

int64_t unet_level_channels(int64_t model_channels, double mult) {
  return static_cast<int64_t>(mult * static_cast<double>(model_channels));
}

std::vector<int64_t> unet_level_sizes(const UNetOptions& opt) {
  std::vector<int64_t> sizes;
  int64_t size = opt.image_size;
  for (size_t level = 0; level < opt.channel_mult.size(); ++level, size /= 2) sizes.push_back(size);
  return sizes;
}

void validate(const UNetOptions& opt) {
  auto fail = [](const std::string& msg) { throw UsageError(msg); };
  if (opt.in_channels < 1)
    fail("data.channels: the UNet needs at least 1 input channel (got " + std::to_string(opt.in_channels) + ")");
  if (opt.out_channels < 1) fail("UNet out_channels must be >= 1 (got " + std::to_string(opt.out_channels) + ")");
  if (opt.image_size < 1) fail("data.image_size: must be >= 1 (got " + std::to_string(opt.image_size) + ")");
  if (opt.model_channels < 1)
    fail("model.model_channels: must be >= 1 (got " + std::to_string(opt.model_channels) + ")");
  if (opt.channel_mult.empty()) fail("model.channel_mult: needs at least one level");
  for (size_t level = 0; level < opt.channel_mult.size(); ++level) {
    const double mult = opt.channel_mult[level];
    const double product = mult * static_cast<double>(opt.model_channels);
    const std::string times = fmt::format("{} x {} = {}", mult, opt.model_channels, product);
    if (!(mult > 0) || product < 1 || product > 1e9 || product != std::floor(product))
      fail(fmt::format("model.channel_mult: level {} has {} channels; expected a whole number >= 1", level, times));
    if (unet_level_channels(opt.model_channels, mult) % kGroupNormGroups != 0) {
      const std::string key =
          (opt.model_channels % kGroupNormGroups != 0) ? "model.model_channels" : "model.channel_mult";
      fail(fmt::format("{}: level {} has {} channels, not a multiple of 32 (GroupNorm uses 32 groups)", key, level,
                       times));
    }
  }
  if (opt.num_res_blocks < 0)
    fail("model.num_res_blocks: must be >= 0 (got " + std::to_string(opt.num_res_blocks) + ")");
  const int64_t levels = static_cast<int64_t>(opt.channel_mult.size());
  if (levels > 62) fail("model.channel_mult: too many levels (" + std::to_string(levels) + ")");
  const int64_t factor = int64_t{1} << (levels - 1);
  if (opt.image_size % factor != 0)
    fail("data.image_size: " + std::to_string(opt.image_size) + " is not divisible by " + std::to_string(factor) +
         " = 2^(" + std::to_string(levels) + "-1): model.channel_mult has " + std::to_string(levels) +
         " levels, so the UNet halves the image " + std::to_string(levels - 1) + " times");
  const auto sizes = unet_level_sizes(opt);
  for (int64_t r : opt.attention_resolutions)
    if (!contains(sizes, r))
      fail("model.attention_resolutions: " + std::to_string(r) + " is not a feature-map size of this UNet (" +
           sizes_list(sizes) + ")");
  if (!(opt.dropout >= 0.0 && opt.dropout < 1.0)) {
    std::ostringstream os;
    os << "model.dropout: " << opt.dropout << " is not in [0, 1)";
    fail(os.str());
  }
  if (opt.low_res_size < 0 || opt.low_res_size >= opt.image_size)
    fail(fmt::format("model.low_res_size: {} must be 0 (no super-resolution) or below data.image_size {}",
                     opt.low_res_size, opt.image_size));
  if (opt.low_res_size > 0 && opt.in_channels % 2 != 0)
    fail("UNet in_channels must be even for super-resolution (x_t and the upsampled image)");
  if (opt.num_classes < 0) fail("model.num_classes: must be >= 0 (got " + std::to_string(opt.num_classes) + ")");
  // Heads must split every attention layer's channels: the levels listed, and the middle block
  // (always attention, at the last level).
  for (int64_t level = 0; level < levels; ++level) {
    if (!(contains(opt.attention_resolutions, sizes[level]) || level == levels - 1)) continue;
    const int64_t ch = unet_level_channels(opt.model_channels, opt.channel_mult[level]);
    const std::string where = " channels of the " + level_name(sizes[level]) + " level" +
                              (level == levels - 1 ? " (the middle block always has attention)" : "");
    if (opt.num_head_channels > 0) {
      if (ch % opt.num_head_channels != 0)
        fail("model.num_head_channels: " + std::to_string(opt.num_head_channels) + " does not divide the " +
             std::to_string(ch) + where);
    } else {
      if (opt.num_heads < 1) fail("model.num_heads: must be >= 1 (got " + std::to_string(opt.num_heads) + ")");
      if (ch % opt.num_heads != 0)
        fail("model.num_heads: " + std::to_string(opt.num_heads) + " heads do not divide the " + std::to_string(ch) +
             where);
      // The output blocks' attention (not the middle block's) at the levels listed.
      const int64_t up = opt.num_heads_upsample;
      if (up != -1 && up < 1) fail("model.num_heads_upsample: must be -1 or >= 1 (got " + std::to_string(up) + ")");
      if (up >= 1 && contains(opt.attention_resolutions, sizes[level]) && ch % up != 0)
        fail("model.num_heads_upsample: " + std::to_string(up) + " heads do not divide the " + std::to_string(ch) +
             " channels of the " + level_name(sizes[level]) + " level");
    }
  }
}

torch::Tensor qkv_attention(const torch::Tensor& qkv, int64_t num_heads, QkvOrder order) {
  if (qkv.dim() != 3 || num_heads < 1 || qkv.size(1) % (3 * num_heads) != 0)
    throw std::invalid_argument("qkv_attention: expected [B, heads*3*ch, T] with " + std::to_string(num_heads) +
                                " heads, got " + shape_string(qkv));
  const int64_t b = qkv.size(0), t = qkv.size(2), ch = qkv.size(1) / (3 * num_heads);
  const bool legacy = order == QkvOrder::Legacy;
#if TORCH_VERSION_MAJOR >= 2
  // One copy to [B, heads, T, 3ch] gives q, k, v with unit-stride channels (what the fused
  // kernels want); the default scale is 1/sqrt(ch).
  const auto parts =
      legacy ? qkv.reshape({b, num_heads, 3 * ch, t}).transpose(-1, -2).contiguous()
             : qkv.reshape({b, 3, num_heads, ch, t}).permute({0, 2, 4, 1, 3}).reshape({b, num_heads, t, 3 * ch});
  const auto q = parts.narrow(-1, 0, ch), k = parts.narrow(-1, ch, ch), v = parts.narrow(-1, 2 * ch, ch);
  return at::scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape({b, num_heads * ch, t});
#else
  // q, k, v as [B * heads, ch, T] each.
  Tensor q, k, v;
  if (legacy) {
    const auto parts = qkv.reshape({b * num_heads, 3 * ch, t});
    q = parts.narrow(1, 0, ch), k = parts.narrow(1, ch, ch), v = parts.narrow(1, 2 * ch, ch);
  } else {
    const auto parts = qkv.reshape({b, 3, num_heads * ch, t});
    q = parts.select(1, 0).reshape({b * num_heads, ch, t});
    k = parts.select(1, 1).reshape({b * num_heads, ch, t});
    v = parts.select(1, 2).reshape({b * num_heads, ch, t});
  }
  // Logits [N, T(query), S(key)] = q^T k / sqrt(ch); mul_ on bmm's fresh output.
  Tensor logits = at::bmm(q.transpose(1, 2), k).mul_(1.0 / std::sqrt(static_cast<double>(ch)));
  const auto dtype = logits.scalar_type();
  const Tensor weights = dtype == torch::kFloat || dtype == torch::kDouble
                             ? at::softmax(logits, -1)
                             : at::softmax(logits, -1, torch::kFloat).to(dtype);  // softmax in fp32
  return at::bmm(v, weights.transpose(1, 2)).view({b, num_heads * ch, t});
#endif
}

namespace unet_detail {

bool attention_at(const UNetOptions& opt, int64_t downsample) {
  return contains(opt.attention_resolutions, opt.image_size / downsample);
}

std::shared_ptr<Layer> make_attention(const UNetOptions& opt, int64_t ch, bool output_block) {
  int64_t heads = opt.num_heads;
  if (opt.num_head_channels > 0) heads = ch / opt.num_head_channels;
  else if (output_block && opt.num_heads_upsample != -1) heads = opt.num_heads_upsample;
  return std::make_shared<AttentionBlock>(ch, heads, opt.use_new_attention_order ? QkvOrder::New : QkvOrder::Legacy);
}

std::shared_ptr<Layer> make_res_block(const UNetOptions& opt, int64_t in, int64_t out, Resample r) {
  return std::make_shared<ResBlock>(in, 4 * opt.model_channels, opt.dropout, out, opt.use_scale_shift_norm, r);
}

Encoder build_encoder(nn::Module& owner, const UNetOptions& opt) {
  Encoder e;
  auto input_list = owner.register_module("input_blocks", nn::ModuleList());
  auto push_input = [&](std::shared_ptr<EmbedSequential> block, int64_t ch) {
    input_list->push_back(block);
    e.input_blocks.push_back(std::move(block));
    e.skip_channels.push_back(ch);
  };
  int64_t ch = unet_level_channels(opt.model_channels, opt.channel_mult[0]);
  {
    auto block = std::make_shared<EmbedSequential>();
    block->add(std::make_shared<InputConv>(opt.in_channels * (opt.fourier_features ? kFourierChannelFactor : 1), ch));
    push_input(block, ch);
  }
  int64_t ds = 1;
  const int64_t levels = static_cast<int64_t>(opt.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t level_ch = unet_level_channels(opt.model_channels, opt.channel_mult[level]);
    for (int64_t i = 0; i < opt.num_res_blocks; ++i) {
      auto block = std::make_shared<EmbedSequential>();
      block->add(make_res_block(opt, ch, level_ch, Resample::None));
      ch = level_ch;
      if (attention_at(opt, ds)) block->add(make_attention(opt, ch, false));
      push_input(block, ch);
    }
    if (level != levels - 1) {
      auto block = std::make_shared<EmbedSequential>();
      if (opt.resblock_updown) block->add(make_res_block(opt, ch, ch, Resample::Down));
      else block->add(std::make_shared<Downsample>(ch, opt.conv_resample));
      push_input(block, ch);
      ds *= 2;
    }
  }
  e.middle_block = owner.register_module("middle_block", std::make_shared<EmbedSequential>());
  e.middle_block->add(make_res_block(opt, ch, ch, Resample::None));
  e.middle_block->add(make_attention(opt, ch, false));
  e.middle_block->add(make_res_block(opt, ch, ch, Resample::None));
  e.channels = ch;
  e.downsample = ds;
  return e;
}

}  // namespace unet_detail

UNet::UNet(const UNetOptions& opt) : Network("UNet", opt.in_channels, opt.out_channels, opt.num_classes), opt_(opt) {
  using namespace unet_detail;
  namespace nn = torch::nn;
  validate(opt_);
  set_low_res_size(opt_.low_res_size);
  const int64_t mc = opt_.model_channels, emb_dim = 4 * mc;

  time_fc1_ = nn::Linear(mc, emb_dim);
  time_fc2_ = nn::Linear(emb_dim, emb_dim);
  register_module("time_embed", nn::Sequential(time_fc1_, nn::SiLU(), time_fc2_));
  if (opt_.num_classes > 0) label_emb_ = register_module("label_emb", nn::Embedding(opt_.num_classes + 1, emb_dim));

  Encoder encoder = build_encoder(*this, opt_);
  input_blocks_ = encoder.input_blocks;
  middle_block_ = encoder.middle_block;
  std::vector<int64_t>& skip_channels = encoder.skip_channels;
  int64_t ch = encoder.channels, ds = encoder.downsample;
  const int64_t levels = static_cast<int64_t>(opt_.channel_mult.size());

  auto output_list = register_module("output_blocks", nn::ModuleList());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t level_ch = unet_level_channels(mc, opt_.channel_mult[level]);
    for (int64_t i = 0; i <= opt_.num_res_blocks; ++i) {
      auto block = std::make_shared<EmbedSequential>();
      block->add(make_res_block(opt_, ch + skip_channels.back(), level_ch, Resample::None));
      skip_channels.pop_back();
      ch = level_ch;
      if (attention_at(opt_, ds)) block->add(make_attention(opt_, ch, true));
      if (level > 0 && i == opt_.num_res_blocks) {
        if (opt_.resblock_updown) block->add(make_res_block(opt_, ch, ch, Resample::Up));
        else block->add(std::make_shared<Upsample>(ch, opt_.conv_resample));
        ds /= 2;
      }
      output_list->push_back(block);
      output_blocks_.push_back(std::move(block));
    }
  }

  out_norm_ = make_group_norm(ch);
  out_conv_ = nn::Conv2d(nn::Conv2dOptions(ch, opt_.out_channels, 3).padding(1));
  zero_parameters(*out_conv_);
  register_module("out", nn::Sequential(out_norm_, nn::SiLU(), out_conv_));
}

torch::Tensor UNet::forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
  const int64_t levels = static_cast<int64_t>(opt_.channel_mult.size());
  const int64_t factor = int64_t{1} << (levels - 1);
  if (!x.defined() || x.dim() != 4 || x.size(1) != in_channels() || x.size(2) % factor != 0 || x.size(3) % factor != 0)
    throw std::invalid_argument("UNet: expected x of shape [B, " + std::to_string(in_channels()) +
                                ", H, W] with H and W divisible by " + std::to_string(factor) + ", got " +
                                shape_string(x));
  const int64_t batch = x.size(0);
  Tensor emb = time_fc1_->forward(timestep_embedding(batch_timesteps(t, batch, x.device()), opt_.model_channels));
  emb = time_fc2_->forward(silu_owned(std::move(emb)));
  if (label_emb_) emb.add_(label_emb_->forward(batch_labels(y, batch, x.device())));  // fresh Linear output
  // Every ResBlock's emb_layers begin with SiLU: apply it once here.
  const Tensor emb_act = silu_owned(std::move(emb));

  std::vector<Tensor> skips;
  skips.reserve(input_blocks_.size());
  Tensor h = opt_.fourier_features ? with_fourier_features(x) : x;
  for (const auto& block : input_blocks_) {
    h = block->forward(h, emb_act);
    skips.push_back(h);
  }
  h = middle_block_->forward(h, emb_act);
  for (const auto& block : output_blocks_) {
    h = block->forward(at::cat({h, skips.back()}, 1), emb_act);
    skips.pop_back();
  }
  return out_conv_->forward(group_norm_act(out_norm_, h, Activation::SiLU));
}

}  // namespace diffuse
