// The run configuration: one YAML file with sections model, diffusion, data, train, sample,
// eval, mapped onto these plain structs. Every key has a default here; load_config validates
// types, ranges and allowed values, and names the key path in every error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/diffusion.h"
#include "diffuse/gamma_schedule.h"
#include "diffuse/losses.h"
#include "diffuse/schedule.h"
#include "diffuse/timestep_sampler.h"
#include "diffuse/vdm.h"

namespace diffuse {

// classifier: guided-diffusion's noisy-image classifier (EncoderUNet), used by classifier guidance;
// it is imported (`diffuse import --classifier`), not trained by `diffuse train`.
enum class ModelType { UNet, Mlp, Classifier };
ModelType parse_model_type(const std::string& name);  // unet, mlp, classifier
std::string to_string(ModelType v);
std::vector<std::string> model_type_names();

// The classifier's head: attention pooling over the last level (CLIP's AttentionPool2d, the
// published classifiers') or the spatial mean and a 1x1 convolution.
// The noisy-image classifier's head (guided-diffusion's EncoderUNetModel pool).
enum class ClassifierPool { Attention, Adaptive, Spatial, SpatialV2 };
ClassifierPool parse_classifier_pool(const std::string& name);  // attention, adaptive, spatial, spatial_v2
std::string to_string(ClassifierPool v);
std::vector<std::string> classifier_pool_names();

enum class DatasetKind { FashionMnist, Mnist, Cifar10, ImageFolder, Toy2d, Synthetic };
DatasetKind parse_dataset_kind(const std::string& name);  // fashion-mnist, mnist, cifar10, folder, toy2d, synthetic
std::string to_string(DatasetKind v);
std::vector<std::string> dataset_kind_names();

enum class ToyKind { SwissRoll, TwoMoons, EightGaussians, Checkerboard };
ToyKind parse_toy_kind(const std::string& name);  // swiss_roll, two_moons, 8gaussians, checkerboard
std::string to_string(ToyKind v);
std::vector<std::string> toy_kind_names();

struct ModelConfig {
  ModelType type = ModelType::UNet;
  // UNet: names and meaning as improved-diffusion's UNetModel / script flags.
  int64_t model_channels = 64;
  // Per level; a level has model_channels * mult channels, a whole number (guided-diffusion's
  // 512x512 model starts at 0.5).
  std::vector<double> channel_mult = {1, 2, 2};
  int64_t num_res_blocks = 2;
  // Resolutions (feature-map sizes, e.g. [7] for the 7x7 level of a 28x28 input) that get
  // self-attention, as improved-diffusion's --attention_resolutions flag (not downsample factors).
  std::vector<int64_t> attention_resolutions = {};
  int64_t num_heads = 4;
  int64_t num_head_channels = -1;        // > 0 overrides num_heads with channels / num_head_channels
  int64_t num_heads_upsample = -1;       // heads of the output blocks' attention; -1 = num_heads
  bool use_new_attention_order = false;  // guided-diffusion's QKVAttention: q, k, v split first
  double dropout = 0.0;
  bool use_scale_shift_norm = true;
  bool resblock_updown = false;
  bool conv_resample = true;
  bool learn_sigma = false;  // 2x output channels; validate() requires diffusion.variance learned*
  // Super-resolution (the SuperResModel of improved- and guided-diffusion): > 0 conditions the
  // UNet on a low_res_size x low_res_size version of the image, upsampled and stacked on x_t.
  int64_t low_res_size = 0;
  // UNet: VDM's Fourier features of the input, sin and cos of 2^n 2 pi x for n = 6, 7, stacked on
  // its channels: detail at the scale of the 8-bit grid, which the likelihood at low noise needs.
  bool fourier_features = false;
  // Class conditioning: a label embedding added to the time embedding. num_classes = 0 takes
  // the dataset's class count. Labels are replaced by the null label with probability p_uncond
  // during training, so classifier-free guidance works at sampling time.
  bool class_cond = false;
  int64_t num_classes = 0;
  double p_uncond = 0.1;
  // classifier: the head; num_classes is its class count (its logits).
  ClassifierPool pool = ClassifierPool::Attention;
  // MLP (2-D toy data): residual blocks of width hidden.
  int64_t hidden = 256;
  int64_t num_blocks = 3;
};

struct DiffusionConfig {
  ScheduleKind schedule = ScheduleKind::Linear;
  int64_t timesteps = 1000;
  double beta_start = -1.0;  // < 0: the schedule's published default
  double beta_end = -1.0;
  double cosine_s = 0.008;
  std::vector<double> betas;  // schedule: custom
  std::string betas_file;
  bool zero_terminal_snr = false;
  // The network sees t * 1000 / timesteps, so a 4000-step model's inputs span 0..1000
  // (improved-diffusion's rescale_timesteps; its published 4000-step models need it).
  bool rescale_timesteps = false;
  Prediction prediction = Prediction::Epsilon;
  // fixed_small, fixed_large, learned, learned_range; validate() requires a learned type exactly
  // when model.learn_sigma is true (the config sets both; nothing is changed behind its back).
  VarianceType variance = VarianceType::FixedSmall;
  LossType loss = LossType::Simple;
  double hybrid_lambda = 0.001;
  LossWeighting loss_weighting = LossWeighting::None;
  double min_snr_gamma = 5.0;
  TimestepSamplerKind timestep_sampler = TimestepSamplerKind::Uniform;
  // EDM (Karras et al. 2022): the edm schedule's sigma range, the edm preconditioning's data
  // scale, and the lognormal sampler's ln sigma ~ N(p_mean, p_std^2).
  double sigma_min = 0.002;
  double sigma_max = 80.0;
  double sigma_data = 0.5;
  double p_mean = -1.2;
  double p_std = 1.2;
  // schedule vdm (Kingma et al. 2021, gamma_schedule.h): gamma(t) = -log SNR(t) on t in [0, 1],
  // its kind, its ends (initial values where learned), and the learned network's width; the
  // network is conditioned on gamma. continuous: the loss as T -> infinity, else the T-step loss
  // with T = timesteps (the discrete view for sampling and the exact bound has T + 1 steps).
  GammaKind gamma_schedule = GammaKind::Linear;
  double gamma_min = -13.3;
  double gamma_max = 5.0;
  int64_t gamma_hidden = 1024;
  bool continuous = true;
  VdmDecoder decoder = VdmDecoder::Vdm;
  // The learned schedule's shape minimises the variance of the diffusion loss (VDM section 5.2).
  bool variance_objective = true;
};

struct DataConfig {
  DatasetKind dataset = DatasetKind::FashionMnist;
  std::string path = "/usr/share/datasets/fashion-mnist";  // directory (or file for some kinds)
  std::string split = "train";                             // train | test
  int64_t image_size = 0;                                  // 0 = the dataset's native size; else center-crop + resize
  int64_t channels = 0;                                    // 0 = native; 1 = grey, 3 = RGB
  bool random_flip = false;                                // random horizontal flip
  bool class_labels = true;          // read labels where the dataset has them (folder: class-per-subfolder)
  bool skip_bad_files = false;       // folder: skip unreadable images (counted in the log) instead of failing
  int64_t limit = 0;                 // use only the first N examples (0 = all)
  int64_t workers = 2;               // background loading/decoding threads
  int64_t prefetch = 4;              // batches prepared ahead
  ToyKind toy = ToyKind::SwissRoll;  // dataset: toy2d
  int64_t toy_size = 100000;         // toy2d: points per epoch
};

struct TrainConfig {
  int64_t steps = 10000;
  int64_t batch_size = 64;
  double lr = 2e-4;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double weight_decay = 0.0;
  int64_t warmup_steps = 0;
  std::string lr_schedule = "constant";  // constant | cosine
  double min_lr = 0.0;                   // cosine decays to this
  double grad_clip = 1.0;                // max global grad norm; 0 = off
  int64_t grad_accum = 1;                // micro-batches per optimizer step
  double ema_decay = 0.9999;
  bool ema_warmup = true;  // decay = min(ema_decay, (1 + step) / (10 + step))
  uint64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  int64_t threads = 0;          // CPU threads; 0 = OMP_NUM_THREADS if set, else all usable cores
  bool channels_last = false;
  std::string precision = "fp32";  // fp32 | bf16 | fp16 | auto (bf16 where the hardware has it)
  int64_t log_every = 100;
  int64_t checkpoint_every = 1000;
  int64_t sample_every = 1000;         // 0 = never
  int64_t sample_num = 64;             // images in the periodic grid
  int64_t sample_steps = 50;           // sampler steps for the periodic grid
  int64_t keep_checkpoints = 3;        // keep the last K (plus `latest`)
  std::string on_nonfinite = "error";  // error | skip
  // Data parallelism (under torchrun or --nproc-per-node); batch_size stays per rank.
  std::string dist_backend = "auto";  // auto (nccl on CUDA, gloo on CPU) | gloo | nccl
  int64_t dist_timeout = 1800;        // seconds a collective waits for the other ranks
  int64_t dist_bucket_mb = 25;        // gradient all-reduce bucket size in MiB
  bool dist_rank_logs = false;        // ranks > 0 also write run_dir/rank_<r>.log
};

struct SampleConfig {
  std::string sampler = "ddim";  // ddpm, ddim, dpmpp-2m, euler, euler-ancestral, heun
  int64_t steps = 50;
  std::string spacing = "";  // respacing spec (see schedule.h); "" = the sampler's default
  double eta = -1.0;         // < 0: the sampler's default (ddim 0, euler-ancestral 1)
  int64_t num = 64;
  int64_t batch_size = 64;
  uint64_t seed = 0;
  bool use_ema = true;
  bool clip_x0 = true;  // images only (toy points are never clipped)
  double dynamic_threshold = 0.0;
  double guidance_scale = 1.0;  // classifier-free guidance (1 = off)
  std::vector<int64_t> labels;  // class labels to sample (cycled); empty = random / unconditional
  // Classifier guidance (Dhariwal & Nichol 2021): a noisy-image classifier checkpoint (model.type
  // classifier) whose s * grad log p(y | x_t) steers every step; "" = none.
  std::string classifier = "";
  double classifier_scale = 1.0;
  std::string sigmas = "karras";  // euler/heun/dpmpp-2m: karras | exponential | model
  double rho = 7.0;
  // EDM's stochastic churn for euler / heun (Karras et al. 2022, Algorithm 2); 0 = deterministic.
  double s_churn = 0.0;
  double s_tmin = 0.0;
  double s_tmax = 1.0e4;
  double s_noise = 1.0;
  std::string precision = "fp32";  // network autocast while sampling: fp32 | bf16 | fp16 | auto
};

struct EvalConfig {
  std::vector<std::string> metrics = {"bpd"};  // eval_metric_names()
  std::string split = "test";
  int64_t num_images = 1000;  // held-out images for bpd (0 = all)
  int64_t batch_size = 64;
  int64_t mc_timesteps = 8;                    // bpd-mc: random t per image
  DecoderCdf decoder_cdf = DecoderCdf::Exact;  // bpd: normal CDF of the decoder term (tanh = improved-diffusion's)
  std::string feature_extractor = "";          // TorchScript file for FID/KID features
  std::string reference = "";                  // image folder or cached statistics file for FID/KID
  int64_t num_samples = 1000;                  // generated samples for FID/KID/toy metrics
};

struct Config {
  ModelConfig model;
  DiffusionConfig diffusion;
  DataConfig data;
  TrainConfig train;
  SampleConfig sample;
  EvalConfig eval;
};

// Parse a YAML file into a Config. Errors (UsageError) name the file, line and key path (and,
// for an unknown key, the closest valid key). Checks types, ranges and allowed values of each
// key; cross-field rules are left to validate(), so that overrides can still fix them.
Config load_config(const std::string& path);
// Parse YAML text (for tests and checkpoints); `origin` names it in errors. Empty text = defaults.
Config parse_config(const std::string& yaml_text, const std::string& origin = "<config>");
// Apply "section.key=VALUE" (VALUE read as YAML, so lists are written [1,2,2]). Errors start with
// "--set <assignment>: "; on error cfg is unchanged.
void apply_override(Config& cfg, const std::string& assignment);
// The whole config, every key, as YAML that parse_config reads back to an equal Config.
std::string to_yaml(const Config& cfg);
// Every key's own rule plus cross-field checks (image_size divisible by 2^(levels-1),
// learn_sigma vs variance vs loss, model vs dataset, ...). Throws one UsageError listing every
// problem, each naming the key paths involved. Call it after load_config + overrides.
void validate(const Config& cfg);

// All key paths ("model.type", ..., "eval.num_samples"), in the order to_yaml writes them.
std::vector<std::string> config_keys();
// Markdown tables (one per section) of key, type (with the allowed range / values), default
// and help: the generated part of docs/config.md.
std::string config_reference_markdown();

}  // namespace diffuse
