// A checkpoint's weights as a safetensors file, and back: the exchange format of the ecosystem.
// Tensor names are the module's ("time_embed.0.weight"), prefixed "model." for the raw weights
// and "ema." for the EMA weights; parameters and buffers alike. The "__metadata__" holds
// "format": "diffuse", the resolved "config" (YAML), "data_shape" ("1,28,28"), "num_classes"
// and "step", so that the file alone rebuilds the network.
#pragma once

#include <cstdint>
#include <string>

namespace diffuse {

struct ExportSummary {
  std::string checkpoint;  // the checkpoint read
  int64_t tensors = 0;     // tensors written
  int64_t bytes = 0;       // size of the file written
  bool ema = false;        // whether EMA weights were included
};

// Writes checkpoint (or a run directory's latest.pt) as safetensors to `out`, atomically.
ExportSummary export_safetensors(const std::string& checkpoint, const std::string& out);

// Reads a safetensors file written by export_safetensors (a diffuse config in its metadata; all
// of "model." present, "ema." optional) into a diffuse checkpoint at `out` that sample and eval
// use like any other (it has no optimizer state, so it cannot resume training). A checkpoint
// of any format that diffuse reads (a format-1 LibTorch archive, say) is rewritten in the
// current format with its optimizer state, so it stays resumable. UsageError naming the file
// for anything else: another layout, a missing or misshapen tensor, a config that does not parse.
// Returns whether the checkpoint written holds optimizer state (can resume training).
bool import_safetensors(const std::string& file, const std::string& out);

}  // namespace diffuse
