#include "diffuse/models/network.h"

#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/models/encoder_unet.h"
#include "diffuse/models/layers.h"
#include "diffuse/models/mlp.h"
#include "diffuse/models/unet.h"
#include "diffuse/shape_string.h"

namespace diffuse {

Network::Network(std::string name, int64_t in_channels, int64_t out_channels, int64_t num_classes)
    : torch::nn::Module(std::move(name)),
      in_channels_(in_channels),
      out_channels_(out_channels),
      num_classes_(num_classes) {}

torch::Tensor Network::batch_timesteps(const torch::Tensor& t, int64_t batch, const torch::Device& device) const {
  if (!t.defined()) throw std::invalid_argument(name() + ": the timesteps t are undefined");
  torch::Tensor tt = t;
  if (t.numel() == 1 && t.dim() <= 1) {
    tt = t.reshape({1}).expand({batch});
  } else if (t.dim() != 1 || t.size(0) != batch) {
    throw std::invalid_argument(name() + ": expected timesteps t of shape [" + std::to_string(batch) + "], got " +
                                shape_string(t));
  }
  // improved-diffusion's _scale_timesteps: t.float() * (1000 / T), the product in float32.
  tt = tt.to(device, torch::kFloat);
  if (timestep_scale_ != 1.0) tt = tt * timestep_scale_;
  return timestep_shift_ == 0.0 ? tt : tt + timestep_shift_;
}

torch::Tensor Network::batch_labels(const torch::Tensor& y, int64_t batch, const torch::Device& device) const {
  if (!class_conditional()) throw std::logic_error(name() + ": batch_labels on an unconditional network");
  if (!y.defined()) return torch::full({batch}, num_classes_, torch::TensorOptions(torch::kLong).device(device));
  if (y.dim() != 1 || y.size(0) != batch || y.is_floating_point() || y.is_complex())
    throw std::invalid_argument(name() + ": expected integer class labels y of shape [" + std::to_string(batch) +
                                "], got " + shape_string(y));
  return y.to(device, torch::kLong);
}

torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim, double max_period) {
  if (!t.defined() || t.dim() != 1)
    throw std::invalid_argument("timestep_embedding: expected t of shape [B], got " + shape_string(t));
  if (dim < 1) throw std::invalid_argument("timestep_embedding: dim must be >= 1");
  const int64_t half = dim / 2;
  const auto opts = torch::TensorOptions(torch::kFloat).device(t.device());
  // Same float32 order of operations as improved-diffusion: exp(-log(P) * i / half).
  const torch::Tensor freqs = torch::arange(half, opts)
                                  .mul_(-std::log(max_period))
                                  .div_(static_cast<double>(std::max<int64_t>(half, 1)))
                                  .exp_();
  const torch::Tensor args = t.to(torch::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  torch::Tensor emb = torch::cat({args.cos(), args.sin()}, 1);
  if (dim % 2) emb = torch::cat({emb, torch::zeros({t.size(0), 1}, opts)}, 1);
  return emb;
}

int64_t resolve_num_classes(const ModelConfig& cfg, int64_t dataset_classes) {
  if (!cfg.class_cond) return 0;
  if (cfg.num_classes > 0) return cfg.num_classes;
  if (cfg.num_classes < 0)
    throw UsageError("model.num_classes: must be >= 0 (got " + std::to_string(cfg.num_classes) + ")");
  if (dataset_classes > 0) return dataset_classes;
  throw UsageError(
      "model.class_cond: true, but the class count is unknown (the dataset has no labels and model.num_classes is 0)");
}

std::shared_ptr<Network> make_network(const ModelConfig& cfg, int64_t image_size, int64_t in_channels,
                                      int64_t out_channels, int64_t num_classes) {
  switch (cfg.type) {
    case ModelType::UNet:
      return std::make_shared<UNet>(UNetOptions::from_config(cfg, image_size, in_channels, out_channels, num_classes));
    case ModelType::Mlp:
      return std::make_shared<Mlp>(MlpOptions::from_config(cfg, in_channels, out_channels, num_classes));
    case ModelType::Classifier:
      return std::make_shared<EncoderUNet>(UNetOptions::from_config(cfg, image_size, in_channels, out_channels, 0),
                                           cfg.pool);
  }
  throw UsageError("model.type: unknown network type");
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

std::string format_count(int64_t n) {
  const bool negative = n < 0;
  std::string digits = std::to_string(negative ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return negative ? "-" + out : out;
}

namespace {

// "torch::nn::Conv2dImpl" -> "Conv2d", "diffuse::unet_detail::ResBlock" -> "ResBlock".
std::string short_type(const std::string& name) {
  std::string s = name;
  const auto pos = s.rfind("::");
  if (pos != std::string::npos) s = s.substr(pos + 2);
  if (s.size() > 4 && s.compare(s.size() - 4, 4, "Impl") == 0) s.resize(s.size() - 4);
  return s;
}

std::string dims_string(const torch::Tensor& t) {
  std::string s;
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "x" : "") + std::to_string(t.size(i));
  return s.empty() ? "scalar" : s;
}

struct SummaryRow {
  std::string name, type, shapes, count;
};

void collect_rows(const torch::nn::Module& module, const std::string& prefix, std::vector<SummaryRow>& rows,
                  int64_t& trainable) {
  const auto params = module.named_parameters(/*recurse=*/false);
  if (!params.is_empty()) {
    SummaryRow row;
    row.name = prefix.empty() ? "(root)" : prefix;
    row.type = short_type(module.name());
    int64_t n = 0;
    for (const auto& item : params) {
      row.shapes += (row.shapes.empty() ? "" : ", ") + item.key() + " " + dims_string(item.value());
      n += item.value().numel();
      if (item.value().requires_grad()) trainable += item.value().numel();
    }
    row.count = format_count(n);
    rows.push_back(std::move(row));
  }
  for (const auto& child : module.named_children())
    collect_rows(*child.value(), prefix.empty() ? child.key() : prefix + "." + child.key(), rows, trainable);
}

}  // namespace

std::string model_summary(const torch::nn::Module& module) {
  std::vector<SummaryRow> rows;
  int64_t trainable = 0;
  collect_rows(module, "", rows, trainable);
  const SummaryRow header{"Layer", "Type", "Parameters", "Count"};
  size_t w_name = header.name.size(), w_type = header.type.size(), w_shapes = header.shapes.size(),
         w_count = header.count.size();
  for (const auto& r : rows) {
    w_name = std::max(w_name, r.name.size());
    w_type = std::max(w_type, r.type.size());
    w_shapes = std::max(w_shapes, r.shapes.size());
    w_count = std::max(w_count, r.count.size());
  }
  std::ostringstream os;
  auto line = [&](const SummaryRow& r) {
    os << r.name << std::string(w_name - r.name.size() + 2, ' ') << r.type
       << std::string(w_type - r.type.size() + 2, ' ') << r.shapes << std::string(w_shapes - r.shapes.size() + 2, ' ')
       << std::string(w_count - r.count.size(), ' ') << r.count << '\n';
  };
  line(header);
  os << std::string(w_name + w_type + w_shapes + w_count + 6, '-') << '\n';
  for (const auto& r : rows) line(r);
  const int64_t total = count_parameters(module);
  os << "Total parameters: " << format_count(total);
  if (trainable != total) os << " (trainable " << format_count(trainable) << ")";
  os << '\n';
  return os.str();
}

void convert_to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  const auto cl = at::MemoryFormat::ChannelsLast;
  for (auto& p : module.parameters()) {
    if (p.dim() != 4) continue;
    p.set_data(p.data().contiguous(cl));
    if (p.grad().defined()) p.mutable_grad() = p.grad().contiguous(cl);
  }
  for (auto& b : module.buffers())
    if (b.dim() == 4) b.set_data(b.data().contiguous(cl));
}

}  // namespace diffuse
