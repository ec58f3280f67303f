#include "diffuse/train/checkpoint.h"

#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/safetensors.h"
#include "diffuse/train/training_state.h"
#include "checkpoint_legacy.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

constexpr const char* kFormatName = "diffuse-checkpoint";
constexpr const char* kWeightsFormatName = "diffuse";  // diffuse export

std::vector<torch::Tensor> optimizer_params(torch::optim::AdamW& opt) {
  std::vector<torch::Tensor> v;
  for (auto& g : opt.param_groups())
    for (auto& p : g.params()) v.push_back(p);
  return v;
}

void append_optimizer(Named& out, torch::optim::AdamW& opt) {
  const auto params = optimizer_params(opt);
  for (size_t i = 0; i < params.size(); ++i) {
    const auto* st = adamw_state(opt, params[i]);
    if (!st) continue;
    const std::string key = fmt::format("optimizer.{}.", i);
    out.emplace_back(key + "exp_avg", st->exp_avg().detach());
    out.emplace_back(key + "exp_avg_sq", st->exp_avg_sq().detach());
    if (st->max_exp_avg_sq().defined()) out.emplace_back(key + "max_exp_avg_sq", st->max_exp_avg_sq().detach());
    out.emplace_back(key + "step", torch::tensor(static_cast<int64_t>(st->step()), torch::kLong));
  }
}

// What a weights-only file holds: enough to rebuild the network.
std::map<std::string, std::string> weights_meta(const CheckpointMeta& m) {
  return {{"format", kWeightsFormatName},
          {"step", std::to_string(m.step)},
          {"config", m.config_yaml},
          {"data_shape", fmt::format("{}", fmt::join(m.data.shape, ","))},
          {"num_classes", std::to_string(m.data.num_classes)}};
}

std::map<std::string, std::string> checkpoint_meta(const CheckpointMeta& m, int64_t optimizer_params) {
  auto s = weights_meta(m);
  s["format"] = kFormatName;
  s["format_version"] = std::to_string(kCheckpointFormat);
  s["data_epoch"] = std::to_string(m.data_epoch);
  s["data_offset"] = std::to_string(m.data_offset);
  s["loss_scale"] = fmt::format("{}", m.loss_scale);
  s["loss_scale_good_steps"] = std::to_string(m.loss_scale_good_steps);
  s["elapsed_seconds"] = fmt::format("{}", m.elapsed_seconds);
  s["world_size"] = std::to_string(m.world_size);
  s["data_fingerprint"] = m.data_fingerprint;
  if (optimizer_params >= 0) s["optimizer.params"] = std::to_string(optimizer_params);
  return s;
}

Named weight_tensors(torch::nn::Module& model, torch::nn::Module* ema) {
  Named tensors;
  append_named_tensors(tensors, model, "model.");
  if (ema) append_named_tensors(tensors, *ema, "ema.");
  return tensors;
}

// Metadata fields, each parsed whole and refused naming the file and key.
class MetaFields {
 public:
  MetaFields(const std::map<std::string, std::string>& m, const std::string& file) : m_(m), file_(file) {}
  const std::string* find(const char* key) const {
    const auto it = m_.find(key);
    return it == m_.end() ? nullptr : &it->second;
  }
  const std::string& text(const char* key) const {
    if (const auto* v = find(key)) return *v;
    throw UsageError(fmt::format("checkpoint '{}' lacks metadata '{}' (corrupt or from another version)", file_, key));
  }
  int64_t integer(const char* key, int64_t min) const {
    const auto& v = text(key);
    int64_t x = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || end != v.data() + v.size() || x < min)
      throw UsageError(
          fmt::format("checkpoint '{}': metadata '{}' is '{}', expected an integer >= {}", file_, key, v, min));
    return x;
  }
  double real(const char* key) const {
    const auto& v = text(key);
    char* end = nullptr;
    const double x = v.empty() ? 0.0 : std::strtod(v.c_str(), &end);
    if (v.empty() || end != v.c_str() + v.size() || !std::isfinite(x) || x < 0)
      throw UsageError(
          fmt::format("checkpoint '{}': metadata '{}' is '{}', expected a finite number >= 0", file_, key, v));
    return x;
  }
  std::vector<int64_t> shape(const char* key) const {
    const auto& v = text(key);
    std::vector<int64_t> sizes;
    for (size_t at = 0; at <= v.size() && sizes.size() <= 4;) {
      const size_t comma = std::min(v.find(',', at), v.size());
      int64_t x = 0;
      const auto [end, ec] = std::from_chars(v.data() + at, v.data() + comma, x);
      if (ec != std::errc() || end != v.data() + comma)
        throw UsageError(fmt::format("checkpoint '{}': {} '{}' is not a list of sizes such as 1,28,28", file_, key, v));
      sizes.push_back(x);
      at = comma + 1;
    }
    return parse_data_shape(sizes, file_);
  }

 private:
  const std::map<std::string, std::string>& m_;
  const std::string& file_;
};

void read_meta(const SafeTensors& st, const std::string& path, CheckpointMeta& m, bool& weights_only) {
  const MetaFields f(st.metadata, path);
  const auto* format = f.find("format");
  if (!format)
    throw UsageError(
        fmt::format("'{}' is a safetensors file without a diffuse format in its metadata (not a diffuse "
                    "checkpoint or `diffuse export` file; other layouts are not read yet)",
                    path));
  weights_only = *format == kWeightsFormatName;
  if (!weights_only && *format != kFormatName)
    throw UsageError(
        fmt::format("'{}' has format '{}', expected '{}' or '{}'", path, *format, kFormatName, kWeightsFormatName));
  if (!weights_only && f.integer("format_version", 0) != kCheckpointFormat)
    throw UsageError(fmt::format("checkpoint '{}' has format version {}, this diffuse reads {} (and {})", path,
                                 f.text("format_version"), kCheckpointFormat, kLegacyCheckpointFormat));
  m.step = f.integer("step", 0);
  m.config_yaml = f.text("config");
  m.data.shape = f.shape("data_shape");
  m.data.num_classes = f.integer("num_classes", 0);
  if (weights_only) return;
  m.data_epoch = f.integer("data_epoch", 0);
  m.data_offset = f.integer("data_offset", 0);
  m.loss_scale = f.real("loss_scale");
  m.loss_scale_good_steps = f.integer("loss_scale_good_steps", 0);
  m.elapsed_seconds = f.real("elapsed_seconds");
  m.world_size = f.integer("world_size", 1);
  m.data_fingerprint = f.text("data_fingerprint");
  auto state = [&](const char* name) {
    const auto* t = st.find(std::string("state.") + name);
    return t ? *t : torch::Tensor();
  };
  m.cpu_rng_state = state("cpu_rng");
  m.device_rng_state = state("device_rng");
  m.timestep_sampler_state = state("timestep_sampler");
}

size_t count_prefixed(const SafeTensors& st, const std::string& prefix) {
  return static_cast<size_t>(std::count_if(st.tensors.begin(), st.tensors.end(), [&](const auto& nt) {
    return nt.first.compare(0, prefix.size(), prefix) == 0;
  }));
}
}  // namespace

std::vector<int64_t> parse_data_shape(const std::vector<int64_t>& sizes, const std::string& file) {
  if (sizes.empty() || sizes.size() > 4)
    throw UsageError(
        fmt::format("checkpoint '{}': data_shape [{}] has {} sizes, expected 1 to 4 int64 sizes (corrupt?)", file,
                    fmt::join(sizes, ", "), sizes.size()));
  constexpr int64_t kMaxSize = int64_t{1} << 20;
  for (const int64_t v : sizes)
    if (v < 1 || v > kMaxSize)
      throw UsageError(fmt::format("checkpoint '{}': data_shape [{}] has a size outside 1..{} (corrupt?)", file,
                                   fmt::join(sizes, ", "), kMaxSize));
  return sizes;
}

void save_checkpoint(const std::string& path, const CheckpointMeta& m, torch::nn::Module& model, torch::nn::Module* ema,
                     torch::optim::AdamW* optimizer) {
  Named tensors = weight_tensors(model, ema);
  if (optimizer) append_optimizer(tensors, *optimizer);
  if (m.cpu_rng_state.defined()) tensors.emplace_back("state.cpu_rng", m.cpu_rng_state);
  if (m.device_rng_state.defined()) tensors.emplace_back("state.device_rng", m.device_rng_state.cpu());
  if (m.timestep_sampler_state.defined()) tensors.emplace_back("state.timestep_sampler", m.timestep_sampler_state);
  const int64_t n_params = optimizer ? static_cast<int64_t>(optimizer_params(*optimizer).size()) : -1;
  save_safetensors(path, tensors, checkpoint_meta(m, n_params));
}

int64_t save_weights_file(const std::string& path, const CheckpointMeta& meta, torch::nn::Module& model,
                          torch::nn::Module* ema) {
  const Named tensors = weight_tensors(model, ema);
  save_safetensors(path, tensors, weights_meta(meta));
  return static_cast<int64_t>(tensors.size());
}

CheckpointReader::~CheckpointReader() = default;

CheckpointReader::CheckpointReader(const std::string& path, const torch::Device& device, bool trust_legacy)
    : path_(path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw UsageError("checkpoint '" + path + "' does not exist");
  if (fs::is_directory(path, ec)) throw UsageError("checkpoint '" + path + "' is a directory, not a checkpoint file");
  const std::string bytes = read_file_bytes(path);
  if (is_zip(bytes)) {  // a LibTorch archive is a zip file
    if (!trust_legacy)
      throw UsageError(
          fmt::format("'{}' is a zip archive: a format-1 checkpoint (a LibTorch archive) or not a "
                      "checkpoint. diffuse reads those only on request, since LibTorch's parser can "
                      "crash on a crafted file; if you trust it, convert it once with `diffuse import "
                      "{} --out NEW.pt`",
                      path, path));
    legacy_ = open_legacy_checkpoint(path, device, meta_, has_ema_, has_optimizer_);
    return;
  }
  try {
    file_ = std::make_unique<SafeTensors>(decode_safetensors(bytes, path));
  } catch (const UsageError& e) {  // said as a checkpoint: "safetensors file 'P': why" -> why
    const std::string what = e.what(), prefix = "safetensors file '" + path + "': ";
    throw UsageError(fmt::format("checkpoint '{}' is corrupt or not a checkpoint (a safetensors file): {}", path,
                                 what.compare(0, prefix.size(), prefix) == 0 ? what.substr(prefix.size()) : what));
  }
  bool weights_only = false;
  read_meta(*file_, path, meta_, weights_only);
  has_ema_ = count_prefixed(*file_, "ema.") > 0;
  has_optimizer_ = !weights_only && file_->metadata.count("optimizer.params") > 0;
}

void CheckpointReader::load_weights(torch::nn::Module& module, bool ema) const {
  if (legacy_) return legacy_load_weights(*legacy_, module, ema, path_);
  const std::string prefix = ema ? "ema." : "model.";
  const size_t stored = count_prefixed(*file_, prefix);
  if (stored == 0) throw UsageError(fmt::format("checkpoint '{}' has no {} weights", path_, ema ? "ema" : "model"));
  torch::NoGradGuard ng;
  size_t filled = 0;
  auto fill = [&](const std::string& name, torch::Tensor& dst) {
    const auto* src = file_->find(prefix + name);
    if (!src)
      throw UsageError(
          fmt::format("checkpoint '{}' has no tensor '{}{}' that this model needs (another model "
                      "configuration?)",
                      path_, prefix, name));
    if (src->sizes() != dst.sizes())
      throw UsageError(
          fmt::format("checkpoint '{}': '{}{}' has shape [{}] but this model's is [{}] (another model "
                      "configuration?)",
                      path_, prefix, name, fmt::join(src->sizes(), ", "), fmt::join(dst.sizes(), ", ")));
    dst.copy_(*src);
    ++filled;
  };
  for (auto& p : module.named_parameters()) fill(p.key(), p.value());
  for (auto& b : module.named_buffers()) fill(b.key(), b.value());
  if (stored != filled)
    throw UsageError(
        fmt::format("checkpoint '{}' holds {} '{}' tensors, this model has {} (another model "
                    "configuration?)",
                    path_, stored, prefix, filled));
}

void CheckpointReader::load_optimizer(torch::optim::AdamW& optimizer) const {
  if (legacy_) return legacy_load_optimizer(*legacy_, optimizer, path_);
  if (!has_optimizer_)
    throw UsageError("checkpoint '" + path_ + "' has no optimizer state (it cannot resume training)");
  const auto params = optimizer_params(optimizer);
  const std::string& stored = file_->metadata.at("optimizer.params");
  if (stored != std::to_string(params.size()))
    throw UsageError(fmt::format("checkpoint '{}' holds optimizer state for {} parameters, this model has {}", path_,
                                 stored, params.size()));
  auto moment = [&](const std::string& key, const torch::Tensor& p) {
    const auto* t = file_->find(key);
    if (!t) return torch::Tensor();
    if (t->sizes() != p.sizes() || !t->is_floating_point())
      throw UsageError(fmt::format("checkpoint '{}': '{}' is {} [{}], its parameter is [{}]", path_, key,
                                   c10::toString(t->scalar_type()), fmt::join(t->sizes(), ", "),
                                   fmt::join(p.sizes(), ", ")));
    return t->to(p.device(), p.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string key = fmt::format("optimizer.{}.", i);
    auto exp_avg = moment(key + "exp_avg", params[i]);
    if (!exp_avg.defined()) continue;  // no step taken for this parameter
    auto exp_avg_sq = moment(key + "exp_avg_sq", params[i]);
    const auto* step = file_->find(key + "step");
    if (!exp_avg_sq.defined() || !step || step->scalar_type() != torch::kLong || step->numel() != 1 ||
        step->item<int64_t>() < 0)
      throw UsageError(
          fmt::format("checkpoint '{}': the optimizer state of parameter {} is incomplete or has a bad "
                      "step",
                      path_, i));
    auto st = std::make_unique<torch::optim::AdamWParamState>();
    st->step(step->item<int64_t>());
    st->exp_avg(exp_avg);
    st->exp_avg_sq(exp_avg_sq);
    if (auto mx = moment(key + "max_exp_avg_sq", params[i]); mx.defined()) st->max_exp_avg_sq(mx);
    set_adamw_state(optimizer, params[i], std::move(st));
  }
}

LoadedNetwork load_network(const CheckpointReader& reader, const Config& cfg, bool prefer_ema,
                           const torch::Device& device) {
  LoadedNetwork out{make_model(cfg, reader.meta().data), prefer_ema && reader.has_ema()};
  reader.load_weights(*out.net, out.ema);
  out.net->to(device);
  apply_memory_format(*out.net, cfg, reader.meta().data);
  out.net->eval();
  return out;
}

std::string resolve_checkpoint(const std::string& p) {
  if (fs::is_regular_file(p)) return p;
  if (fs::is_directory(p)) {
    for (const auto& cand : {fs::path(p) / "checkpoints" / "latest.pt", fs::path(p) / "latest.pt"})
      if (fs::exists(cand)) return cand.string();
    throw UsageError("'" + p + "' is a directory without checkpoints/latest.pt (not a run directory?)");
  }
  throw UsageError("checkpoint or run directory '" + p + "' does not exist");
}

std::vector<std::string> run_checkpoints(const std::string& run_dir) {
  std::vector<std::string> ckpts;
  std::error_code ec;
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir, ec)) return ckpts;
  static const std::regex pattern(R"(ckpt_\d{8,}\.pt)");
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (std::regex_match(e.path().filename().string(), pattern)) ckpts.push_back(e.path().string());
  std::sort(ckpts.begin(), ckpts.end());  // zero-padded steps: name order is step order
  return ckpts;
}

void link_latest_checkpoint(const std::string& run_dir, const std::string& checkpoint) {
  const fs::path dir = fs::path(run_dir) / "checkpoints", link = dir / "latest.pt";
  std::error_code ec;
  if (checkpoint.empty()) {
    fs::remove(link, ec);
    return;
  }
  // A relative symlink, swapped in atomically.
  const fs::path tmp_link = dir / ".latest.pt.tmp";
  fs::remove(tmp_link, ec);
  fs::create_symlink(fs::path(checkpoint).filename(), tmp_link);
  fs::rename(tmp_link, link);
}

std::string save_run_checkpoint(const std::string& run_dir, int64_t keep, const CheckpointMeta& meta,
                                torch::nn::Module& model, torch::nn::Module* ema, torch::optim::AdamW* optimizer) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  fs::create_directories(dir);
  remove_stale_temporaries(dir.string());  // left by a writer that was killed mid-save
  const fs::path path = dir / fmt::format("ckpt_{:08d}.pt", meta.step);
  save_checkpoint(path.string(), meta, model, ema, optimizer);
  link_latest_checkpoint(run_dir, path.string());
  // Keep the newest `keep` step checkpoints, and always the one just written (latest.pt's),
  // even when checkpoints of later steps are there.
  const auto ckpts = run_checkpoints(run_dir);
  std::error_code ec;
  if (keep > 0 && static_cast<int64_t>(ckpts.size()) > keep)
    for (size_t i = 0; i + static_cast<size_t>(keep) < ckpts.size(); ++i)
      if (fs::path(ckpts[i]).filename() != path.filename()) fs::remove(ckpts[i], ec);
  return path.string();
}

}  // namespace diffuse
