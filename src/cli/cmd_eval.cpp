// `diffuse eval`: the variational bound term by term (bits/dim), sample quality, sweeps.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/launch.h"
#include "diffuse/error.h"
#include "diffuse/eval/evaluator.h"
#include "diffuse/factory.h"
#include "diffuse/losses.h"
#include "diffuse/models/network.h"
#include "diffuse/runtime.h"
#include "diffuse/timestep_sampler.h"
#include "diffuse/train/checkpoint.h"

namespace fs = std::filesystem;

namespace diffuse::cli {

namespace {

struct EvalOptions {
  std::string checkpoint, out, format = "text", weights = "ema", device = "auto", split, samples, reference,
                               reference_stats, feature_extractor, decoder_cdf;
  std::vector<std::string> metrics, overrides, sweep;
  int64_t num_images = -1, batch_size = 0, mc_timesteps = 0, num_samples = 0;
  bool importance = false;
  uint64_t seed = 0;
  int threads = 0;
  int nproc = 1;
  CLI::App* cmd = nullptr;
};

int run_eval(const EvalOptions& o) {
  const auto path = resolve_checkpoint(o.checkpoint);
  CheckpointReader reader(path);
  Config cfg = config_from_checkpoint_yaml(reader.meta().config_yaml, path, o.overrides);
  require_denoiser(cfg, path);
  auto& ev = cfg.eval;
  if (!o.metrics.empty()) ev.metrics = o.metrics;
  if (!o.split.empty()) ev.split = o.split;
  if (o.num_images >= 0) ev.num_images = o.num_images;
  if (o.batch_size > 0) ev.batch_size = o.batch_size;
  if (o.mc_timesteps > 0) ev.mc_timesteps = o.mc_timesteps;
  if (o.num_samples > 0) ev.num_samples = o.num_samples;
  if (!o.reference.empty()) ev.reference = o.reference;
  if (!o.feature_extractor.empty()) ev.feature_extractor = o.feature_extractor;
  if (!o.decoder_cdf.empty()) ev.decoder_cdf = parse_decoder_cdf(o.decoder_cdf);
  configure_threads(o.threads);

  EvalRequest req;
  req.config = cfg;
  req.shape = reader.meta().data;
  const auto env = read_dist_env();
  req.device = rank_device(o.device, env);
  req.out_dir = o.out.empty() ? (fs::path(path).parent_path().parent_path() / "eval").string() : o.out;
  req.samples_dir = o.samples;
  req.reference_stats = o.reference_stats;
  req.seed = o.seed;
  for (const auto& s : o.sweep) req.sweep.push_back(parse_sweep(s));
  if (o.importance) {
    const auto& st = reader.meta().timestep_sampler_state;
    ImportanceTimestepSampler sampler(cfg.diffusion.timesteps);
    if (!st.defined()) throw UsageError("--importance: the checkpoint has no timestep-sampler history");
    sampler.load_state(st, "checkpoint '" + path + "'");
    if (!sampler.warmed_up())
      throw UsageError(
          "--importance: the checkpoint's loss history is not warmed up (train with "
          "diffusion.timestep_sampler: importance for longer)");
    req.timestep_probabilities = sampler.probabilities();
  }

  auto [net, ema] = load_network(reader, cfg, o.weights == "ema", req.device);
  auto diffusion = make_diffusion(cfg, net.get());
  // Under a launcher the ranks split the work (see EvalRequest::group); rank 0 reports.
  auto group = join_launch_group(env, cfg.train.dist_timeout);
  req.group = group.get();
  auto report = evaluate(*net, diffusion, req);
  if (group->rank() != 0) return 0;

  if (o.format == "json") {
    std::cout << report.json << "\n";
  } else {
    std::cout << fmt::format("eval of {} ({} weights)\n", path, ema ? "EMA" : "raw");
    for (const auto& [k, v] : report.values) std::cout << fmt::format("  {:<28} {:.6g}\n", k, v);
    for (const auto& [k, v] : report.settings) std::cout << fmt::format("  {:<28} {}\n", k, v);
    for (const auto& [what, p] : report.files) std::cout << fmt::format("  {:<28} {}\n", what, p);
  }
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand(
      "eval", "Evaluate a checkpoint: bits/dim (ELBO terms), FID/KID, precision/recall, toy distances, sweeps");
  o->cmd = cmd;
  cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint file or run directory")->required();
  cmd->add_option("--metrics", o->metrics,
                  fmt::format("Metrics: {} (comma separated or repeated)", fmt::join(eval_metric_names(), ", ")))
      ->delimiter(',')
      ->check(CLI::IsMember(eval_metric_names()));
  cmd->add_option("--split", o->split, "Held-out split for bpd")->check(CLI::IsMember({"train", "test"}));
  cmd->add_option("--num-images", o->num_images, "Held-out images for bpd (0 = all)")->check(at_least(0));
  cmd->add_option("--batch-size", o->batch_size, "Images per batch")->check(at_least(1));
  cmd->add_option("--mc-timesteps", o->mc_timesteps, "bpd-mc: random t per image")->check(at_least(1));
  cmd->add_option(
         "--decoder-cdf", o->decoder_cdf,
         "bpd: normal CDF of the decoder term: exact, or tanh (improved-diffusion's, to match published numbers)")
      ->check(CLI::IsMember(decoder_cdf_names()));
  cmd->add_flag("--importance", o->importance, "bpd-mc: draw t from the checkpoint's loss-aware sampler");
  cmd->add_option("--num-samples", o->num_samples, "Generated samples for fid/kid/precision/recall/toy")
      ->check(at_least(1));
  cmd->add_option("--samples", o->samples,
                  "fid/kid/precision/recall: an image folder to measure instead of generating");
  cmd->add_option("--reference", o->reference,
                  "fid/kid/precision/recall: reference image folder (default: the data split)");
  cmd->add_option("--reference-stats", o->reference_stats,
                  "fid: reference statistics cache (read if present, else written)");
  cmd->add_option("--inception,--feature-extractor", o->feature_extractor,
                  "fid/kid/precision/recall: pytorch-fid's Inception weights (pt_inception-2015-12-05-*.pth), a "
                  "classifier checkpoint (scripts/make-feature-net.sh) or a TorchScript feature network (docs/fid.md)");
  cmd->add_option("--sweep", o->sweep, "Sweep a sampler over step counts, e.g. ddim:10,20,50 (repeatable)");
  cmd->add_option("--out,-o", o->out, "Output directory (default: <run>/eval)");
  cmd->add_option("--format", o->format, "stdout format")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  cmd->add_option("--weights", o->weights, "Which weights")
      ->check(CLI::IsMember({"ema", "raw"}))
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed for noise, timesteps and samples");
  cmd->add_option("--device", o->device, "auto, cpu, cuda, cuda:N")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0 = OMP_NUM_THREADS if set, else all usable cores)")
      ->check(at_least(0));
  cmd->add_option("--set", o->overrides, "Override a key of the checkpoint's config (repeatable)");
  add_nproc_option(*cmd, &o->nproc);
  cmd->callback(
      [o, &action] { action = [o] { return should_launch(o->nproc) ? launch_local_ranks(o->nproc) : run_eval(*o); }; });
}

}  // namespace diffuse::cli
