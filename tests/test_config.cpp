// Config: parsing, errors, overrides, the to_yaml round trip, validation, the shipped configs
// and docs/config.md.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "'" << (part) << "' not in: " << (text)

namespace {

// The message of the UsageError that f throws ("" and a failure when it throws none).
template <class F>
std::string usage_error(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a UsageError";
  return "";
}

std::string parse_error(const std::string& text, const std::string& origin = "configs/x.yaml") {
  return usage_error([&] { parse_config(text, origin); });
}

// Key paths of the fields where a and b differ, written out by hand (independent of the
// config table, so a field missing from the table shows up here).
std::vector<std::string> diff_fields(const Config& a, const Config& b) {
  std::vector<std::string> out;
#define CMP(f) \
  if (!(a.f == b.f)) out.push_back(#f)
  // clang-format off
  CMP(model.type); CMP(model.model_channels); CMP(model.channel_mult); CMP(model.num_res_blocks);
  CMP(model.attention_resolutions); CMP(model.num_heads); CMP(model.num_head_channels); CMP(model.num_heads_upsample);
  CMP(model.use_new_attention_order); CMP(model.dropout); CMP(model.use_scale_shift_norm); CMP(model.resblock_updown);
  CMP(model.conv_resample); CMP(model.pool); CMP(model.learn_sigma); CMP(model.low_res_size); CMP(model.fourier_features); CMP(model.class_cond);
  CMP(model.num_classes); CMP(model.p_uncond); CMP(model.hidden); CMP(model.num_blocks);
  CMP(diffusion.schedule); CMP(diffusion.timesteps); CMP(diffusion.beta_start); CMP(diffusion.beta_end);
  CMP(diffusion.cosine_s); CMP(diffusion.betas); CMP(diffusion.betas_file); CMP(diffusion.zero_terminal_snr);
  CMP(diffusion.rescale_timesteps); CMP(diffusion.prediction); CMP(diffusion.variance); CMP(diffusion.loss);
  CMP(diffusion.hybrid_lambda); CMP(diffusion.loss_weighting); CMP(diffusion.min_snr_gamma);
  CMP(diffusion.timestep_sampler); CMP(diffusion.sigma_min); CMP(diffusion.sigma_max); CMP(diffusion.sigma_data);
  CMP(diffusion.p_mean); CMP(diffusion.p_std);
  CMP(diffusion.gamma_schedule); CMP(diffusion.gamma_min); CMP(diffusion.gamma_max); CMP(diffusion.gamma_hidden);
  CMP(diffusion.continuous); CMP(diffusion.decoder); CMP(diffusion.variance_objective);
  CMP(data.dataset); CMP(data.path); CMP(data.split); CMP(data.image_size); CMP(data.channels); CMP(data.random_flip);
  CMP(data.class_labels); CMP(data.skip_bad_files); CMP(data.limit); CMP(data.workers); CMP(data.prefetch);
  CMP(data.toy); CMP(data.toy_size);
  CMP(train.steps); CMP(train.batch_size); CMP(train.lr); CMP(train.adam_beta1); CMP(train.adam_beta2);
  CMP(train.adam_eps); CMP(train.weight_decay); CMP(train.warmup_steps); CMP(train.lr_schedule); CMP(train.min_lr);
  CMP(train.grad_clip); CMP(train.grad_accum); CMP(train.ema_decay); CMP(train.ema_warmup); CMP(train.seed);
  CMP(train.device); CMP(train.threads); CMP(train.channels_last); CMP(train.precision); CMP(train.log_every);
  CMP(train.checkpoint_every); CMP(train.sample_every); CMP(train.sample_num); CMP(train.sample_steps);
  CMP(train.keep_checkpoints); CMP(train.on_nonfinite); CMP(train.dist_backend); CMP(train.dist_timeout);
  CMP(train.dist_bucket_mb); CMP(train.dist_rank_logs);
  CMP(sample.sampler); CMP(sample.steps); CMP(sample.spacing); CMP(sample.eta); CMP(sample.num);
  CMP(sample.batch_size); CMP(sample.seed); CMP(sample.use_ema); CMP(sample.clip_x0); CMP(sample.dynamic_threshold);
  CMP(sample.guidance_scale); CMP(sample.labels); CMP(sample.sigmas); CMP(sample.rho); CMP(sample.precision);
  CMP(sample.classifier); CMP(sample.classifier_scale); CMP(sample.s_churn); CMP(sample.s_tmin); CMP(sample.s_tmax);
  CMP(sample.s_noise);
  CMP(eval.metrics); CMP(eval.split); CMP(eval.num_images); CMP(eval.batch_size); CMP(eval.mc_timesteps);
  CMP(eval.decoder_cdf); CMP(eval.feature_extractor); CMP(eval.reference); CMP(eval.num_samples);
  // clang-format on
#undef CMP
  return out;
}

// Every field away from its default, each still within its own key's rule. Doubles need all 17
// digits, strings hold YAML-special characters, the seed is the largest uint64.
Config all_changed() {
  Config c;
  auto& m = c.model;
  m.type = ModelType::Mlp;
  m.model_channels = 96;
  m.channel_mult = {0.5, 2, 3, 4};
  m.num_res_blocks = 3;
  m.attention_resolutions = {16, 8};
  m.num_heads = 8;
  m.num_head_channels = 32;
  m.num_heads_upsample = 2;
  m.use_new_attention_order = true;
  m.dropout = 0.15;
  m.use_scale_shift_norm = false;
  m.resblock_updown = true;
  m.conv_resample = false;
  m.learn_sigma = true;
  m.low_res_size = 14;
  m.fourier_features = true;
  m.class_cond = true;
  m.num_classes = 10;
  m.p_uncond = 0.2;
  m.pool = ClassifierPool::Adaptive;
  m.hidden = 128;
  m.num_blocks = 5;
  auto& d = c.diffusion;
  d.schedule = ScheduleKind::Custom;
  d.timesteps = 3;
  d.beta_start = 0.00012345678901234567;
  d.beta_end = 0.1 + 0.2;  // 0.30000000000000004
  d.cosine_s = 0.0123;
  d.betas = {0.1, 1.0 / 3.0, 1e-300};
  d.betas_file = "line1\nline2\ttab \\ \"q\"";
  d.zero_terminal_snr = true;
  d.rescale_timesteps = true;
  d.prediction = Prediction::V;
  d.variance = VarianceType::LearnedRange;
  d.loss = LossType::Hybrid;
  d.hybrid_lambda = 0.0025;
  d.loss_weighting = LossWeighting::MinSnr;
  d.min_snr_gamma = 4.5;
  d.timestep_sampler = TimestepSamplerKind::Importance;
  d.sigma_min = 0.003;
  d.sigma_max = 70.5;
  d.sigma_data = 0.25;
  d.p_mean = -1.1;
  d.p_std = 1.3;
  d.gamma_schedule = GammaKind::Endpoints;
  d.gamma_min = -10.5;
  d.gamma_max = 6.25;
  d.gamma_hidden = 48;
  d.continuous = false;
  d.decoder = VdmDecoder::Gaussian;
  d.variance_objective = false;
  auto& a = c.data;
  a.dataset = DatasetKind::Cifar10;
  a.path = "/tmp/données/a b: #not a comment";
  a.split = "test";
  a.image_size = 64;
  a.channels = 3;
  a.random_flip = true;
  a.class_labels = false;
  a.skip_bad_files = true;
  a.limit = 500;
  a.workers = 0;
  a.prefetch = 2;
  a.toy = ToyKind::Checkerboard;
  a.toy_size = 12345;
  auto& t = c.train;
  t.steps = 77;
  t.batch_size = 3;
  t.lr = 1e-3 / 3.0;
  t.adam_beta1 = 0.8;
  t.adam_beta2 = 0.95;
  t.adam_eps = 1e-12;
  t.weight_decay = 0.01;
  t.warmup_steps = 7;
  t.lr_schedule = "cosine";
  t.min_lr = 1e-6;
  t.grad_clip = 0.0;
  t.grad_accum = 4;
  t.ema_decay = 0.5;
  t.ema_warmup = false;
  t.seed = std::numeric_limits<uint64_t>::max();
  t.device = "cuda:1";
  t.threads = 2;
  t.channels_last = true;
  t.precision = "bf16";
  t.log_every = 3;
  t.checkpoint_every = 9;
  t.sample_every = 0;
  t.sample_num = 4;
  t.sample_steps = 10;
  t.keep_checkpoints = 0;
  t.on_nonfinite = "skip";
  t.dist_backend = "gloo";
  t.dist_timeout = 77;
  t.dist_bucket_mb = 3;
  t.dist_rank_logs = true;
  auto& s = c.sample;
  s.sampler = "euler-ancestral";
  s.steps = 7;
  s.spacing = "ddim25";
  s.eta = 1.0;
  s.num = 9;
  s.batch_size = 5;
  s.seed = 42;
  s.use_ema = false;
  s.clip_x0 = false;
  s.dynamic_threshold = 0.995;
  s.guidance_scale = 3.5;
  s.labels = {0, 5, 9};
  s.classifier = "cls.pt";
  s.classifier_scale = 2.5;
  s.sigmas = "model";
  s.rho = 5.5;
  s.s_churn = 40.0;
  s.s_tmin = 0.05;
  s.s_tmax = 50.0;
  s.s_noise = 1.003;
  s.precision = "auto";
  auto& e = c.eval;
  e.metrics = {"fid", "kid", "bpd-mc"};
  e.split = "train";
  e.num_images = 0;
  e.batch_size = 32;
  e.mc_timesteps = 4;
  e.decoder_cdf = DecoderCdf::Tanh;
  e.feature_extractor = "inception v3.pt";
  e.reference = "null";  // a string, not YAML's null
  e.num_samples = 5000;
  return c;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Parsing

TEST(ConfigParse, EmptyOrCommentOnlyTextGivesDefaults) {
  for (const std::string text : {"", "# nothing here\n", "{}", "model:\neval:\n"}) {
    EXPECT_TRUE(diff_fields(parse_config(text), Config{}).empty()) << "text: " << text;
  }
}

TEST(ConfigParse, ReadsEachKindOfValue) {
  const Config c = parse_config(R"(
model:
  channel_mult: [1, 2, 4]
  learn_sigma: yes
diffusion:
  schedule: cosine
  prediction: eps       # an alias the enum parser accepts
  variance: learned_range
  loss: hybrid
  betas: []
data:
  dataset: toy2d
  toy: two_moons
  path: ""
train:
  lr: 1e-4
  steps: +300
  seed: 18446744073709551615
  device: cuda:0
  precision: bf16
eval:
  metrics: toy          # a single value is a one-entry list
)");
  EXPECT_EQ(c.model.channel_mult, (std::vector<double>{1, 2, 4}));
  EXPECT_TRUE(c.model.learn_sigma);
  EXPECT_EQ(c.diffusion.schedule, ScheduleKind::Cosine);
  EXPECT_EQ(c.diffusion.prediction, Prediction::Epsilon);
  EXPECT_EQ(c.diffusion.variance, VarianceType::LearnedRange);
  EXPECT_EQ(c.diffusion.loss, LossType::Hybrid);
  EXPECT_TRUE(c.diffusion.betas.empty());
  EXPECT_EQ(c.data.dataset, DatasetKind::Toy2d);
  EXPECT_EQ(c.data.toy, ToyKind::TwoMoons);
  EXPECT_EQ(c.data.path, "");
  EXPECT_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.train.steps, 300);
  EXPECT_EQ(c.train.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(c.train.device, "cuda:0");
  EXPECT_EQ(c.train.precision, "bf16");
  EXPECT_EQ(c.eval.metrics, (std::vector<std::string>{"toy"}));
  // Untouched keys keep their defaults.
  EXPECT_EQ(c.train.batch_size, Config{}.train.batch_size);
}

TEST(ConfigParse, LoadConfigReadsAFileAndNamesItInErrors) {
  test::TempDir dir;
  const fs::path p = dir.path() / "run.yaml";
  std::ofstream(p) << "train:\n  batch_size: 8\n";
  EXPECT_EQ(load_config(p.string()).train.batch_size, 8);
  std::ofstream(p) << "train:\n  steps: 10\n  batch_size: many\n";
  const std::string msg = usage_error([&] { load_config(p.string()); });
  EXPECT_CONTAINS(msg, p.string() + ":3");
  EXPECT_CONTAINS(msg, "train.batch_size: expected an integer, got 'many'");
}

TEST(ConfigParse, MissingFileIsAnError) {
  const std::string msg = usage_error([] { load_config("/nonexistent/dir/cfg.yaml"); });
  EXPECT_CONTAINS(msg, "/nonexistent/dir/cfg.yaml");
  EXPECT_CONTAINS(msg, "does not exist");
  test::TempDir dir;
  EXPECT_CONTAINS(usage_error([&] { load_config(dir.path().string()); }), "is a directory");
}

// ---------------------------------------------------------------------------------------------
// Errors: each names the origin (with line), the key path and what was expected.

TEST(ConfigErrors, WrongType) {
  std::string msg = parse_error("train:\n  lr: fast\n");
  EXPECT_CONTAINS(msg, "configs/x.yaml:2");
  EXPECT_CONTAINS(msg, "train.lr: expected a number, got 'fast'");
  EXPECT_CONTAINS(parse_error("train:\n  batch_size: 1.5\n"), "train.batch_size: expected an integer, got '1.5'");
  EXPECT_CONTAINS(parse_error("train:\n  steps: 1e3\n"), "train.steps: expected an integer, got '1e3'");
  EXPECT_CONTAINS(parse_error("train:\n  seed: -1\n"), "train.seed: expected an integer >= 0, got '-1'");
  EXPECT_CONTAINS(parse_error("train:\n  steps: 99999999999999999999\n"),
                  "train.steps: '99999999999999999999' is out of range");
  EXPECT_CONTAINS(parse_error("data:\n  random_flip: maybe\n"),
                  "data.random_flip: expected true or false, got 'maybe'");
  EXPECT_CONTAINS(parse_error("train:\n  lr:\n"), "train.lr: expected a number, got nothing");
  EXPECT_CONTAINS(parse_error("train:\n  lr: [1]\n"), "train.lr: expected a number, got a list");
  EXPECT_CONTAINS(parse_error("train:\n  lr: .inf\n"), "train.lr: expected a number, got '.inf'");
  EXPECT_CONTAINS(parse_error("train:\n  lr: -inf\n"), "train.lr: expected a finite number");
  EXPECT_CONTAINS(parse_error("train:\n  device: {a: 1}\n"), "train.device: expected a string, got a map");
  EXPECT_CONTAINS(parse_error("model:\n  channel_mult: [1, x]\n"),
                  "model.channel_mult: entry [1]: expected a number, got 'x'");
  EXPECT_CONTAINS(parse_error("model:\n  channel_mult: {a: 1}\n"), "model.channel_mult: expected a list");
}

TEST(ConfigErrors, OutOfRange) {
  EXPECT_CONTAINS(parse_error("train:\n  batch_size: 0\n"), "train.batch_size: must be >= 1, got 0");
  EXPECT_CONTAINS(parse_error("model:\n  p_uncond: 1.5\n"), "model.p_uncond: must be in [0, 1], got 1.5");
  EXPECT_CONTAINS(parse_error("model:\n  dropout: 1\n"), "model.dropout: must be in [0, 1), got 1");
  EXPECT_CONTAINS(parse_error("train:\n  lr: 0\n"), "train.lr: must be > 0, got 0");
  EXPECT_CONTAINS(parse_error("model:\n  channel_mult: []\n"), "model.channel_mult: must not be empty");
  EXPECT_CONTAINS(parse_error("model:\n  channel_mult: [1, 0]\n"), "model.channel_mult: entry [1] must be > 0, got 0");
  EXPECT_CONTAINS(parse_error("data:\n  channels: 2\n"), "data.channels: must be one of 0, 1, 3, got 2");
  EXPECT_CONTAINS(parse_error("diffusion:\n  beta_end: 1.5\n"),
                  "diffusion.beta_end: must be < 0 (default) or in (0, 1]");
  EXPECT_CONTAINS(parse_error("model:\n  num_head_channels: 0\n"),
                  "model.num_head_channels: must be -1 or >= 1, got 0");
}

TEST(ConfigErrors, ValueNotAllowed) {
  std::string msg = parse_error("diffusion:\n  schedule: cosin\n");
  EXPECT_CONTAINS(msg, "configs/x.yaml:2");
  EXPECT_CONTAINS(msg, "diffusion.schedule: 'cosin' is not one of linear, cosine, sigmoid, scaled_linear, custom");
  EXPECT_CONTAINS(msg, "did you mean 'cosine'?");
  msg = parse_error("train:\n  precision: fp64\n");
  EXPECT_CONTAINS(msg, "train.precision: 'fp64' is not one of fp32, bf16, fp16");
  EXPECT_CONTAINS(parse_error("diffusion:\n  variance: small\n"),
                  "diffusion.variance: 'small' is not one of fixed_small");
  EXPECT_CONTAINS(parse_error("sample:\n  sampler: dpm\n"), "sample.sampler: 'dpm' is not one of ddpm, ddim");
  EXPECT_CONTAINS(parse_error("eval:\n  metrics: [bpd, fidd]\n"),
                  "eval.metrics: entry [1] 'fidd' is not one of bpd, bpd-mc, fid, kid, precision, recall, toy; did you "
                  "mean 'fid'?");
  EXPECT_CONTAINS(parse_error("train:\n  device: gpu\n"), "train.device: 'gpu' is not a device");
  EXPECT_CONTAINS(parse_error("data:\n  dataset: [mnist]\n"), "data.dataset: expected one of fashion-mnist, mnist");
}

TEST(ConfigErrors, UnknownKeySuggestsTheClosest) {
  std::string msg = parse_error("train:\n  lr: 1\n  lrr: 1\n");
  EXPECT_CONTAINS(msg, "configs/x.yaml:3");
  EXPECT_CONTAINS(msg, "unknown key 'train.lrr'; did you mean 'train.lr'?");
  EXPECT_CONTAINS(parse_error("train:\n  batchsize: 1\n"), "did you mean 'train.batch_size'?");
  EXPECT_CONTAINS(parse_error("train:\n  warmup: 100\n"), "did you mean 'train.warmup_steps'?");
  // The right name in the wrong section.
  EXPECT_CONTAINS(parse_error("train:\n  sampler: ddim\n"),
                  "unknown key 'train.sampler'; did you mean 'sample.sampler'?");
  // Nothing close: the section's keys are listed.
  msg = parse_error("eval:\n  completely_different: 1\n");
  EXPECT_CONTAINS(msg, "unknown key 'eval.completely_different'");
  EXPECT_CONTAINS(msg, "metrics, split, num_images");
}

TEST(ConfigErrors, UnknownOrMalformedSection) {
  std::string msg = parse_error("trian:\n  lr: 1\n");
  EXPECT_CONTAINS(msg, "configs/x.yaml:1");
  EXPECT_CONTAINS(msg, "unknown section 'trian'; did you mean 'train'?");
  msg = parse_error("train: 5\n");
  EXPECT_CONTAINS(msg, "section 'train' must be a map");
  EXPECT_CONTAINS(msg, "got '5'");
  EXPECT_CONTAINS(parse_error("train:\n  - lr\n"), "section 'train' must be a map of key: value lines, got a list");
  EXPECT_CONTAINS(parse_error("- model\n- train\n"), "expected sections (model, diffusion, data, train, sample, eval)");
  EXPECT_CONTAINS(parse_error("just a string\n"), "got 'just a string'");
}

TEST(ConfigErrors, DuplicatesAreErrors) {
  EXPECT_CONTAINS(parse_error("train:\n  lr: 1\n  lr: 2\n"),
                  "configs/x.yaml:3: train.lr is given twice (also on line 2)");
  EXPECT_CONTAINS(parse_error("train:\n  lr: 1\ntrain:\n  steps: 2\n"), "section 'train' appears twice");
}

TEST(ConfigErrors, MalformedYamlGivesLineAndColumn) {
  const std::string msg = parse_error("train:\n  lr: [1, 2\n  steps: 3\n");
  EXPECT_CONTAINS(msg, "configs/x.yaml:");
  EXPECT_CONTAINS(msg, "malformed YAML");
  // yaml-cpp's mark: "origin:LINE:COLUMN:".
  const auto pos = msg.find("configs/x.yaml:");
  ASSERT_NE(pos, std::string::npos);
  int line = 0, column = 0;
  ASSERT_EQ(std::sscanf(msg.c_str() + pos, "configs/x.yaml:%d:%d:", &line, &column), 2) << msg;
  EXPECT_GE(line, 2);
  EXPECT_GE(column, 1);
  EXPECT_CONTAINS(parse_error("train:\n\tlr: 1\n"), "malformed YAML");
}

// ---------------------------------------------------------------------------------------------
// Overrides

TEST(ConfigOverride, SetsScalarsListsAndEnums) {
  Config c;
  apply_override(c, "train.lr=2e-4");
  EXPECT_EQ(c.train.lr, 2e-4);
  apply_override(c, "model.channel_mult=[1,2,2,4]");
  EXPECT_EQ(c.model.channel_mult, (std::vector<double>{1, 2, 2, 4}));
  apply_override(c, "eval.metrics=[bpd, fid]");
  EXPECT_EQ(c.eval.metrics, (std::vector<std::string>{"bpd", "fid"}));
  apply_override(c, "model.attention_resolutions=[]");
  EXPECT_TRUE(c.model.attention_resolutions.empty());
  apply_override(c, "diffusion.schedule=cosine");
  EXPECT_EQ(c.diffusion.schedule, ScheduleKind::Cosine);
  apply_override(c, " train.device = cuda:1 ");
  EXPECT_EQ(c.train.device, "cuda:1");
  apply_override(c, "sample.spacing=");
  EXPECT_EQ(c.sample.spacing, "");
  apply_override(c, "data.path=/a=b/c");  // only the first '=' splits
  EXPECT_EQ(c.data.path, "/a=b/c");
  apply_override(c, "data.random_flip=true");
  EXPECT_TRUE(c.data.random_flip);
}

TEST(ConfigOverride, ErrorsNameTheAssignmentAndKey) {
  Config c;
  std::string msg = usage_error([&] { apply_override(c, "train.lrr=1"); });
  EXPECT_EQ(msg.rfind("--set train.lrr=1: unknown key 'train.lrr'", 0), 0u) << msg;
  EXPECT_CONTAINS(msg, "did you mean 'train.lr'?");
  msg = usage_error([&] { apply_override(c, "train.lr"); });
  EXPECT_CONTAINS(msg, "'train.lr'");
  EXPECT_CONTAINS(msg, "section.key=VALUE");
  EXPECT_CONTAINS(usage_error([&] { apply_override(c, "lr=1"); }), "--set lr=1: expected section.key=VALUE");
  EXPECT_CONTAINS(usage_error([&] { apply_override(c, "trian.lr=1"); }),
                  "unknown section 'trian'; did you mean 'train'?");
  EXPECT_CONTAINS(usage_error([&] { apply_override(c, "train.lr=fast"); }),
                  "--set train.lr=fast: train.lr: expected a number, got 'fast'");
  EXPECT_CONTAINS(usage_error([&] { apply_override(c, "train.batch_size=0"); }),
                  "--set train.batch_size=0: train.batch_size: must be >= 1, got 0");
  EXPECT_CONTAINS(usage_error([&] { apply_override(c, "diffusion.schedule=cosin"); }), "did you mean 'cosine'?");
  msg = usage_error([&] { apply_override(c, "model.channel_mult=[1,2"); });
  EXPECT_CONTAINS(msg, "--set model.channel_mult=[1,2: malformed YAML at column");
  // A failed override leaves the config as it was.
  EXPECT_TRUE(diff_fields(c, Config{}).empty());
}

TEST(ConfigOverride, EveryKeyCanBeSetFromItsDumpedValue) {
  // "section.key=VALUE" for each line of to_yaml(all_changed()) rebuilds the whole config.
  const Config want = all_changed();
  std::istringstream lines(to_yaml(want));
  std::string line, section;
  Config c;
  size_t applied = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] != ' ') {
      section = line.substr(0, line.find(':'));
      continue;
    }
    const auto colon = line.find(": ");
    ASSERT_NE(colon, std::string::npos) << line;
    const std::string key = section + "." + line.substr(2, colon - 2);
    apply_override(c, key + "=" + line.substr(colon + 2));
    ++applied;
  }
  EXPECT_EQ(applied, config_keys().size());
  EXPECT_TRUE(diff_fields(c, want).empty()) << join(diff_fields(c, want));
}

// ---------------------------------------------------------------------------------------------
// to_yaml / config_keys

TEST(ConfigYaml, AllChangedChangesEveryFieldTheTableKnows) {
  // The hand-written field list, all_changed() and the table agree: each key differs from its
  // default and no struct field is missing from the table.
  const auto changed = diff_fields(all_changed(), Config{});
  const auto keys = config_keys();
  EXPECT_EQ(std::set<std::string>(changed.begin(), changed.end()), std::set<std::string>(keys.begin(), keys.end()));
  EXPECT_EQ(changed.size(), keys.size());
  EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()).size(), keys.size()) << "duplicate keys";
}

TEST(ConfigYaml, RoundTripIsExact) {
  for (const Config& c : {Config{}, all_changed()}) {
    const std::string text = to_yaml(c);
    const Config back = parse_config(text, "<to_yaml>");
    EXPECT_TRUE(diff_fields(back, c).empty()) << join(diff_fields(back, c)) << "\n" << text;
    EXPECT_EQ(to_yaml(back), text);  // stable
  }
}

TEST(ConfigYaml, WritesEveryKeyOnceInTableOrder) {
  const std::string text = to_yaml(all_changed());
  const YAML::Node root = YAML::Load(text);
  std::vector<std::string> seen;
  for (auto s = root.begin(); s != root.end(); ++s)
    for (auto k = s->second.begin(); k != s->second.end(); ++k)
      seen.push_back(s->first.Scalar() + "." + k->first.Scalar());
  EXPECT_EQ(seen, config_keys());
  // Independent reader: yaml-cpp sees the same values.
  EXPECT_EQ(root["train"]["lr"].as<double>(), 1e-3 / 3.0);
  EXPECT_EQ(root["diffusion"]["beta_end"].as<double>(), 0.1 + 0.2);
  EXPECT_EQ(root["train"]["seed"].as<uint64_t>(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(root["data"]["path"].as<std::string>(), all_changed().data.path);
  EXPECT_EQ(root["diffusion"]["betas_file"].as<std::string>(), all_changed().diffusion.betas_file);
  EXPECT_EQ(root["eval"]["reference"].as<std::string>(), "null");
  EXPECT_EQ(root["model"]["channel_mult"].as<std::vector<double>>(), (std::vector<double>{0.5, 2, 3, 4}));
}

// ---------------------------------------------------------------------------------------------
// validate

TEST(ConfigValidate, DefaultsAreValid) { EXPECT_NO_THROW(validate(Config{})); }

TEST(ConfigValidate, ChecksEachKeysOwnRule) {
  Config c;
  c.train.batch_size = 0;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "train.batch_size: must be >= 1, got 0");
  c = Config{};
  c.model.p_uncond = -0.1;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "model.p_uncond: must be in [0, 1]");
  c = Config{};
  c.train.precision = "fp8";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "train.precision: 'fp8' is not one of fp32, bf16, fp16");
  c = Config{};
  c.train.lr_schedule = "linear";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "train.lr_schedule: 'linear' is not one of constant, cosine");
  c = Config{};
  c.train.on_nonfinite = "ignore";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "train.on_nonfinite");
  c = Config{};
  c.sample.sampler = "plms";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "sample.sampler: 'plms' is not one of");
  c = Config{};
  c.eval.metrics = {"bpd", "is"};
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "eval.metrics: entry [1] 'is' is not one of");
  c = Config{};
  c.train.lr = std::numeric_limits<double>::quiet_NaN();
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "train.lr: must be > 0, got nan");
}

TEST(ConfigValidate, UNetLevelsMustDivideTheImageSize) {
  Config c;
  c.data.image_size = 30;  // [1, 2, 2]: divisible by 4 needed
  std::string msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "model.channel_mult");
  EXPECT_CONTAINS(msg, "divisible by 4");
  EXPECT_CONTAINS(msg, "data.image_size 30");
  c.data.image_size = 32;
  EXPECT_NO_THROW(validate(c));
  // The native size counts too: 28 is not divisible by 8.
  c = Config{};
  c.model.channel_mult = {1, 2, 2, 2};
  msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "divisible by 8");
  EXPECT_CONTAINS(msg, "data.image_size 0: fashion-mnist's native size");
  c.data.dataset = DatasetKind::Cifar10;
  EXPECT_NO_THROW(validate(c));
}

TEST(ConfigValidate, AttentionResolutionsMustBeLevelSizes) {
  Config c;  // 28x28, levels 28, 14, 7
  c.model.attention_resolutions = {7, 14};
  EXPECT_NO_THROW(validate(c));
  c.model.attention_resolutions = {16};
  const std::string msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "model.attention_resolutions: 16 is not the size of any UNet level");
  EXPECT_CONTAINS(msg, "28, 14, 7");
  c.model.attention_resolutions = {7};
  c.model.model_channels = 30;  // 7x7 level: 60 channels, not divisible by 8 heads
  c.model.num_heads = 8;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "model.num_heads: 8 does not divide the 60 channels");
  c.model.num_head_channels = 7;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "model.num_head_channels: 7 does not divide the 60 channels");
}

TEST(ConfigValidate, LearnSigmaVarianceAndLossMustAgree) {
  Config c;
  c.model.learn_sigma = true;  // variance still fixed_small
  std::string msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "model.learn_sigma");
  EXPECT_CONTAINS(msg, "diffusion.variance");
  c.diffusion.variance = VarianceType::LearnedRange;  // loss still simple
  msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "diffusion.loss simple");
  EXPECT_CONTAINS(msg, "diffusion.variance learned_range");
  c.diffusion.loss = LossType::Hybrid;
  EXPECT_NO_THROW(validate(c));
  c.diffusion.loss = LossType::Kl;
  EXPECT_NO_THROW(validate(c));

  c = Config{};
  c.diffusion.variance = VarianceType::Learned;  // learn_sigma false
  msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "diffusion.variance learned needs model.learn_sigma");

  c = Config{};
  c.diffusion.loss = LossType::Hybrid;  // fixed variance
  msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "diffusion.loss hybrid");
  EXPECT_CONTAINS(msg, "diffusion.variance");
  c.diffusion.loss = LossType::Kl;  // the VLB with a fixed variance is fine
  c.diffusion.variance = VarianceType::FixedLarge;
  EXPECT_NO_THROW(validate(c));
}

TEST(ConfigValidate, ModelMustSuitTheData) {
  Config c;
  c.data.dataset = DatasetKind::Toy2d;
  c.eval.metrics = {"toy"};
  std::string msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "data.dataset toy2d");
  EXPECT_CONTAINS(msg, "model.type must be mlp");
  c.model.type = ModelType::Mlp;
  EXPECT_NO_THROW(validate(c));
  c.eval.metrics = {"bpd"};
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "eval.metrics: 'bpd' needs image data");
  c = Config{};
  c.model.type = ModelType::Mlp;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "model.type mlp works on 2-D points only: data.dataset");
  c = Config{};
  c.eval.metrics = {"toy"};
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "eval.metrics: 'toy' needs data.dataset toy2d");
  c.eval.metrics = {"bpd", "bpd"};
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "eval.metrics: 'bpd' is listed twice");
  c = Config{};
  c.data.path = "";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "data.path");
}

TEST(ConfigValidate, ScheduleAndSamplingChecks) {
  Config c;
  c.diffusion.schedule = ScheduleKind::Custom;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "diffusion.schedule custom needs exactly one of diffusion.betas");
  c.diffusion.timesteps = 4;
  c.diffusion.betas = {0.1, 0.2, 0.3};
  c.sample.steps = 4;
  c.train.sample_steps = 4;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "diffusion.betas has 3 entries but diffusion.timesteps is 4");
  c.diffusion.betas.push_back(0.4);
  EXPECT_NO_THROW(validate(c));
  c = Config{};
  c.diffusion.betas_file = "b.txt";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "used only by schedule custom, not linear");
  c = Config{};
  c.diffusion.schedule = ScheduleKind::Cosine;
  c.diffusion.beta_end = 0.02;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }),
                  "diffusion.beta_start / diffusion.beta_end are not used by schedule cosine");
  c = Config{};
  c.diffusion.beta_start = 0.02;
  c.diffusion.beta_end = 0.01;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }),
                  "diffusion.beta_start (0.02) must be below diffusion.beta_end (0.01)");
  c = Config{};
  c.diffusion.schedule = ScheduleKind::Vdm;
  EXPECT_NO_THROW(validate(c));
  c.diffusion.gamma_min = 6.0;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "diffusion.gamma_min (6) must be below diffusion.gamma_max (5)");
  c.diffusion.gamma_min = -13.3;
  c.diffusion.gamma_schedule = GammaKind::LinearBeta;
  c.diffusion.gamma_max = 12.0;
  EXPECT_CONTAINS(
      usage_error([&] { validate(c); }),
      "diffusion.gamma_max (12) is past the end of gamma_schedule linear-beta, which reaches 10.05 at t = 1");
  c.diffusion.gamma_max = 10.0;
  EXPECT_NO_THROW(validate(c));
  c.diffusion.gamma_schedule = GammaKind::Cosine;
  c.diffusion.gamma_max = 12.0;
  EXPECT_NO_THROW(validate(c));
  c.diffusion.gamma_max = 5.0;
  c.diffusion.timestep_sampler = TimestepSamplerKind::Importance;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "timestep_sampler must be uniform or antithetic, got importance");
  c.diffusion.timestep_sampler = TimestepSamplerKind::Antithetic;
  c.diffusion.loss = LossType::Kl;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "leave diffusion.loss simple");
  c = Config{};
  c.diffusion.timestep_sampler = TimestepSamplerKind::Antithetic;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "antithetic draws continuous times: it needs schedule vdm");
  c = Config{};
  c.diffusion.continuous = false;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "are used only by schedule vdm, not linear");
  c = Config{};
  c.diffusion.zero_terminal_snr = true;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "set diffusion.prediction to v or x0");
  c.diffusion.prediction = Prediction::V;
  EXPECT_NO_THROW(validate(c));
  c = Config{};
  c.sample.steps = 1001;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "sample.steps (1001) must be <= diffusion.timesteps (1000)");
  c = Config{};
  c.sample.spacing = "nonsense";
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "sample.spacing:");
  c.sample.spacing = "ddim50";
  EXPECT_NO_THROW(validate(c));
  c = Config{};
  c.sample.guidance_scale = 3.0;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "sample.guidance_scale 3 needs model.class_cond");
  c.model.class_cond = true;
  c.model.num_classes = 10;
  c.sample.labels = {3, 10};
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "sample.labels: label 10 is not below model.num_classes 10");
  c.sample.labels = {3, 9};
  EXPECT_NO_THROW(validate(c));
  c = Config{};
  c.train.lr_schedule = "cosine";
  c.train.min_lr = 1.0;
  EXPECT_CONTAINS(usage_error([&] { validate(c); }), "train.min_lr (1) must be <= train.lr");
}

TEST(ConfigValidate, ListsEveryProblemAtOnce) {
  Config c;
  c.train.batch_size = 0;
  c.model.learn_sigma = true;
  c.data.image_size = 30;
  const std::string msg = usage_error([&] { validate(c); });
  EXPECT_CONTAINS(msg, "3 problems");
  EXPECT_CONTAINS(msg, "train.batch_size");
  EXPECT_CONTAINS(msg, "model.learn_sigma");
  EXPECT_CONTAINS(msg, "data.image_size 30");
}

// ---------------------------------------------------------------------------------------------
// Shipped configs and docs

TEST(ConfigFiles, EveryShippedConfigLoadsAndValidates) {
  const fs::path dir = fs::path(DIFFUSE_SOURCE_DIR) / "configs";
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    names.insert(entry.path().filename().string());
    SCOPED_TRACE(entry.path().string());
    Config c;
    ASSERT_NO_THROW(c = load_config(entry.path().string()));
    EXPECT_NO_THROW(validate(c));
    EXPECT_TRUE(diff_fields(parse_config(to_yaml(c)), c).empty());
  }
  for (const char* want : {"tiny.yaml", "fashion-mnist-quick.yaml", "fashion-mnist.yaml", "cifar10.yaml", "toy2d.yaml"})
    EXPECT_TRUE(names.count(want)) << want << " missing from configs/";
  // tiny.yaml is the smoke-test config: small and quick by construction.
  const Config tiny = load_config((dir / "tiny.yaml").string());
  EXPECT_EQ(tiny.train.steps, 20);
  EXPECT_LE(tiny.model.model_channels, 32);
  EXPECT_EQ(tiny.train.sample_every, 0);
  EXPECT_TRUE(tiny.model.attention_resolutions.empty());
}

TEST(ConfigDocs, ReferenceListsEveryKeyWithItsDefault) {
  const std::string md = config_reference_markdown();
  for (const auto& key : config_keys()) EXPECT_CONTAINS(md, "| `" + key + "` |");
  EXPECT_CONTAINS(md, "| `train.lr` | number, > 0 | `0.0002` |");
  EXPECT_CONTAINS(md, "| `model.channel_mult` | non-empty list of numbers, each > 0 | `[1, 2, 2]` |");
}

// docs/config.md holds config_reference_markdown() between two markers; scripts/update-docs.sh
// rewrites that part (from `diffuse --config-reference`) after the table changes. The test only
// reads.
TEST(ConfigDocs, DocsFileIsCurrent) {
  const fs::path path = fs::path(DIFFUSE_SOURCE_DIR) / "docs" / "config.md";
  const std::string begin = "<!-- BEGIN config_reference_markdown() -->\n";
  const std::string end = "<!-- END config_reference_markdown() -->";
  const std::string doc = read_text(path);
  const auto b = doc.find(begin);
  const auto e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << path << " lacks the BEGIN marker";
  ASSERT_NE(e, std::string::npos) << path << " lacks the END marker";
  const std::string generated = config_reference_markdown();
  for (const auto& key : config_keys()) EXPECT_CONTAINS(doc, "`" + key + "`");
  EXPECT_EQ(doc.substr(b + begin.size(), e - b - begin.size()), generated)
      << path << " is out of date: run scripts/update-docs.sh";
}
