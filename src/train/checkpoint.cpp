#include "diffuse/train/checkpoint.h"

#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/models/network.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {
torch::Tensor int_tensor(const std::vector<int64_t>& v) {
  return torch::tensor(v.empty() ? std::vector<int64_t>{} : v, torch::kLong);
}

// data_shape: 1..4 positive int64 sizes (C x H x W for images, D for points), read whatever the
// stored tensor's layout.
std::vector<int64_t> read_data_shape(torch::serialize::InputArchive& ar, const std::string& path) {
  torch::Tensor t;
  if (!ar.try_read("data_shape", t))
    throw UsageError("checkpoint '" + path + "' lacks 'data_shape' (corrupt or from another version)");
  if (t.scalar_type() != torch::kLong || t.dim() != 1 || t.numel() < 1 || t.numel() > 4)
    throw UsageError(fmt::format("checkpoint '{}': data_shape is a {} tensor of shape [{}], expected 1 to 4 int64 "
                                 "sizes (corrupt?)", path, c10::toString(t.scalar_type()), fmt::join(t.sizes(), ", ")));
  t = t.cpu().contiguous();
  std::vector<int64_t> shape(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  constexpr int64_t kMaxSize = int64_t{1} << 20;
  for (const int64_t v : shape)
    if (v < 1 || v > kMaxSize)
      throw UsageError(fmt::format("checkpoint '{}': data_shape [{}] has a size outside 1..{} (corrupt?)", path,
                                   fmt::join(shape, ", "), kMaxSize));
  return shape;
}
}  // namespace

void save_checkpoint(const std::string& path, const CheckpointMeta& m, torch::nn::Module& model,
                     torch::nn::Module* ema, torch::optim::Optimizer* optimizer) {
  torch::serialize::OutputArchive ar;
  ar.write("diffuse_checkpoint", c10::IValue(kCheckpointMagic));
  ar.write("format", c10::IValue(kCheckpointFormat));
  ar.write("step", c10::IValue(m.step));
  ar.write("config", c10::IValue(m.config_yaml));
  ar.write("data_shape", int_tensor(m.data.shape));
  ar.write("num_classes", c10::IValue(m.data.num_classes));
  ar.write("data_epoch", c10::IValue(m.data_epoch));
  ar.write("data_offset", c10::IValue(m.data_offset));
  ar.write("loss_scale", c10::IValue(m.loss_scale));
  ar.write("loss_scale_good_steps", c10::IValue(m.loss_scale_good_steps));
  ar.write("elapsed_seconds", c10::IValue(m.elapsed_seconds));
  ar.write("world_size", c10::IValue(m.world_size));
  ar.write("data_fingerprint", c10::IValue(m.data_fingerprint));
  if (m.cpu_rng_state.defined()) ar.write("cpu_rng_state", m.cpu_rng_state);
  if (m.device_rng_state.defined()) ar.write("device_rng_state", m.device_rng_state.cpu());
  if (m.timestep_sampler_state.defined()) ar.write("timestep_sampler_state", m.timestep_sampler_state);
  torch::serialize::OutputArchive model_ar;
  model.save(model_ar);
  ar.write("model", model_ar);
  if (ema) {
    torch::serialize::OutputArchive ema_ar;
    ema->save(ema_ar);
    ar.write("ema", ema_ar);
  }
  if (optimizer) {
    torch::serialize::OutputArchive opt_ar;
    optimizer->save(opt_ar);
    ar.write("optimizer", opt_ar);
  }
  std::ostringstream bytes;
  ar.save_to(bytes);
  write_file_atomic(path, bytes.str());
}

CheckpointReader::~CheckpointReader() = default;

CheckpointReader::CheckpointReader(const std::string& path, const torch::Device& device)
    : path_(path), archive_(std::make_unique<torch::serialize::InputArchive>()) {
  if (!fs::exists(path)) throw UsageError("checkpoint '" + path + "' does not exist");
  if (fs::is_directory(path)) throw UsageError("checkpoint '" + path + "' is a directory, not a checkpoint file");
  try {
    archive_->load_from(path, device);
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    throw UsageError("checkpoint '" + path + "' is corrupt or not a checkpoint (" + what + ")");
  }
  c10::IValue v;
  if (!archive_->try_read("diffuse_checkpoint", v) || !v.isInt() || v.toInt() != kCheckpointMagic)
    throw UsageError("'" + path + "' is a LibTorch archive but not a diffuse checkpoint");
  auto read_int = [&](const char* key) {
    c10::IValue iv;
    if (!archive_->try_read(key, iv) || !iv.isInt())
      throw UsageError("checkpoint '" + path_ + "' lacks '" + key + "' (corrupt or from another version)");
    return iv.toInt();
  };
  const int64_t format = read_int("format");
  if (format != kCheckpointFormat)
    throw UsageError(fmt::format("checkpoint '{}' has format {}, this diffuse reads format {}", path, format,
                                 kCheckpointFormat));
  meta_.step = read_int("step");
  meta_.data.num_classes = read_int("num_classes");
  meta_.data_epoch = read_int("data_epoch");
  meta_.data_offset = read_int("data_offset");
  c10::IValue cfg;
  if (!archive_->try_read("config", cfg) || !cfg.isString())
    throw UsageError("checkpoint '" + path + "' lacks its config");
  meta_.config_yaml = cfg.toStringRef();
  c10::IValue d;
  if (archive_->try_read("loss_scale", d) && d.isDouble()) meta_.loss_scale = d.toDouble();
  if (archive_->try_read("loss_scale_good_steps", d) && d.isInt()) meta_.loss_scale_good_steps = d.toInt();
  if (archive_->try_read("elapsed_seconds", d) && d.isDouble()) meta_.elapsed_seconds = d.toDouble();
  if (archive_->try_read("world_size", d) && d.isInt()) {
    if (d.toInt() < 1) throw UsageError(fmt::format("checkpoint '{}': world_size {} is not positive", path_, d.toInt()));
    meta_.world_size = d.toInt();
  }
  if (archive_->try_read("data_fingerprint", d) && d.isString()) meta_.data_fingerprint = d.toStringRef();
  meta_.data.shape = read_data_shape(*archive_, path_);
  // A fresh tensor for each key: try_read into a defined tensor calls set_() on it, which would
  // rewrite whatever shares its storage (t.cpu() of a CPU tensor is that same tensor).
  auto read_state = [&](const char* key, torch::Tensor& into) {
    torch::Tensor t;
    if (archive_->try_read(key, t)) into = t.cpu();
  };
  read_state("cpu_rng_state", meta_.cpu_rng_state);
  read_state("device_rng_state", meta_.device_rng_state);
  read_state("timestep_sampler_state", meta_.timestep_sampler_state);
  torch::serialize::InputArchive probe;
  has_ema_ = archive_->try_read("ema", probe);
}

namespace {
// Module::load would silently replace parameters with tensors of another shape; copy each one
// into place instead, checking names and shapes (this also moves them to the module's device).
void load_into(torch::nn::Module& module, torch::serialize::InputArchive& ar, const std::string& prefix,
               const std::string& file) {
  torch::NoGradGuard ng;
  auto copy = [&](const std::string& name, torch::Tensor& dst, bool buffer) {
    torch::Tensor src;
    if (!ar.try_read(name, src, buffer))
      throw UsageError(fmt::format("checkpoint '{}' has no tensor '{}{}' that this model needs (another model "
                                   "configuration?)", file, prefix, name));
    if (src.sizes() != dst.sizes())
      throw UsageError(fmt::format("checkpoint '{}': '{}{}' has shape {} but this model's is {} (another model "
                                   "configuration?)", file, prefix, name, fmt::join(src.sizes(), "x"), fmt::join(dst.sizes(), "x")));
    dst.copy_(src);
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) copy(p.key(), p.value(), false);
  for (auto& b : module.named_buffers(/*recurse=*/false)) copy(b.key(), b.value(), true);
  for (auto& c : module.named_children()) {
    torch::serialize::InputArchive child;
    if (!ar.try_read(c.key(), child))
      throw UsageError(fmt::format("checkpoint '{}' lacks the submodule '{}{}'", file, prefix, c.key()));
    load_into(*c.value(), child, prefix + c.key() + ".", file);
  }
}
}  // namespace

void CheckpointReader::load_weights(torch::nn::Module& module, bool ema) const {
  torch::serialize::InputArchive sub;
  const char* key = ema ? "ema" : "model";
  if (!archive_->try_read(key, sub))
    throw UsageError(fmt::format("checkpoint '{}' has no {} weights", path_, key));
  load_into(module, sub, std::string(key) + ":", path_);
}

void CheckpointReader::load_optimizer(torch::optim::Optimizer& optimizer) const {
  torch::serialize::InputArchive sub;
  if (!archive_->try_read("optimizer", sub))
    throw UsageError("checkpoint '" + path_ + "' has no optimizer state (it cannot resume training)");
  optimizer.load(sub);
}

LoadedNetwork load_network(const CheckpointReader& reader, const Config& cfg, bool prefer_ema,
                           const torch::Device& device) {
  LoadedNetwork out{make_model(cfg, reader.meta().data), prefer_ema && reader.has_ema()};
  reader.load_weights(*out.net, out.ema);
  out.net->to(device);
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
                                torch::nn::Module& model, torch::nn::Module* ema, torch::optim::Optimizer* optimizer) {
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
