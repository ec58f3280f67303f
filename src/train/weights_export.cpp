#include "diffuse/train/weights_export.h"

#include <torch/torch.h>

#include <filesystem>
#include <memory>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/models/network.h"
#include "diffuse/train/checkpoint.h"

namespace diffuse {

ExportSummary export_safetensors(const std::string& checkpoint, const std::string& out) {
  ExportSummary s;
  s.checkpoint = resolve_checkpoint(checkpoint);
  const CheckpointReader reader(s.checkpoint);
  const auto& m = reader.meta();
  const Config cfg = parse_config(m.config_yaml, "the config stored in checkpoint '" + s.checkpoint + "'");
  const auto model = load_network(reader, cfg, /*prefer_ema=*/false, torch::kCPU).net;
  const auto ema = reader.has_ema() ? load_network(reader, cfg, true, torch::kCPU).net : nullptr;
  s.ema = ema != nullptr;
  s.tensors = save_weights_file(out, m, *model, ema.get());
  std::error_code ec;
  s.bytes = static_cast<int64_t>(std::filesystem::file_size(out, ec));
  return s;
}

bool import_safetensors(const std::string& file, const std::string& out) {
  const CheckpointReader reader(file, torch::kCPU, /*trust_legacy=*/true);
  const CheckpointMeta& m = reader.meta();
  const Config cfg = parse_config(m.config_yaml, "the config stored in '" + file + "'");
  const auto model = load_network(reader, cfg, /*prefer_ema=*/false, torch::kCPU).net;
  const auto ema = reader.has_ema() ? load_network(reader, cfg, true, torch::kCPU).net : nullptr;
  // A checkpoint (an older format, say) keeps its optimizer state and so stays resumable.
  std::unique_ptr<torch::optim::AdamW> opt;
  if (reader.has_optimizer()) {
    opt = std::make_unique<torch::optim::AdamW>(model->parameters(), torch::optim::AdamWOptions(cfg.train.lr));
    reader.load_optimizer(*opt);
  }
  save_checkpoint(out, m, *model, ema.get(), opt.get());
  return opt != nullptr;
}

}  // namespace diffuse
