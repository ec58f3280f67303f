#include "diffuse/train/weights_export.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/models/network.h"
#include "diffuse/safetensors.h"
#include "diffuse/train/checkpoint.h"

namespace diffuse {

namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

void append_module(Named& out, const torch::nn::Module& m, const std::string& prefix) {
  for (const auto& p : m.named_parameters()) out.emplace_back(prefix + p.key(), p.value().detach());
  for (const auto& b : m.named_buffers()) out.emplace_back(prefix + b.key(), b.value().detach());
}

// Copies `prefix`-named tensors of the file into the module, each checked by name and shape.
void fill_module(torch::nn::Module& m, const SafeTensors& st, const std::string& prefix, const std::string& file) {
  torch::NoGradGuard ng;
  auto fill = [&](const std::string& name, torch::Tensor& dst) {
    const auto* src = st.find(prefix + name);
    if (!src)
      throw UsageError(fmt::format("safetensors file '{}' has no tensor '{}{}' that this model needs", file, prefix, name));
    if (src->sizes() != dst.sizes())
      throw UsageError(fmt::format("safetensors file '{}': '{}{}' has shape [{}], the model's is [{}]", file, prefix,
                                   name, fmt::join(src->sizes(), ", "), fmt::join(dst.sizes(), ", ")));
    dst.copy_(*src);
  };
  for (auto& p : m.named_parameters()) fill(p.key(), p.value());
  for (auto& b : m.named_buffers()) fill(b.key(), b.value());
}

std::vector<int64_t> parse_shape(const std::string& s, const std::string& file) {
  std::vector<int64_t> shape;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    try {
      size_t used = 0;
      const long long v = std::stoll(part, &used);
      if (used != part.size() || v < 1 || v > (1 << 20)) throw std::invalid_argument("range");
      shape.push_back(v);
    } catch (const std::exception&) {
      throw UsageError(fmt::format("safetensors file '{}': data_shape '{}' is not 1 to 4 sizes in 1..2^20", file, s));
    }
  }
  if (shape.empty() || shape.size() > 4)
    throw UsageError(fmt::format("safetensors file '{}': data_shape '{}' is not 1 to 4 sizes in 1..2^20", file, s));
  return shape;
}

}  // namespace

ExportSummary export_safetensors(const std::string& checkpoint, const std::string& out) {
  ExportSummary s;
  s.checkpoint = resolve_checkpoint(checkpoint);
  const CheckpointReader reader(s.checkpoint);
  const auto& m = reader.meta();
  const Config cfg = parse_config(m.config_yaml, "the config stored in checkpoint '" + s.checkpoint + "'");
  Named tensors;
  auto net = make_model(cfg, m.data);
  reader.load_weights(*net, false);
  append_module(tensors, *net, "model.");
  s.ema = reader.has_ema();
  if (s.ema) {
    auto ema = make_model(cfg, m.data);
    reader.load_weights(*ema, true);
    append_module(tensors, *ema, "ema.");
  }
  const std::map<std::string, std::string> meta{{"format", "diffuse"},
                                                {"config", m.config_yaml},
                                                {"data_shape", fmt::format("{}", fmt::join(m.data.shape, ","))},
                                                {"num_classes", std::to_string(m.data.num_classes)},
                                                {"step", std::to_string(m.step)}};
  save_safetensors(out, tensors, meta);
  s.tensors = static_cast<int64_t>(tensors.size());
  std::error_code ec;
  s.bytes = static_cast<int64_t>(std::filesystem::file_size(out, ec));
  return s;
}

void import_safetensors(const std::string& file, const std::string& out) {
  const auto st = load_safetensors(file);
  auto meta_of = [&](const char* key) {
    const auto it = st.metadata.find(key);
    if (it == st.metadata.end())
      throw UsageError(fmt::format("safetensors file '{}' lacks metadata '{}': not written by `diffuse export` (other "
                                   "layouts are not read yet)", file, key));
    return it->second;
  };
  if (meta_of("format") != "diffuse")
    throw UsageError(fmt::format("safetensors file '{}' has format '{}', expected 'diffuse'", file, meta_of("format")));
  CheckpointMeta m;
  m.config_yaml = meta_of("config");
  const Config cfg = parse_config(m.config_yaml, "the config stored in '" + file + "'");
  m.data.shape = parse_shape(meta_of("data_shape"), file);
  try {
    m.data.num_classes = std::stoll(meta_of("num_classes"));
    m.step = std::stoll(meta_of("step"));
  } catch (const std::exception&) {
    throw UsageError(fmt::format("safetensors file '{}': num_classes or step is not an integer", file));
  }
  if (m.data.num_classes < 0 || m.step < 0)
    throw UsageError(fmt::format("safetensors file '{}': num_classes or step is negative", file));
  auto net = make_model(cfg, m.data);
  fill_module(*net, st, "model.", file);
  const bool has_ema = st.find("ema." + net->named_parameters().begin()->key()) != nullptr;
  std::shared_ptr<Network> ema;
  if (has_ema) {
    ema = make_model(cfg, m.data);
    fill_module(*ema, st, "ema.", file);
  }
  save_checkpoint(out, m, *net, ema.get(), nullptr);
}

}  // namespace diffuse
