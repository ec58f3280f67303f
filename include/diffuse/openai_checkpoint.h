// OpenAI's improved-diffusion and guided-diffusion checkpoints: a torch.save state_dict of their
// UNetModel plus the flags of their scripts, written as their READMEs write them
// ("--image_size 64 --num_channels 128 --learn_sigma True --diffusion_steps 4000 ..."), become a
// diffuse checkpoint that sample and eval use like any other.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/config.h"

namespace diffuse {

class Network;
struct TorchSaveFile;

// The two code bases differ in their flags' defaults (improved-diffusion rescales timesteps and
// learned sigmas by default, guided-diffusion does not) and in the flags they know.
enum class OpenAiFamily { Improved, Guided };
OpenAiFamily parse_openai_family(const std::string& name);  // improved-diffusion, guided-diffusion
std::string to_string(OpenAiFamily v);
std::vector<std::string> openai_family_names();

// The scripts' model, diffusion and sampling flags ("--name value" or "--name=value"; booleans as
// their str2bool reads them), on top of that family's model_and_diffusion_defaults, as the
// diffuse config that builds the same network and diffusion: channel_mult from image_size when
// not given, attention at the resolutions that are levels (upstream ignores the others), 1000
// classes for class_cond (no null-label training: p_uncond 0), learned_range for learn_sigma,
// fixed_large unless sigma_small, the loss their LossType would be, sampling as their
// image_sample.py (ddpm, or ddim with use_ddim; timestep_respacing). Tokens may hold several
// flags separated by spaces. UsageError naming the flag for an unknown flag, a bad value or a
// setting diffuse cannot express. --large_size and --small_size (super_res_sample.py) make the
// super-resolution model (model.low_res_size), with sr_create_model's channel_mult.
Config openai_config(const std::vector<std::string>& flags, OpenAiFamily family);

// guided-diffusion's classifier_sample.py flags (its classifier_* flags, image_size, the diffusion
// flags; the model's flags are accepted and unused) as the config of its noisy-image classifier
// (model.type classifier), as create_classifier builds it: channel_mult from image_size (or a
// --channel_mult given for sizes it does not know), num_head_channels 64, 1000 classes, the
// diffusion's schedule (its t is that schedule's). UsageError naming the flag as for openai_config.
Config openai_classifier_config(const std::vector<std::string>& flags);

// Copies an OpenAI UNetModel (or EncoderUNetModel) state_dict into `net` (built from openai_config): each tensor is
// converted to float32 (fp16 and bf16 files included); label_emb gains the zero null-label row
// that diffuse's class-conditional networks carry. UsageError naming `file` and the tensor for a
// missing, unexpected, non-float or misshapen tensor. Returns the number of tensors copied.
int64_t load_openai_weights(Network& net, const TorchSaveFile& state_dict, const std::string& file);

struct OpenAiImport {
  Config config;
  int64_t tensors = 0;
  int64_t parameters = 0;
  std::string format;  // of the file read: "zip torch.save", "legacy torch.save" or "safetensors"
};

// Reads `file` (torch.save in either format, or the same state_dict as safetensors), builds the network of `flags` and
// writes a diffuse checkpoint (weights only, no EMA or optimizer state) to `out`, atomically.
OpenAiImport import_openai_checkpoint(const std::string& file, const std::vector<std::string>& flags,
                                      OpenAiFamily family, const std::string& out);
// The same for guided-diffusion's classifier (its .pt and openai_classifier_config's flags): a
// checkpoint that `diffuse sample --classifier` takes.
OpenAiImport import_openai_classifier(const std::string& file, const std::vector<std::string>& flags,
                                      const std::string& out);

}  // namespace diffuse
