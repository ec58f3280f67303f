// `diffuse sample`: images (or points) from a checkpoint with any registered sampler.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/launch.h"
#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/eval/plot.h"
#include "diffuse/factory.h"
#include "diffuse/generate.h"
#include "diffuse/image_io.h"
#include "diffuse/models/network.h"
#include "diffuse/precision.h"
#include "diffuse/progress.h"
#include "diffuse/runtime.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/samplers/sigma_schedule.h"
#include "diffuse/train/checkpoint.h"

namespace fs = std::filesystem;

namespace diffuse::cli {

namespace {

struct SampleOptions {
  std::string checkpoint;
  std::string out = "samples";
  std::vector<std::string> overrides;
  int64_t num = 64, batch_size = 64, steps = 50, trajectory = 0, nrow = 0, first_index = 0;
  uint64_t seed = 0;
  std::string sampler = "ddim", spacing, weights = "ema", device = "auto", sigmas = "karras", precision = "fp32";
  std::string classifier, low_res;
  double eta = -1.0, guidance_scale = 1.0, dynamic_threshold = 0.0, rho = 7.0, classifier_scale = 1.0;
  double s_churn = 0.0, s_tmin = 0.0, s_tmax = 1.0e4, s_noise = 1.0;
  std::vector<int64_t> labels;
  bool no_clip = false, save_tensor = false, no_images = false;
  int threads = 0;
  int nproc = 1;
  CLI::App* cmd = nullptr;
};

// Flags given on the command line win over the checkpoint's sample.* section.
void apply_flags(const SampleOptions& o, SampleConfig& s) {
  auto given = [&](const char* name) { return o.cmd->count(name) > 0; };
  if (given("--num")) s.num = o.num;
  if (given("--batch-size")) s.batch_size = o.batch_size;
  if (given("--steps")) s.steps = o.steps;
  if (given("--seed")) s.seed = o.seed;
  if (given("--sampler")) s = with_sampler(s, o.sampler);
  if (given("--spacing")) s.spacing = o.spacing;
  if (given("--eta")) s.eta = o.eta;
  if (given("--guidance-scale")) s.guidance_scale = o.guidance_scale;
  if (given("--classifier")) s.classifier = o.classifier;
  if (given("--classifier-scale")) s.classifier_scale = o.classifier_scale;
  if (given("--classifier-scale") && s.classifier.empty())
    throw UsageError("--classifier-scale needs a classifier (--classifier CKPT)");
  if (given("--dynamic-threshold")) s.dynamic_threshold = o.dynamic_threshold;
  if (given("--sigmas")) s.sigmas = o.sigmas;
  if (given("--rho")) s.rho = o.rho;
  if (given("--s-churn")) s.s_churn = o.s_churn;
  if (given("--s-tmin")) s.s_tmin = o.s_tmin;
  if (given("--s-tmax")) s.s_tmax = o.s_tmax;
  if (given("--s-noise")) s.s_noise = o.s_noise;
  if (given("--precision")) s.precision = o.precision;
  if (given("--label")) s.labels = o.labels;
  if (given("--no-clip")) s.clip_x0 = false;
  if (given("--weights")) s.use_ema = o.weights == "ema";
  check_explicit_options(s.sampler, given("--eta"), given("--sigmas") || given("--rho"),
                         given("--s-churn") || given("--s-tmin") || given("--s-tmax") || given("--s-noise"));
}

// Numbered samples left in the output folder by an earlier run (say 64 then, 16 now) would be
// taken for this run's by `eval --samples`; say so rather than delete them, since splitting one
// job over several processes (--first-index) writes other numbers into the same folder on purpose.
void warn_about_other_samples(const std::string& out, int64_t first, int64_t num) {
  static const std::regex numbered(R"((\d{6,18})\.png)");  // fits int64
  int64_t others = 0;
  std::string example;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out, ec)) {
    std::smatch m;
    const auto name = e.path().filename().string();
    if (!std::regex_match(name, m, numbered)) continue;
    const int64_t i = std::stoll(m[1].str());
    if (i >= first && i < first + num) continue;
    if (others++ == 0 || name < example) example = name;
  }
  if (others > 0)
    std::cerr << fmt::format(
        "diffuse: note: {} holds {} other numbered sample(s) (e.g. {}) not written by this run; "
        "`diffuse eval --samples {}` would count them too\n",
        out, others, example, out);
}

int run_sample(const SampleOptions& o) {
  const auto path = resolve_checkpoint(o.checkpoint);
  CheckpointReader reader(path);
  Config cfg = config_from_checkpoint_yaml(reader.meta().config_yaml, path, o.overrides);
  require_denoiser(cfg, path);
  apply_flags(o, cfg.sample);
  const auto& s = cfg.sample;
  if (s.guidance_scale != 1.0 && cfg.model.class_cond && cfg.model.p_uncond <= 0.0)
    throw UsageError(
        fmt::format("--guidance-scale {}: '{}' was trained without the null label (model.p_uncond 0, as "
                    "OpenAI's imported models are), so classifier-free guidance has nothing to use",
                    s.guidance_scale, path));
  const int threads = configure_threads(o.threads);
  const auto env = read_dist_env();
  const auto device = rank_device(o.device, env);
  const auto& shape = reader.meta().data;

  // Super-resolution: the images to upsample, by default all of them once; a file's labels
  // (arr_1) condition a class-conditional model unless --label is given.
  LowResImages low_res;
  if (!o.low_res.empty()) {
    if (cfg.model.low_res_size == 0)
      throw UsageError("--low-res: '" + path + "' is not a super-resolution model (model.low_res_size 0)");
    low_res = load_low_res_images(o.low_res, shape.shape.at(0), cfg.model.low_res_size);
    if (o.cmd->count("--num") == 0) cfg.sample.num = low_res.images.size(0);
    if (o.cmd->count("--label") == 0 && cfg.model.class_cond && !low_res.labels.empty())
      cfg.sample.labels = low_res.labels;
  }
  auto [net, ema] = load_network(reader, cfg, s.use_ema, device);
  if (s.use_ema && !ema) std::cerr << "diffuse: " << path << " has no EMA weights; using the raw weights\n";
  auto diffusion = make_diffusion(cfg, net.get());
  std::shared_ptr<Network> classifier;
  if (!s.classifier.empty()) classifier = load_guidance_classifier(s.classifier, shape, diffusion, device);

  const bool images = shape.shape.size() == 3;
  // Under a launcher rank r makes rank_slice(num, r, W) of the samples; all are gathered to rank
  // 0, which alone writes and prints (the others only report errors).
  auto group = join_launch_group(env, cfg.train.dist_timeout);
  const bool lead = group->rank() == 0;
  const auto share = rank_slice(s.num, group->rank(), group->world_size());
  const int64_t my_first = o.first_index + share.begin;
  if (lead) check_output_dir(o.out, "--out");
  GenerateRequest req;
  req.sample = s;
  req.device = device;
  req.first_index = o.first_index;
  req.classifier = classifier.get();
  req.low_res = low_res.images;
  const int64_t batches = (share.size() + s.batch_size - 1) / s.batch_size;
  // The bar counts sampler steps over all of rank 0's batches (the step count is known at the
  // first step).
  ProgressBar bar("sample", batches, 0, lead && stderr_is_terminal());
  const std::string of_all =
      group->distributed() ? fmt::format(" (rank 0's share of {} on {} ranks)", s.num, group->world_size()) : "";
  int64_t samples_done = 0;
  auto progress = [&](const StepInfo& info, int64_t first) {
    const int64_t batch = (first - my_first) / s.batch_size;
    if (batch == 0 && info.step == 0) bar.set_total(batches * info.total);
    bar.update(batch * info.total + info.step + 1, fmt::format("{}/{} samples", samples_done, share.size()));
  };
  req.on_batch = [&](int64_t done, int64_t total) {
    samples_done = done;
    if (lead && !bar.enabled()) std::cerr << fmt::format("sampled {}/{}{}\n", done, total, of_all);
  };
  req.on_step = progress;
  // Trajectory: x_t and the predicted x0 at `trajectory` evenly spaced steps of the first
  // traj_rows samples (the first batch of a one-rank run), kept by whichever rank makes them.
  const int64_t traj_rows = std::min<int64_t>({8, s.num, s.batch_size});
  const bool want_traj = o.trajectory > 0 && images;
  std::map<int64_t, std::vector<torch::Tensor>> traj;  // batch's first index -> [rows, 2 (x_t, x0), C, H, W] per step
  if (want_traj) {
    req.on_step = [&](const StepInfo& info, int64_t first) {
      progress(info, first);
      const int64_t lo = std::max(first, o.first_index);
      const int64_t hi = std::min(first + info.x_t.size(0), o.first_index + traj_rows);
      if (lo >= hi) return;
      // min(N, steps) columns, evenly spaced (rounded) from the first step to the last; one column: the last.
      const int64_t cols = std::min(o.trajectory, info.total);
      bool wanted = false;
      for (int64_t k = 0; k < cols && !wanted; ++k)
        wanted = info.step == (cols == 1 ? info.total - 1 : (k * (info.total - 1) + (cols - 1) / 2) / (cols - 1));
      if (!wanted) return;
      auto rows = [&](const torch::Tensor& t) {
        return t.slice(0, lo - first, hi - first).to(torch::kCPU, torch::kFloat32).clamp(-1, 1);
      };
      traj[first].push_back(torch::stack({rows(info.x_t), rows(info.x0_pred)}, 1));
    };
  }
  auto r = generate_samples(*net, diffusion, shape, req, *group);
  bar.finish();
  // [traj_rows, 2, steps, C, H, W], sent flat: a rank without trajectory rows does not know the step count.
  torch::Tensor trajectory;
  if (want_traj) {
    std::vector<torch::Tensor> mine;
    for (auto& [first, steps] : traj) mine.push_back(torch::stack(steps, 2).reshape({-1}));
    auto flat = all_gather_rows(*group, mine.empty() ? torch::empty({0}) : torch::cat(mine), "trajectory");
    if (lead && !traj.empty()) {
      auto shape_of = traj.begin()->second.front().sizes().vec();  // [rows, 2, C, H, W]
      shape_of.insert(shape_of.begin() + 2, static_cast<int64_t>(traj.begin()->second.size()));
      shape_of[0] = -1;
      trajectory = flat.reshape(shape_of);
    }
  }
  if (!lead) return 0;

  std::map<std::string, std::string> meta{
      {"diffuse-checkpoint", fs::canonical(path).string()},  // latest.pt resolved
      {"sampler", s.sampler},
      {"steps", std::to_string(s.steps)},
      {"seed", std::to_string(s.seed)},
      {"weights", ema ? "ema" : "raw"},
      {"eta", s.eta >= 0 ? fmt::format("{}", s.eta) : std::string("sampler default")},
      {"clip_x0", s.clip_x0 ? "true" : "false"},
      {"guidance_scale", fmt::format("{}", s.guidance_scale)},
      {"precision", resolve_precision(s.precision, device)}};
  if (!s.spacing.empty()) meta["spacing"] = s.spacing;
  if (!o.low_res.empty()) meta["low_res"] = fs::absolute(o.low_res).lexically_normal().string();
  if (classifier) {
    meta["classifier"] = fs::canonical(s.classifier).string();
    meta["classifier_scale"] = fmt::format("{}", s.classifier_scale);
  }
  fs::create_directories(o.out);  // now that there is something to write (checked above)
  std::vector<std::string> written;
  if (images) {
    if (!o.no_images) {
      for (int64_t i = 0; i < s.num; ++i) {
        auto m = meta;
        m["index"] = std::to_string(o.first_index + i);
        const auto label = r.labels[i].item<int64_t>();
        if (label >= 0) m["label"] = std::to_string(label);
        save_png((fs::path(o.out) / fmt::format("{:06d}.png", o.first_index + i)).string(), r.samples[i], m);
      }
      written.push_back(fmt::format("{} PNGs {}/{:06d}.png ..", s.num, o.out, o.first_index));
    }
    const auto grid_path = (fs::path(o.out) / "grid.png").string();
    auto gm = meta;
    gm["index"] = fmt::format("{}-{}", o.first_index, o.first_index + s.num - 1);
    save_png(grid_path, make_grid(r.samples, o.nrow), gm);
    written.push_back("grid " + grid_path);
    if (trajectory.defined()) {
      // Rows: for each sample, x_t then x0_pred; columns: the captured steps, noisy to clean.
      const int64_t cols = trajectory.size(2);
      const auto tpath = (fs::path(o.out) / "trajectory.png").string();
      auto tm = meta;
      tm["layout"] = "rows: x_t then predicted x0 per sample; columns: sampler steps from noise to data";
      save_png(tpath, make_grid(trajectory.flatten(0, 2), cols), tm);
      written.push_back("trajectory " + tpath);
    }
  }
  if (!images && shape.shape.size() == 1 && shape.shape[0] == 2) {
    const auto ppath = (fs::path(o.out) / "scatter.png").string();
    save_png(ppath, plot_points(r.samples), meta);
    written.push_back("scatter " + ppath);
  }
  if (o.save_tensor || !images) {
    const auto tpath = (fs::path(o.out) / "samples.pt").string();
    std::ostringstream bytes;
    torch::save(r.samples, bytes);
    write_file_atomic(tpath, bytes.str());
    written.push_back("tensor " + tpath + " (torch::save of [N, ...] float32)");
  }
  const std::string ranks = group->distributed() ? fmt::format(" x {} ranks", group->world_size()) : "";
  const std::string guided =
      r.rows_per_evaluation > 1 ? fmt::format(" of a doubled batch, guidance {}", s.guidance_scale) : "";
  std::cout << fmt::format(
      "sampled {} with {} ({} steps, {} network evaluations{}) in {:.1f}s ({:.2f} samples/s, {} threads{}, {})\n",
      s.num, s.sampler, s.steps, r.nfe, guided, r.seconds, s.num / std::max(r.seconds, 1e-9), threads, ranks,
      device.str());
  for (const auto& w : written) std::cout << "  " << w << "\n";
  if (images && !o.no_images) warn_about_other_samples(o.out, o.first_index, s.num);
  return 0;
}

}  // namespace

void add_sample_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<SampleOptions>();
  auto* cmd = app.add_subcommand("sample", "Generate samples from a checkpoint");
  o->cmd = cmd;
  cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint file or run directory")->required();
  cmd->add_option("--out,-o", o->out, "Output directory")->capture_default_str();
  cmd->add_option("--num,-n", o->num, "Number of samples")->check(at_least(1));
  cmd->add_option("--batch-size", o->batch_size, "Samples per batch (does not change the samples)")->check(at_least(1));
  cmd->add_option("--sampler", o->sampler, "Sampler")->check(CLI::IsMember(sampler_names()));
  cmd->add_option("--steps", o->steps, "Sampling steps")->check(at_least(1));
  cmd->add_option("--spacing", o->spacing,
                  "Timestep spacing: leading, trailing, linspace, ddim, or a respacing spec ('ddim50', '10,15,20')");
  cmd->add_option("--seed", o->seed, "Seed: sample i depends only on (seed, i)");
  cmd->add_option("--first-index", o->first_index, "Global index of the first sample (to split work)")
      ->check(at_least(0));
  cmd->add_option("--eta", o->eta,
                  "DDIM / Euler-ancestral noise per step, 0 = deterministic (default: DDIM 0, Euler-ancestral 1)")
      ->check(at_least(0));
  cmd->add_option("--weights", o->weights, "Which weights")->check(CLI::IsMember({"ema", "raw"}));
  cmd->add_option("--label", o->labels, "Class label(s) for a class-conditional model (cycled)");
  cmd->add_option("--guidance-scale", o->guidance_scale, "Classifier-free guidance scale (1 = off)");
  cmd->add_option("--classifier", o->classifier,
                  "Classifier guidance: a noisy-image classifier checkpoint (diffuse import --classifier)");
  cmd->add_option("--classifier-scale", o->classifier_scale, "Classifier guidance: the gradient's scale (default 1)")
      ->check(at_least(0));
  cmd->add_option("--low-res", o->low_res,
                  "Super-resolution: the images to upsample, an image folder (e.g. a base model's samples) or an "
                  ".npz of uint8 NHWC images (arr_0, labels arr_1) as image_sample.py writes; sample i upsamples "
                  "image i (cycled); --num defaults to their count");
  cmd->add_flag("--no-clip", o->no_clip, "Do not clip the predicted x0 to [-1, 1]");
  cmd->add_option("--dynamic-threshold", o->dynamic_threshold, "Imagen dynamic thresholding percentile (0 = off)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--sigmas", o->sigmas, "Noise levels for euler/heun/dpmpp-2m")
      ->check(CLI::IsMember(sigma_schedule_names()));
  cmd->add_option("--precision", o->precision, "Network precision: fp32, bf16, fp16 (CUDA), auto (bf16 where native)")
      ->check(CLI::IsMember(precision_names()));
  cmd->add_option("--rho", o->rho, "Karras rho");
  cmd->add_option("--s-churn", o->s_churn, "euler/heun: EDM's stochastic churn S_churn (0 = deterministic)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--s-tmin", o->s_tmin, "euler/heun: churn only where sigma >= this")->check(CLI::NonNegativeNumber);
  cmd->add_option("--s-tmax", o->s_tmax, "euler/heun: churn only where sigma <= this")->check(CLI::NonNegativeNumber);
  cmd->add_option("--s-noise", o->s_noise, "euler/heun: the churn noise's scale S_noise")->check(CLI::PositiveNumber);
  cmd->add_option("--device", o->device, "auto, cpu, cuda, cuda:N")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0 = OMP_NUM_THREADS if set, else all usable cores)")
      ->check(at_least(0));
  cmd->add_option("--set", o->overrides, "Override a key of the checkpoint's config (repeatable)");
  cmd->add_option("--trajectory", o->trajectory, "Save a strip of x_t and predicted x0 at this many steps")
      ->check(at_least(0));
  cmd->add_option("--nrow", o->nrow, "Images per grid row (0 = square)")->check(at_least(0));
  cmd->add_flag("--save-tensor", o->save_tensor, "Also write samples.pt (raw float tensor)");
  cmd->add_flag("--no-images", o->no_images, "Write only the grid, not one PNG per sample");
  add_nproc_option(*cmd, &o->nproc);
  cmd->callback([o, &action] {
    action = [o] { return should_launch(o->nproc) ? launch_local_ranks(o->nproc) : run_sample(*o); };
  });
}

}  // namespace diffuse::cli
