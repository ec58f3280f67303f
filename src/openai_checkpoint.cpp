#include "diffuse/openai_checkpoint.h"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/models/layers.h"
#include "diffuse/models/network.h"
#include "diffuse/safetensors.h"
#include "diffuse/shape_string.h"
#include "diffuse/torch_save.h"
#include "diffuse/train/checkpoint.h"

namespace diffuse {

namespace {

constexpr int64_t kOpenAiClasses = 1000;  // script_util.NUM_CLASSES

enum class Kind { Int, Float, Bool, Text };

struct FlagDef {
  const char* name;
  Kind kind;
  const char* improved;  // default in improved-diffusion, nullptr: the flag does not exist there
  const char* guided;    // default in guided-diffusion
};

// model_and_diffusion_defaults() of both script_util.py files, plus the sampling flags of their
// image_sample.py that carry over. channel_mult is guided-diffusion's; improved-diffusion derives
// it from image_size, and an explicit one is accepted there too.
const FlagDef kFlags[] = {
    {"image_size", Kind::Int, "64", "64"},
    // sr_model_and_diffusion_defaults (super_res_sample.py): large_size replaces image_size. Empty
    // here means "not a super-resolution model"; upstream's defaults are 256 and 64.
    {"large_size", Kind::Int, "", ""},
    {"small_size", Kind::Int, "", ""},
    {"num_channels", Kind::Int, "128", "128"},
    {"num_res_blocks", Kind::Int, "2", "2"},
    {"num_heads", Kind::Int, "4", "4"},
    {"num_heads_upsample", Kind::Int, "-1", "-1"},
    {"num_head_channels", Kind::Int, nullptr, "-1"},
    {"attention_resolutions", Kind::Text, "16,8", "16,8"},
    {"channel_mult", Kind::Text, "", ""},
    {"dropout", Kind::Float, "0.0", "0.0"},
    {"class_cond", Kind::Bool, "False", "False"},
    {"use_checkpoint", Kind::Bool, "False", "False"},  // gradient checkpointing: no effect on the model
    {"use_scale_shift_norm", Kind::Bool, "True", "True"},
    {"resblock_updown", Kind::Bool, nullptr, "False"},
    {"use_fp16", Kind::Bool, nullptr, "False"},  // a run-time precision; weights are read in any dtype
    {"use_new_attention_order", Kind::Bool, nullptr, "False"},
    {"learn_sigma", Kind::Bool, "False", "False"},
    {"sigma_small", Kind::Bool, "False", nullptr},
    {"diffusion_steps", Kind::Int, "1000", "1000"},
    {"noise_schedule", Kind::Text, "linear", "linear"},
    {"timestep_respacing", Kind::Text, "", ""},
    {"use_kl", Kind::Bool, "False", "False"},
    {"predict_xstart", Kind::Bool, "False", "False"},
    {"rescale_timesteps", Kind::Bool, "True", "False"},
    {"rescale_learned_sigmas", Kind::Bool, "True", "False"},
    {"clip_denoised", Kind::Bool, "True", "True"},
    {"num_samples", Kind::Int, "64", "64"},  // upstream 10000; diffuse's own default is kept
    {"batch_size", Kind::Int, "64", "64"},
    {"use_ddim", Kind::Bool, "False", "False"},
    // guided-diffusion's classifier_defaults() and classifier_sample.py's scale: they build the
    // classifier of `diffuse import --classifier`; a model import takes classifier_scale only.
    {"classifier_use_fp16", Kind::Bool, nullptr, "False"},
    {"classifier_width", Kind::Int, nullptr, "128"},
    {"classifier_depth", Kind::Int, nullptr, "2"},
    {"classifier_attention_resolutions", Kind::Text, nullptr, "32,16,8"},
    {"classifier_use_scale_shift_norm", Kind::Bool, nullptr, "True"},
    {"classifier_resblock_updown", Kind::Bool, nullptr, "True"},
    {"classifier_pool", Kind::Text, nullptr, "attention"},
    {"classifier_scale", Kind::Float, nullptr, "1.0"},
};

const FlagDef* find_flag(const std::string& name, OpenAiFamily family) {
  for (const auto& f : kFlags)
    if (name == f.name && (family == OpenAiFamily::Improved ? f.improved : f.guided)) return &f;
  return nullptr;
}

std::string flag_list(OpenAiFamily family) {
  std::vector<std::string> names;
  for (const auto& f : kFlags)
    if (family == OpenAiFamily::Improved ? f.improved : f.guided) names.emplace_back(f.name);
  return join(names);
}

// argparse's str2bool.
bool parse_bool(const std::string& flag, const std::string& v) {
  std::string s = v;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "yes" || s == "true" || s == "t" || s == "y" || s == "1") return true;
  if (s == "no" || s == "false" || s == "f" || s == "n" || s == "0") return false;
  throw UsageError(fmt::format("--{} {}: expected a boolean (True or False)", flag, v));
}

// The whole of v as a number (std::stoll or std::stod), or a UsageError naming the flag.
template <typename Number, typename Convert>
Number parse_number(const std::string& flag, const std::string& v, const char* expected, Convert convert) {
  size_t used = 0;
  Number out{};
  try {
    out = convert(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size()) throw UsageError(fmt::format("--{} {}: expected {}", flag, v, expected));
  return out;
}

int64_t parse_int(const std::string& flag, const std::string& v) {
  return parse_number<int64_t>(flag, v, "an integer", [](const std::string& s, size_t* n) { return std::stoll(s, n); });
}

double parse_float(const std::string& flag, const std::string& v) {
  return parse_number<double>(flag, v, "a number", [](const std::string& s, size_t* n) { return std::stod(s, n); });
}

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& v) {
  std::vector<int64_t> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_int(flag, item));
  if (out.empty()) throw UsageError(fmt::format("--{} '{}': expected a comma-separated list of integers", flag, v));
  return out;
}

// --channel_mult: upstream takes integers only; diffuse also takes the fractions its 512x512
// defaults use ("0.5,1,1,2,2,4,4").
std::vector<double> parse_mult_list(const std::string& v) {
  std::vector<double> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) {
    out.push_back(parse_float("channel_mult", item));
    if (!(out.back() > 0)) throw UsageError(fmt::format("--channel_mult {}: {} is not a positive multiplier", v, item));
  }
  if (out.empty()) throw UsageError(fmt::format("--channel_mult '{}': expected a comma-separated list of numbers", v));
  return out;
}

// Flags as name -> value text, defaults first. Tokens are split on whitespace, so a whole
// MODEL_FLAGS string may be one token.
std::map<std::string, std::string> read_flags(const std::vector<std::string>& tokens_in, OpenAiFamily family) {
  std::vector<std::string> tokens;
  for (const auto& t : tokens_in) {
    std::stringstream ss(t);
    std::string w;
    while (ss >> w) tokens.push_back(w);
  }
  std::map<std::string, std::string> values;
  for (const auto& f : kFlags)
    if (const char* d = family == OpenAiFamily::Improved ? f.improved : f.guided) values[f.name] = d;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& tok = tokens[i];
    if (tok.rfind("--", 0) != 0) throw UsageError(fmt::format("OpenAI flags: expected --name value, got '{}'", tok));
    std::string name = tok.substr(2), value;
    const auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= tokens.size()) throw UsageError(fmt::format("OpenAI flag --{} has no value", name));
      value = tokens[++i];
    }
    if (!find_flag(name, family))
      throw UsageError(fmt::format("OpenAI flag --{} is not one of {}'s model, diffusion or sampling flags ({})", name,
                                   to_string(family), flag_list(family)));
    values[name] = value;
  }
  return values;
}

// The flags' values with typed reads that name the flag on a bad value.
struct FlagValues {
  std::map<std::string, std::string> v;
  bool has(const char* k) const { return v.count(k) > 0; }
  const std::string& text(const char* k) const { return v.at(k); }
  bool boolean(const char* k) const { return parse_bool(k, v.at(k)); }
  int64_t integer(const char* k) const { return parse_int(k, v.at(k)); }
  double number(const char* k) const { return parse_float(k, v.at(k)); }
  int64_t image_size() const {
    const int64_t size = integer("image_size");
    if (size < 1) throw UsageError(fmt::format("--image_size {}: must be >= 1", size));
    return size;
  }
};

// Upstream's create_model (sr_create_model for super-resolution): the levels of each image size
// it knows.
std::vector<double> default_channel_mult(int64_t image_size, OpenAiFamily family, bool super_res) {
  const bool guided = family == OpenAiFamily::Guided;
  if (super_res) {
    if (image_size == 256 || (guided && image_size == 512)) return {1, 1, 2, 2, 4, 4};
    if (image_size == 64) return {1, 2, 3, 4};
    throw UsageError(
        fmt::format("--large_size {}: {}'s sr_create_model has no channel_mult for it; pass "
                    "--channel_mult",
                    image_size, to_string(family)));
  }
  if (image_size == 256) return {1, 1, 2, 2, 4, 4};
  if (image_size == 64) return {1, 2, 3, 4};
  if (!guided && image_size == 32) return {1, 2, 2, 2};
  if (guided && image_size == 128) return {1, 1, 2, 3, 4};
  if (guided && image_size == 512) return {0.5, 1, 1, 2, 2, 4, 4};
  throw UsageError(fmt::format("--image_size {}: {} has no default channel_mult for it; pass --channel_mult",
                               image_size, to_string(family)));
}

// --attention_resolutions become downsample factors image_size // r upstream, and only factors
// that are a level's attend: keep the resolutions of those levels.
std::vector<int64_t> attention_levels(const std::vector<int64_t>& resolutions, int64_t image_size, size_t levels) {
  std::vector<int64_t> out;
  for (int64_t r : resolutions) {
    if (r <= 0) throw UsageError(fmt::format("--attention_resolutions: {} is not a positive resolution", r));
    const int64_t ds = image_size / r;
    for (size_t level = 0; level < levels && level < 62; ++level)
      if (ds == (int64_t{1} << level) && std::find(out.begin(), out.end(), image_size / ds) == out.end())
        out.push_back(image_size / ds);
  }
  return out;
}

// A super-resolution model's --large_size (its image size, returned) and --small_size (the
// low-resolution input, model.low_res_size), both required.
int64_t super_res_sizes(const FlagValues& f, ModelConfig& m) {
  if (f.text("large_size").empty() || f.text("small_size").empty())
    throw UsageError("a super-resolution model needs both --large_size and --small_size (super_res_sample.py's flags)");
  const int64_t large = f.integer("large_size"), small = f.integer("small_size");
  if (small < 1 || small >= large)
    throw UsageError(fmt::format("--small_size {}: must be >= 1 and below --large_size {}", small, large));
  if (f.has("use_new_attention_order") && f.boolean("use_new_attention_order"))
    throw UsageError("--use_new_attention_order: sr_create_model builds super-resolution models without it");
  m.low_res_size = small;
  return large;
}

void set_sampling(Config& cfg, const FlagValues& f) {
  cfg.sample.sampler = f.boolean("use_ddim") ? "ddim" : "ddpm";
  cfg.sample.clip_x0 = f.boolean("clip_denoised");
  cfg.sample.num = f.integer("num_samples");
  cfg.sample.batch_size = f.integer("batch_size");
  cfg.sample.eta = 0.0;  // image_sample.py's ddim_sample_loop
  const std::string& respacing = f.text("timestep_respacing");
  cfg.sample.steps = cfg.diffusion.timesteps;
  // isdigit of a negative char is undefined: take the bytes as unsigned.
  const auto digit = [](unsigned char ch) { return std::isdigit(ch) != 0; };
  if (!respacing.empty() && std::all_of(respacing.begin(), respacing.end(), digit))
    cfg.sample.steps = parse_int("timestep_respacing", respacing);  // "250": evenly spaced steps
  else cfg.sample.spacing = respacing;                              // "ddim50", "10,15,20"
}

// The diffusion flags as create_gaussian_diffusion reads them (the model's learn_sigma decides
// the variance type).
void set_diffusion(Config& cfg, const FlagValues& f) {
  const ModelConfig& m = cfg.model;
  DiffusionConfig& d = cfg.diffusion;
  const std::string& schedule = f.text("noise_schedule");
  if (schedule != "linear" && schedule != "cosine")
    throw UsageError("--noise_schedule " + schedule + ": expected linear or cosine");
  d.schedule = parse_schedule_kind(schedule);
  d.timesteps = f.integer("diffusion_steps");
  if (d.timesteps < 1) throw UsageError(fmt::format("--diffusion_steps {}: must be >= 1", d.timesteps));
  d.prediction = f.boolean("predict_xstart") ? Prediction::X0 : Prediction::Epsilon;
  const bool sigma_small = f.has("sigma_small") && f.boolean("sigma_small");
  d.variance = m.learn_sigma ? VarianceType::LearnedRange
               : sigma_small ? VarianceType::FixedSmall
                             : VarianceType::FixedLarge;
  // Their LossType: RESCALED_KL (use_kl), RESCALED_MSE (vb * T / 1000) or MSE (vb as it is);
  // the vb term only trains a learned variance.
  if (f.boolean("use_kl")) {
    d.loss = LossType::Kl;
  } else if (m.learn_sigma) {
    d.loss = LossType::Hybrid;
    d.hybrid_lambda = f.boolean("rescale_learned_sigmas") ? 0.001 : 1.0 / static_cast<double>(d.timesteps);
  } else {
    d.loss = LossType::Simple;
  }
  d.rescale_timesteps = f.boolean("rescale_timesteps");
}

// Sampling needs only the shape; eval names its data with --set data.path=DIR (an image folder,
// or data.dataset=cifar10), and the placeholder says so where it is reported.
void set_data(Config& cfg, int64_t image_size, bool class_labels) {
  cfg.data.dataset = DatasetKind::ImageFolder;
  cfg.data.path = "<your images: --set data.path=DIR>";
  cfg.data.image_size = image_size;
  cfg.data.channels = 3;
  cfg.data.class_labels = class_labels;
}

// guided-diffusion's create_classifier: the levels of each supported image size.
std::vector<double> classifier_channel_mult(int64_t image_size) {
  if (image_size == 512) return {0.5, 1, 1, 2, 2, 4, 4};
  if (image_size == 256) return {1, 1, 2, 2, 4, 4};
  if (image_size == 128) return {1, 1, 2, 3, 4};
  if (image_size == 64) return {1, 2, 3, 4};
  throw UsageError(
      fmt::format("--image_size {}: guided-diffusion's create_classifier knows 64, 128, 256 and 512; "
                  "pass --channel_mult for another size",
                  image_size));
}

}  // namespace

OpenAiFamily parse_openai_family(const std::string& name) {
  if (name == "improved-diffusion" || name == "improved") return OpenAiFamily::Improved;
  if (name == "guided-diffusion" || name == "guided") return OpenAiFamily::Guided;
  throw UsageError("unknown OpenAI code base '" + name + "' (expected " + join(openai_family_names()) + ")");
}

std::string to_string(OpenAiFamily v) {
  return v == OpenAiFamily::Improved ? "improved-diffusion" : "guided-diffusion";
}

std::vector<std::string> openai_family_names() { return {"improved-diffusion", "guided-diffusion"}; }

Config openai_config(const std::vector<std::string>& flags, OpenAiFamily family) {
  const FlagValues f{read_flags(flags, family)};
  Config cfg;
  ModelConfig& m = cfg.model;
  const bool super_res = !f.text("large_size").empty() || !f.text("small_size").empty();
  const int64_t image_size = super_res ? super_res_sizes(f, m) : f.image_size();
  m.type = ModelType::UNet;
  m.model_channels = f.integer("num_channels");
  m.channel_mult = f.text("channel_mult").empty() ? default_channel_mult(image_size, family, super_res)
                                                  : parse_mult_list(f.text("channel_mult"));
  m.num_res_blocks = f.integer("num_res_blocks");
  m.attention_resolutions = attention_levels(parse_int_list("attention_resolutions", f.text("attention_resolutions")),
                                             image_size, m.channel_mult.size());
  m.num_heads = f.integer("num_heads");
  m.num_heads_upsample = f.integer("num_heads_upsample");
  if (f.has("num_head_channels")) m.num_head_channels = f.integer("num_head_channels");
  m.dropout = f.number("dropout");
  m.use_scale_shift_norm = f.boolean("use_scale_shift_norm");
  if (f.has("resblock_updown")) m.resblock_updown = f.boolean("resblock_updown");
  if (f.has("use_new_attention_order")) m.use_new_attention_order = f.boolean("use_new_attention_order");
  m.conv_resample = true;
  m.learn_sigma = f.boolean("learn_sigma");
  m.class_cond = f.boolean("class_cond");
  m.num_classes = m.class_cond ? kOpenAiClasses : 0;
  m.p_uncond = 0.0;  // trained without a null label: classifier-free guidance has nothing to use

  set_diffusion(cfg, f);

  set_data(cfg, image_size, m.class_cond);
  if (f.has("classifier_scale")) cfg.sample.classifier_scale = f.number("classifier_scale");
  cfg.eval.decoder_cdf = DecoderCdf::Tanh;  // the bound as improved-diffusion computes it
  set_sampling(cfg, f);
  validate(cfg);
  return cfg;
}

Config openai_classifier_config(const std::vector<std::string>& flags) {
  const FlagValues f{read_flags(flags, OpenAiFamily::Guided)};
  Config cfg;
  ModelConfig& m = cfg.model;
  const int64_t image_size = f.image_size();
  m.type = ModelType::Classifier;
  m.model_channels = f.integer("classifier_width");
  m.channel_mult =
      f.text("channel_mult").empty() ? classifier_channel_mult(image_size) : parse_mult_list(f.text("channel_mult"));
  m.num_res_blocks = f.integer("classifier_depth");
  m.attention_resolutions =
      attention_levels(parse_int_list("classifier_attention_resolutions", f.text("classifier_attention_resolutions")),
                       image_size, m.channel_mult.size());
  m.num_heads = 1;           // EncoderUNetModel's default; create_classifier sets heads by channels:
  m.num_head_channels = 64;  // its num_head_channels=64
  m.use_new_attention_order = false;
  m.dropout = 0.0;
  m.use_scale_shift_norm = f.boolean("classifier_use_scale_shift_norm");
  m.resblock_updown = f.boolean("classifier_resblock_updown");
  m.conv_resample = true;
  const std::string& pool = f.text("classifier_pool");
  try {
    m.pool = parse_classifier_pool(pool);
  } catch (const UsageError&) {
    throw UsageError(fmt::format("--classifier_pool {}: expected one of {}", pool, join(classifier_pool_names())));
  }
  m.num_classes = kOpenAiClasses;
  m.class_cond = false;
  m.learn_sigma = false;
  // The schedule the classifier was trained on (its t means that schedule's noise level); the
  // model's learn_sigma flag is not the classifier's.
  set_diffusion(cfg, f);
  cfg.diffusion.variance = VarianceType::FixedLarge;
  cfg.diffusion.loss = LossType::Simple;
  set_data(cfg, image_size, false);
  validate(cfg);
  return cfg;
}

int64_t load_openai_weights(Network& net, const TorchSaveFile& sd, const std::string& file) {
  std::map<std::string, const torch::Tensor*> by_name;
  for (const auto& [name, t] : sd.tensors) by_name.emplace(name, &t);
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  int64_t copied = 0;
  for (auto& item : net.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor& param = item.value();
    const auto it = by_name.find(name);
    if (it == by_name.end())
      throw UsageError(
          fmt::format("'{}': the state_dict has no tensor '{}' {} (are the flags those of this "
                      "model?)",
                      file, name, shape_string(param)));
    torch::Tensor src = *it->second;
    if (!src.is_floating_point())
      throw UsageError(fmt::format("'{}': tensor '{}' is {}, expected floating point", file, name,
                                   std::string(c10::toString(src.scalar_type()))));
    // OpenAI's label_emb has num_classes rows; diffuse's has one more, the null label.
    if (name == "label_emb.weight" && src.dim() == 2 && param.dim() == 2 && src.size(0) + 1 == param.size(0) &&
        src.size(1) == param.size(1))
      src = torch::cat({src.to(torch::kFloat), torch::zeros({1, src.size(1)})}, 0);
    if (src.sizes() != param.sizes())
      throw UsageError(
          fmt::format("'{}': tensor '{}' is {}, but the flags build {} (are the flags those of this "
                      "model?)",
                      file, name, shape_string(src), shape_string(param)));
    param.copy_(src.to(torch::kFloat));
    used.insert(name);
    ++copied;
  }
  std::vector<std::string> extra;
  for (const auto& [name, t] : sd.tensors)
    if (!used.count(name)) extra.push_back(name + " " + shape_string(t));
  if (!extra.empty()) {
    if (extra.size() > 5) extra.resize(5), extra.emplace_back("...");
    throw UsageError(
        fmt::format("'{}': the flags build no tensor for {} of the state_dict's tensors ({}); are the "
                    "flags those of this model?",
                    file, sd.tensors.size() - used.size(), join(extra)));
  }
  return copied;
}

namespace {

// Reads `file` (torch.save in either format, or the same state_dict as safetensors), builds the
// network `cfg` describes, copies the weights and writes the checkpoint.
OpenAiImport import_with_config(const std::string& file, Config cfg, const std::string& out) {
  OpenAiImport r;
  r.config = std::move(cfg);
  // The same state_dict converted to safetensors (as other tools publish such weights) is read
  // alike: the names are the layout.
  const std::string bytes = read_file_bytes(file);
  TorchSaveFile sd;
  if (looks_like_torch_save(bytes)) {
    sd = decode_torch_save(bytes, file);
    r.format = sd.format + " torch.save";
  } else {
    sd.tensors = decode_safetensors(bytes, file).tensors;
    r.format = "safetensors";
  }
  CheckpointMeta meta;
  meta.config_yaml = to_yaml(r.config);
  meta.data.shape = {3, r.config.data.image_size, r.config.data.image_size};
  meta.data.num_classes = r.config.model.type == ModelType::Classifier ? 0 : r.config.model.num_classes;
  const auto net = make_model(r.config, meta.data);
  r.tensors = load_openai_weights(*net, sd, file);
  r.parameters = count_parameters(*net);
  save_checkpoint(out, meta, *net, nullptr, nullptr);
  return r;
}

}  // namespace

OpenAiImport import_openai_checkpoint(const std::string& file, const std::vector<std::string>& flags,
                                      OpenAiFamily family, const std::string& out) {
  return import_with_config(file, openai_config(flags, family), out);
}

OpenAiImport import_openai_classifier(const std::string& file, const std::vector<std::string>& flags,
                                      const std::string& out) {
  return import_with_config(file, openai_classifier_config(flags), out);
}

}  // namespace diffuse
