#include "diffuse/models/unet.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/models/layers.h"

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
Tensor resample(const Tensor& x, Resample mode) {
  if (mode == Resample::Up) return upsample_nearest_2x(x);
  if (mode == Resample::Down) return at::avg_pool2d(x, {2, 2}, {2, 2});
  return x;
}

class ResBlock : public Layer {
 public:
  ResBlock(int64_t channels, int64_t emb_channels, double dropout, int64_t out_channels,
           bool scale_shift, Resample resample_mode)
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
    register_module("out_layers",
                    nn::Sequential(norm2_, nn::SiLU(), nn::Dropout(dropout), conv2_));
    if (out_channels != channels)
      skip_ = register_module("skip_connection", nn::Conv2d(nn::Conv2dOptions(channels, out_channels, 1)));
  }

  // emb: SiLU(timestep embedding), [B, emb_channels] (the SiLU that starts improved-diffusion's
  // emb_layers is applied once by the caller for all blocks).
  Tensor forward(const Tensor& x, const Tensor& emb) override {
    Tensor h = silu_owned(group_norm32(norm1_, x));
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
      // FiLM-style conditioning: norm(h) * (1 + scale) + shift.
      const Tensor e4 = e.view({batch, 2 * c, 1, 1});
      h = at::addcmul(e4.narrow(1, c, c), group_norm32(norm2_, h), e4.narrow(1, 0, c) + 1);
    } else {
      h.add_(e.view({batch, c, 1, 1}));  // h is conv1's output: its backward does not need it
      h = group_norm32(norm2_, h);
    }
    h = silu_owned(std::move(h));
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
    const Tensor qkv = at::conv2d(group_norm32(norm_, x), qkv_->weight.unsqueeze(-1), qkv_->bias);
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
    if (use_conv) op_ = register_module("op", nn::Conv2d(nn::Conv2dOptions(channels, channels, 3).stride(2).padding(1)));
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

}  // namespace unet_detail

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

UNetOptions UNetOptions::from_config(const ModelConfig& cfg, int64_t image_size, int64_t in_channels,
                                     int64_t out_channels, int64_t num_classes) {
  UNetOptions o;
  o.image_size = image_size;
  o.in_channels = in_channels;
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
  return o;
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
  if (opt.out_channels < 1)
    fail("UNet out_channels must be >= 1 (got " + std::to_string(opt.out_channels) + ")");
  if (opt.image_size < 1) fail("data.image_size: must be >= 1 (got " + std::to_string(opt.image_size) + ")");
  if (opt.model_channels < 1)
    fail("model.model_channels: must be >= 1 (got " + std::to_string(opt.model_channels) + ")");
  if (opt.channel_mult.empty()) fail("model.channel_mult: needs at least one level");
  for (size_t level = 0; level < opt.channel_mult.size(); ++level) {
    const int64_t mult = opt.channel_mult[level];
    if (mult < 1)
      fail("model.channel_mult: multiplier " + std::to_string(mult) + " of level " + std::to_string(level) +
           " must be >= 1");
    const int64_t ch = mult * opt.model_channels;
    if (ch % kGroupNormGroups != 0) {
      const std::string key = (opt.model_channels % kGroupNormGroups != 0) ? "model.model_channels" : "model.channel_mult";
      fail(key + ": level " + std::to_string(level) + " has " + std::to_string(mult) + " x " +
           std::to_string(opt.model_channels) + " = " + std::to_string(ch) +
           " channels, not a multiple of 32 (GroupNorm uses 32 groups)");
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
  if (opt.num_classes < 0) fail("model.num_classes: must be >= 0 (got " + std::to_string(opt.num_classes) + ")");
  // Heads must split every attention layer's channels: the levels listed, and the middle block
  // (always attention, at the last level).
  for (int64_t level = 0; level < levels; ++level) {
    if (!(contains(opt.attention_resolutions, sizes[level]) || level == levels - 1)) continue;
    const int64_t ch = opt.channel_mult[level] * opt.model_channels;
    const std::string where = " channels of the " + level_name(sizes[level]) + " level" +
                              (level == levels - 1 ? " (the middle block always has attention)" : "");
    if (opt.num_head_channels > 0) {
      if (ch % opt.num_head_channels != 0)
        fail("model.num_head_channels: " + std::to_string(opt.num_head_channels) + " does not divide the " +
             std::to_string(ch) + where);
    } else {
      if (opt.num_heads < 1) fail("model.num_heads: must be >= 1 (got " + std::to_string(opt.num_heads) + ")");
      if (ch % opt.num_heads != 0)
        fail("model.num_heads: " + std::to_string(opt.num_heads) + " heads do not divide the " +
             std::to_string(ch) + where);
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
  const auto parts = legacy ? qkv.reshape({b, num_heads, 3 * ch, t}).transpose(-1, -2).contiguous()
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

UNet::UNet(const UNetOptions& opt)
    : Network("UNet", opt.in_channels, opt.out_channels, opt.num_classes), opt_(opt) {
  using namespace unet_detail;
  namespace nn = torch::nn;
  validate(opt_);
  const int64_t mc = opt_.model_channels, emb_dim = 4 * mc;
  const double dropout = opt_.dropout;
  const bool ssn = opt_.use_scale_shift_norm;

  time_fc1_ = nn::Linear(mc, emb_dim);
  time_fc2_ = nn::Linear(emb_dim, emb_dim);
  register_module("time_embed", nn::Sequential(time_fc1_, nn::SiLU(), time_fc2_));
  if (opt_.num_classes > 0)
    label_emb_ = register_module("label_emb", nn::Embedding(opt_.num_classes + 1, emb_dim));

  const QkvOrder order = opt_.use_new_attention_order ? QkvOrder::New : QkvOrder::Legacy;
  // As guided-diffusion: num_head_channels wins; else num_heads, or num_heads_upsample in the
  // output blocks when it is set.
  auto attention = [&](int64_t ch, bool output_block) {
    int64_t heads = opt_.num_heads;
    if (opt_.num_head_channels > 0)
      heads = ch / opt_.num_head_channels;
    else if (output_block && opt_.num_heads_upsample != -1)
      heads = opt_.num_heads_upsample;
    return std::make_shared<AttentionBlock>(ch, heads, order);
  };
  auto attention_at = [&](int64_t ds) { return contains(opt_.attention_resolutions, opt_.image_size / ds); };
  auto res_block = [&](int64_t in, int64_t out, Resample r) {
    return std::make_shared<ResBlock>(in, emb_dim, dropout, out, ssn, r);
  };

  auto input_list = register_module("input_blocks", nn::ModuleList());
  int64_t ch = opt_.channel_mult[0] * mc;
  auto push_input = [&](std::shared_ptr<EmbedSequential> block) {
    input_list->push_back(block);
    input_blocks_.push_back(std::move(block));
  };
  {
    auto block = std::make_shared<EmbedSequential>();
    block->add(std::make_shared<InputConv>(opt_.in_channels, ch));
    push_input(block);
  }
  std::vector<int64_t> skip_channels{ch};
  int64_t ds = 1;
  const int64_t levels = static_cast<int64_t>(opt_.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t level_ch = opt_.channel_mult[level] * mc;
    for (int64_t i = 0; i < opt_.num_res_blocks; ++i) {
      auto block = std::make_shared<EmbedSequential>();
      block->add(res_block(ch, level_ch, Resample::None));
      ch = level_ch;
      if (attention_at(ds)) block->add(attention(ch, false));
      push_input(block);
      skip_channels.push_back(ch);
    }
    if (level != levels - 1) {
      auto block = std::make_shared<EmbedSequential>();
      if (opt_.resblock_updown)
        block->add(res_block(ch, ch, Resample::Down));
      else
        block->add(std::make_shared<Downsample>(ch, opt_.conv_resample));
      push_input(block);
      skip_channels.push_back(ch);
      ds *= 2;
    }
  }

  middle_block_ = register_module("middle_block", std::make_shared<EmbedSequential>());
  middle_block_->add(res_block(ch, ch, Resample::None));
  middle_block_->add(attention(ch, false));
  middle_block_->add(res_block(ch, ch, Resample::None));

  auto output_list = register_module("output_blocks", nn::ModuleList());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t level_ch = opt_.channel_mult[level] * mc;
    for (int64_t i = 0; i <= opt_.num_res_blocks; ++i) {
      auto block = std::make_shared<EmbedSequential>();
      block->add(res_block(ch + skip_channels.back(), level_ch, Resample::None));
      skip_channels.pop_back();
      ch = level_ch;
      if (attention_at(ds)) block->add(attention(ch, true));
      if (level > 0 && i == opt_.num_res_blocks) {
        if (opt_.resblock_updown)
          block->add(res_block(ch, ch, Resample::Up));
        else
          block->add(std::make_shared<Upsample>(ch, opt_.conv_resample));
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
  if (!x.defined() || x.dim() != 4 || x.size(1) != in_channels() || x.size(2) % factor != 0 ||
      x.size(3) % factor != 0)
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
  Tensor h = x;
  for (const auto& block : input_blocks_) {
    h = block->forward(h, emb_act);
    skips.push_back(h);
  }
  h = middle_block_->forward(h, emb_act);
  for (const auto& block : output_blocks_) {
    h = block->forward(at::cat({h, skips.back()}, 1), emb_act);
    skips.pop_back();
  }
  return out_conv_->forward(silu_owned(group_norm32(out_norm_, h)));
}

}  // namespace diffuse
