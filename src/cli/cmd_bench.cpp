// `diffuse bench`: speed figures as JSON lines (no assertions; scripts/bench.sh drives it).
//   ceilings: this machine's measured rates for matrix products and 3x3 convolutions, per dtype
//           and backend (one line, before the first figure that uses them);
//   train:  images/s of the real training loop for a config, FLOPs per image, and the fraction of
//           the best ceiling for the run's dtype that the step achieves;
//   sample: images/s per sampler at a given step count (random weights: speed does not depend on
//           them), with the achieved rate against the same ceiling.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <unistd.h>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "diffuse/data/dataset.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/flops.h"
#include "diffuse/generate.h"
#include "diffuse/models/network.h"
#include "diffuse/op_profile.h"
#include "diffuse/runtime.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/train/trainer.h"
#include "json_text.h"

namespace fs = std::filesystem;

namespace diffuse::cli {

namespace {

struct BenchOptions {
  std::string what = "train";
  std::vector<std::string> configs;
  std::vector<std::string> overrides;
  std::vector<std::string> samplers;
  int64_t steps = 20, warmup = 3, batch = 0, num = 16, profile = 0;
  std::string name;
};

// The machine's ceilings on `device`, measured once per run (with the threads then set) and
// printed as one JSON line.
const std::vector<Ceiling>& ceilings_of(const torch::Device& device) {
  static std::vector<Ceiling> cached;
  static bool measured = false;
  if (!measured) {
    cached = measure_ceilings(device.is_cuda());
    measured = true;
    Json line;
    line["bench"] = "ceilings";
    line["device"] = device.str();
    line["threads"] = torch::get_num_threads();
    line["ceilings"] = Json::array();
    for (const auto& c : cached)
      line["ceilings"].push_back({{"op", c.op}, {"dtype", c.dtype}, {"backend", c.backend}, {"gflops", c.gflops}});
    std::cout << json_line(line) << "\n";
  }
  return cached;
}

// The ceiling a run at `precision` (fp32, bf16, fp16) is measured against: the best rate of
// its dtype, as "op dtype backend" and GFLOP/s.
std::pair<std::string, double> ceiling_for(const torch::Device& device, const std::string& precision) {
  const Ceiling* which = nullptr;
  const double g = best_ceiling(ceilings_of(device), precision, &which);
  return {which ? which->op + " " + which->dtype + " " + which->backend : "none", g};
}

// The `top` operators of `fn` by self time, as one JSON line.
void print_profile(const std::string& name, int64_t top, const std::function<void()>& fn) {
  const OpProfile p = profile_ops(fn);
  Json line;
  line["bench"] = "profile";
  line["name"] = name;
  line["wall_ms"] = p.wall_ms;
  line["ops"] = Json::array();
  for (size_t i = 0; i < p.ops.size() && static_cast<int64_t>(i) < top; ++i) {
    const auto& op = p.ops[i];
    line["ops"].push_back({{"op", op.name},
                           {"calls", op.calls},
                           {"self_ms", op.self_ms},
                           {"total_ms", op.total_ms},
                           {"self_share", op.self_ms / p.wall_ms}});
  }
  std::cout << json_line(line) << "\n";
}

double forward_flops_per_example(Network& net, const DataShape& shape, int64_t batch, const torch::Device& device) {
  std::vector<int64_t> dims{batch};
  dims.insert(dims.end(), shape.shape.begin(), shape.shape.end());
  auto x = torch::randn(dims, torch::TensorOptions().device(device));
  auto t = torch::full({batch}, 500.0, torch::TensorOptions().device(device));
  torch::NoGradGuard ng;
  const double f = count_flops([&] { net.forward(x, t); });
  return f / static_cast<double>(batch);
}

int bench_train(const BenchOptions& o) {
  for (const auto& path : o.configs) {
    Config cfg = resolve_config(path, o.overrides);
    if (o.batch > 0) cfg.train.batch_size = o.batch;
    cfg.train.steps = o.steps + o.warmup;
    cfg.train.log_every = cfg.train.steps;
    cfg.train.checkpoint_every = cfg.train.steps + 1;  // no checkpoints while timing
    cfg.train.sample_every = 0;
    const auto dir = fs::temp_directory_path() / fmt::format("diffuse_bench_{}", ::getpid());
    TrainRequest req;
    req.config = cfg;
    req.run_dir = dir.string();
    req.timing_warmup_steps = o.warmup;
    req.save_final = false;
    const auto device = resolve_device(cfg.train.device);
    reset_peak_device_memory(device);
    auto s = train(req);
    const double peak_device = peak_device_memory_mib(device);
    // The ceilings of the device trained on, with the threads train() set.
    const auto [ceiling_name, ceiling] = ceiling_for(device, s.precision);
    if (o.profile > 0) {
      // A second, short run under the profiler: the warm-up steps and two more.
      TrainRequest preq = req;
      preq.config.train.steps = o.warmup + 2;
      preq.config.train.log_every = preq.config.train.steps;
      preq.config.train.checkpoint_every = preq.config.train.steps + 1;
      preq.timing_warmup_steps = 0;
      preq.overwrite = true;
      print_profile(o.name.empty() ? fs::path(path).stem().string() : o.name, o.profile, [&] { train(preq); });
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    const DataShape shape = data_shape(*make_dataset(cfg.data, cfg.train.seed), cfg.data);
    auto net = make_model(cfg, shape);
    net->to(device);
    // FLOPs per image: one forward traced op by op; a training step is ~3x (forward + backward).
    const double fwd = forward_flops_per_example(*net, shape, 4, device);
    const double train_flops = 3.0 * fwd;
    const double achieved = train_flops * s.steady_images_per_second / 1e9;
    Json line;
    line["bench"] = "train";
    line["name"] = o.name.empty() ? fs::path(path).stem().string() : o.name;
    line["config"] = path;
    line["batch"] = cfg.train.batch_size;
    line["threads"] = s.threads;
    line["device"] = s.device;
    line["precision"] = s.precision;
    line["channels_last"] = cfg.train.channels_last;
    line["parameters"] = s.parameters;
    line["steps"] = o.steps;
    line["images_per_sec"] = s.steady_images_per_second;
    line["step_ms"] = 1000.0 * cfg.train.batch_size / s.steady_images_per_second;
    line["peak_rss_mib"] = peak_rss_mib();
    line["peak_device_mib"] = peak_device;
    line["fwd_gflops_per_image"] = fwd / 1e9;
    line["train_gflops_per_image"] = train_flops / 1e9;
    line["achieved_gflops"] = achieved;
    line["ceiling"] = ceiling_name;
    line["ceiling_gflops"] = ceiling;
    line["fraction_of_ceiling"] = achieved / ceiling;
    std::cout << json_line(line) << "\n";
  }
  return 0;
}

int bench_sample(const BenchOptions& o) {
  for (const auto& path : o.configs) {
    Config cfg = resolve_config(path, o.overrides);
    configure_threads(static_cast<int>(cfg.train.threads));
    const auto device = resolve_device(cfg.train.device);
    const DataShape shape = data_shape(*make_dataset(cfg.data, cfg.train.seed), cfg.data);
    torch::manual_seed(0);
    auto net = make_model(cfg, shape);
    net->to(device);
    apply_memory_format(*net, cfg, shape);
    auto diffusion = make_diffusion(cfg, net.get());
    const std::string precision = resolve_precision(cfg.sample.precision, device);
    const double fwd = forward_flops_per_example(*net, shape, 4, device);
    const auto [ceiling_name, ceiling] = ceiling_for(device, precision);
    const auto samplers = o.samplers.empty() ? sampler_names() : o.samplers;
    for (const auto& name : samplers) {
      GenerateRequest req;
      req.sample = with_sampler(cfg.sample, name);
      req.sample.steps = o.steps;
      req.sample.num = o.num;
      req.sample.batch_size = o.batch > 0 ? o.batch : o.num;
      req.device = device;
      auto warm = req;
      warm.sample.num = std::min<int64_t>(2, o.num);
      warm.sample.steps = std::min<int64_t>(2, o.steps);
      generate_samples(*net, diffusion, shape, warm);  // one-time kernel/primitive set-up
      auto r = generate_samples(*net, diffusion, shape, req);
      // Each network evaluation runs on the whole batch (twice over under guidance): nfe / batches
      // evaluations per image, each of rows_per_evaluation forward passes.
      const int64_t nfe_per_batch = r.nfe / std::max<int64_t>(1, r.batches);
      const double achieved = fwd * static_cast<double>(nfe_per_batch * r.rows_per_evaluation) *
                              static_cast<double>(o.num) / r.seconds / 1e9;
      Json line;
      line["bench"] = "sample";
      line["config"] = path;
      line["sampler"] = name;
      line["steps"] = o.steps;
      line["nfe_per_batch"] = nfe_per_batch;
      line["rows_per_evaluation"] = r.rows_per_evaluation;
      line["num"] = o.num;
      line["batch"] = req.sample.batch_size;
      line["device"] = device.str();
      line["precision"] = precision;
      line["images_per_sec"] = o.num / r.seconds;
      line["seconds"] = r.seconds;
      line["fwd_gflops_per_image"] = fwd / 1e9;
      line["achieved_gflops"] = achieved;
      line["ceiling"] = ceiling_name;
      line["ceiling_gflops"] = ceiling;
      line["fraction_of_ceiling"] = achieved / ceiling;
      line["peak_rss_mib"] = peak_rss_mib();
      std::cout << json_line(line) << "\n";
      if (o.profile > 0) print_profile(name, o.profile, [&] { generate_samples(*net, diffusion, shape, req); });
    }
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand("bench", "Measure training or sampling speed; prints JSON lines");
  cmd->add_option("what", o->what, "train or sample")->check(CLI::IsMember({"train", "sample"}))->capture_default_str();
  cmd->add_option("--config,-c", o->configs, "Config(s) to measure (repeatable)")->required();
  cmd->add_option("--set", o->overrides, "Override a config key (repeatable)");
  cmd->add_option("--steps", o->steps, "Timed training steps, or sampler steps")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o->warmup, "Untimed training steps first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", o->batch, "Batch size (0 = the config's)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--num", o->num, "Samples per sampler (sample)")->check(CLI::PositiveNumber);
  cmd->add_option("--sampler", o->samplers, "Samplers to time (default: all)");
  cmd->add_option("--name", o->name, "Name for the JSON line");
  cmd->add_option("--profile", o->profile,
                  "Also run once under the operator profiler and print the N operators with the most self time")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o, &action] { action = [o] { return o->what == "train" ? bench_train(*o) : bench_sample(*o); }; });
}

}  // namespace diffuse::cli
