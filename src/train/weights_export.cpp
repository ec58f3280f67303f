#include "diffuse/train/weights_export.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/models/network.h"
#include "diffuse/safetensors.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/training_state.h"

namespace diffuse {

ExportSummary export_safetensors(const std::string& checkpoint, const std::string& out) {
  ExportSummary s;
  s.checkpoint = resolve_checkpoint(checkpoint);
  const CheckpointReader reader(s.checkpoint);
  const auto& m = reader.meta();
  const Config cfg = parse_config(m.config_yaml, "the config stored in checkpoint '" + s.checkpoint + "'");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  auto net = make_model(cfg, m.data);
  reader.load_weights(*net, false);
  append_named_tensors(tensors, *net, "model.");
  s.ema = reader.has_ema();
  if (s.ema) {
    auto ema = make_model(cfg, m.data);
    reader.load_weights(*ema, true);
    append_named_tensors(tensors, *ema, "ema.");
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

bool import_safetensors(const std::string& file, const std::string& out) {
  const CheckpointReader reader(file, torch::kCPU, /*trust_legacy=*/true);
  const CheckpointMeta& m = reader.meta();
  const Config cfg = parse_config(m.config_yaml, "the config stored in '" + file + "'");
  auto net = make_model(cfg, m.data);
  reader.load_weights(*net, false);
  std::shared_ptr<Network> ema;
  if (reader.has_ema()) {
    ema = make_model(cfg, m.data);
    reader.load_weights(*ema, true);
  }
  // A checkpoint (an older format, say) keeps its optimizer state and so stays resumable.
  std::unique_ptr<torch::optim::AdamW> opt;
  if (reader.has_optimizer()) {
    opt = std::make_unique<torch::optim::AdamW>(net->parameters(), torch::optim::AdamWOptions(cfg.train.lr));
    reader.load_optimizer(*opt);
    // LibTorch 2.x reading a format-1 file that LibTorch 1.x wrote attaches the moments to the
    // wrong parameters; refuse that rather than write a file that resumes wrongly.
    for (const auto& p : net->parameters())
      if (const auto* st = adamw_state(*opt, p); st && st->exp_avg().sizes() != p.sizes())
        throw UsageError(fmt::format("'{}': its optimizer state does not match its parameters (a format-1 file "
                                     "written by LibTorch 1.x, read by LibTorch 2.x?); import it with a diffuse "
                                     "built on LibTorch 1.13", file));
  }
  save_checkpoint(out, m, *net, ema.get(), opt.get());
  return opt != nullptr;
}

}  // namespace diffuse
