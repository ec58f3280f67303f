#include "diffuse/train/trainer.h"

#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "diffuse/data/file_bytes.h"
#include "diffuse/data/dataset.h"
#include "diffuse/data/loader.h"
#include "diffuse/error.h"
#include "diffuse/eval/plot.h"
#include "diffuse/factory.h"
#include "diffuse/generate.h"
#include "diffuse/image_io.h"
#include "diffuse/losses.h"
#include "diffuse/models/network.h"
#include "diffuse/precision.h"
#include "diffuse/progress.h"
#include "diffuse/runtime.h"
#include "diffuse/timestep_sampler.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/ema.h"
#include "diffuse/train/grad_clip.h"
#include "diffuse/train/loss_scale.h"
#include "diffuse/train/lr_schedule.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

std::atomic<int> g_stop_signal{0};

std::shared_ptr<spdlog::logger> make_logger(const std::string& log_path, bool console_is_tty) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  // On a terminal the bar carries progress; the console shows warnings and errors, clearing
  // the bar's line first. In a log, every info line is printed.
  if (console_is_tty) {
    console->set_level(spdlog::level::warn);
    console->set_pattern("\r\033[K[%H:%M:%S] %^%l%$: %v");
  } else {
    console->set_pattern("[%Y-%m-%d %H:%M:%S] %^%l%$: %v");
  }
  std::vector<spdlog::sink_ptr> sinks{console};
  if (!log_path.empty()) {
    auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_path, /*truncate=*/false);
    file->set_pattern("[%Y-%m-%d %H:%M:%S.%e] %l: %v");
    sinks.push_back(file);
  }
  auto logger = std::make_shared<spdlog::logger>("train", sinks.begin(), sinks.end());
  logger->set_level(spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  return logger;
}

// Keep only metrics lines up to `step` (a resume from an older checkpoint replays later steps).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto pos = line.find("\"step\": ");
    if (pos == std::string::npos) continue;
    if (std::stoll(line.substr(pos + 8)) <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// A fresh run must not write over another run (its config, metrics, or checkpoints that the
// keep-last-K pruning would then mix with the new ones). See TrainRequest::overwrite.
void prepare_fresh_run_dir(const std::string& run_dir, bool overwrite) {
  const auto ckpts = run_checkpoints(run_dir);
  const fs::path root(run_dir), ck = root / "checkpoints";
  std::error_code ec;
  const bool has_latest = fs::is_symlink(ck / "latest.pt", ec) || fs::exists(ck / "latest.pt", ec);
  if (ckpts.empty() && !has_latest) return;
  if (!overwrite) {
    const auto last = ckpts.empty() ? std::string("latest.pt") : fs::path(ckpts.back()).filename().string();
    throw UsageError(fmt::format(
        "run directory '{}' already holds a run ({} checkpoint(s), newest {}): resume it with "
        "`diffuse train --resume {}`, choose another --run-dir, or pass --overwrite to delete that run "
        "and start again",
        run_dir, ckpts.size(), last, run_dir));
  }
  for (const auto& c : ckpts) fs::remove(c);
  fs::remove(ck / "latest.pt", ec);
  fs::remove(ck / ".latest.pt.tmp", ec);
  for (const char* f : {"metrics.jsonl", "train.log", "config.yaml"}) fs::remove(root / f, ec);
  if (fs::is_directory(root / "samples", ec)) {
    static const std::regex grid(R"(step_\d{8,}\.png)");
    for (const auto& e : fs::directory_iterator(root / "samples", ec))
      if (std::regex_match(e.path().filename().string(), grid)) fs::remove(e.path(), ec);
  }
}

std::string json_double(double v) { return std::isfinite(v) ? fmt::format("{}", v) : "null"; }

// Running sums over one logging window. Per-step values stay on the device (no host sync per
// step beyond the loss and gradient norm); they are read once per logging window.
struct Window {
  double loss = 0, grad_norm = 0;
  int64_t steps = 0, images = 0;
  torch::Tensor parts;     // [2]: mse, vb summed over steps
  torch::Tensor quarters;  // [2, 4]: per quarter of t, loss sum and count
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  explicit Window(const torch::Device& device)
      : parts(torch::zeros({2}, torch::TensorOptions().dtype(torch::kFloat64).device(device))),
        quarters(torch::zeros({2, 4}, torch::TensorOptions().dtype(torch::kFloat64).device(device))) {}
};

// Adds one optimizer step to the logging window (the quarter breakdown as improved-diffusion
// logs it), all on the device.
void record_step(Window& win, double loss, double grad_norm, const torch::Tensor& mse_sum, const torch::Tensor& vb_sum,
                 const torch::Tensor& step_t, const torch::Tensor& step_losses, int64_t T) {
  win.loss += loss;
  win.grad_norm += grad_norm;
  ++win.steps;
  win.parts += torch::stack({mse_sum, vb_sum}).to(torch::kFloat64);
  auto q = torch::div(step_t * 4, T, "floor").clamp(0, 3).to(win.quarters.device(), torch::kLong);
  auto l = step_losses.to(torch::kFloat64);
  win.quarters[0].scatter_add_(0, q, l);
  win.quarters[1].scatter_add_(0, q, torch::ones_like(l));
}

}  // namespace

void request_stop(int signal) noexcept { g_stop_signal.store(signal); }
void clear_stop_request() noexcept { g_stop_signal.store(0); }

TrainSummary train(const TrainRequest& req) {
  Config cfg = req.config;
  const bool main_rank = req.rank == 0;
  TrainSummary summary;
  if (req.run_dir.empty()) throw UsageError("a run directory is needed (--run-dir)");
  summary.run_dir = req.run_dir;
  if (req.resume_from.empty() && main_rank) prepare_fresh_run_dir(req.run_dir, req.overwrite);
  fs::create_directories(req.run_dir);

  // Resuming: the checkpoint carries the config it was trained with; the caller's config
  // (checkpoint config + overrides) decides the rest (e.g. more steps).
  std::unique_ptr<CheckpointReader> ckpt;
  const auto device = resolve_device(cfg.train.device);
  if (!req.resume_from.empty()) ckpt = std::make_unique<CheckpointReader>(resolve_checkpoint(req.resume_from), device);
  validate(cfg);
  const int threads = configure_threads(static_cast<int>(cfg.train.threads));
  const std::string precision = resolve_precision(cfg.train.precision, device);

  summary.log = (fs::path(req.run_dir) / "train.log").string();
  summary.metrics = (fs::path(req.run_dir) / "metrics.jsonl").string();
  summary.config = (fs::path(req.run_dir) / "config.yaml").string();
  const bool tty = stderr_is_terminal();
  auto log = make_logger(main_rank ? summary.log : "", tty);

  const std::string config_yaml = to_yaml(cfg);
  if (main_rank) write_file_atomic(summary.config, config_yaml);

  torch::manual_seed(cfg.train.seed);

  // Data.
  auto dataset = make_dataset(cfg.data, cfg.train.seed);
  const DataShape shape = data_shape(*dataset, cfg.data);
  if (cfg.model.class_cond) {
    // A label outside the embedding would fail mid-run (a device assert on CUDA): refuse it now.
    if (dataset->num_classes() == 0)
      throw UsageError("model.class_cond: true, but the data (" + dataset->describe() + ") has no class labels");
    if (cfg.model.num_classes > 0 && cfg.model.num_classes < dataset->num_classes())
      throw UsageError(fmt::format("model.num_classes is {}, but the dataset has {} classes", cfg.model.num_classes,
                                   dataset->num_classes()));
  }
  if (ckpt && ckpt->meta().data.shape != shape.shape)
    throw UsageError("checkpoint '" + ckpt->path() + "' was trained on data of another shape than data.* gives now");
  auto lo = loader_options(cfg.data, cfg.train.batch_size, cfg.train.seed, req.rank, req.world_size);
  lo.pin_memory = device.is_cuda();
  LoaderPosition start_pos{0, 0};
  if (ckpt) start_pos = {ckpt->meta().data_epoch, ckpt->meta().data_offset};
  DataLoader loader(dataset, lo, start_pos);

  // Model, EMA, optimizer (built on CPU, weights loaded, then moved).
  auto diffusion = make_diffusion(cfg);
  auto model = make_model(cfg, shape);
  auto ema_model = make_model(cfg, shape);
  if (ckpt) {
    model->to(torch::kCPU);
    ckpt->load_weights(*model, false);
  }
  model->to(device);
  ema_model->to(device);
  if (cfg.train.channels_last && shape.shape.size() == 3) {
    convert_to_channels_last(*model);
    convert_to_channels_last(*ema_model);
  }
  Ema ema(model, ema_model, cfg.train.ema_decay, cfg.train.ema_warmup);
  if (ckpt && ckpt->has_ema()) ckpt->load_weights(*ema_model, true);
  ema_model->eval();

  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(cfg.train.lr)
                                                         .betas({cfg.train.adam_beta1, cfg.train.adam_beta2})
                                                         .eps(cfg.train.adam_eps)
                                                         .weight_decay(cfg.train.weight_decay));
  auto tsampler = make_timestep_sampler(cfg.diffusion.timestep_sampler, diffusion.num_timesteps());
  int64_t step = 0;
  DynamicLossScale loss_scale(precision == "fp16");
  double prior_elapsed = 0.0;
  if (ckpt) {
    const auto& m = ckpt->meta();
    ckpt->load_optimizer(optimizer);
    step = m.step;
    if (m.cpu_rng_state.defined()) {
      at::Generator g = at::detail::getDefaultCPUGenerator();  // shares the default's state
      g.set_state(m.cpu_rng_state);
    }
    if (device.is_cuda() && m.device_rng_state.defined()) {
      at::Generator g = at::globalContext().defaultGenerator(device);
      g.set_state(m.device_rng_state);
    }
    if (m.timestep_sampler_state.defined()) tsampler->load_state(m.timestep_sampler_state);
    loss_scale.restore(m.loss_scale, m.loss_scale_good_steps);  // only when fp16 then and now
    prior_elapsed = m.elapsed_seconds;
    log->info("resumed from {} at step {}", ckpt->path(), step);
  }
  if (main_rank) {
    if (ckpt) truncate_metrics(summary.metrics, step);
    else if (fs::exists(summary.metrics)) fs::remove(summary.metrics);
  }
  ckpt.reset();  // release the archive's memory

  LrSchedule lrs{cfg.train.lr, cfg.train.warmup_steps, cfg.train.lr_schedule, cfg.train.min_lr, cfg.train.steps};
  LossConfig loss_cfg{cfg.diffusion.loss, cfg.diffusion.hybrid_lambda, cfg.diffusion.loss_weighting,
                      cfg.diffusion.min_snr_gamma};
  const int64_t T = diffusion.num_timesteps();
  auto cpu_gen = at::detail::getDefaultCPUGenerator();
  const bool class_cond = model->class_conditional();

  log->info("diffuse train: {} parameters, data {} ({} examples), device {} ({}), {} threads, batch {} x {} accum",
            count_parameters(*model), dataset->describe(), dataset->size(), device.str(), precision, threads,
            cfg.train.batch_size, cfg.train.grad_accum);
  log->info("run directory {}", req.run_dir);

  std::ofstream metrics;
  if (main_rank) metrics.open(summary.metrics, std::ios::app);

  int64_t checkpointed_step = -1;
  auto checkpoint = [&](double elapsed) {
    if (!main_rank || checkpointed_step == step) return;  // this step is on disk already
    checkpointed_step = step;
    CheckpointMeta meta;
    meta.step = step;
    meta.config_yaml = config_yaml;
    meta.data = shape;
    const auto pos = loader.position();
    meta.data_epoch = pos.epoch;
    meta.data_offset = pos.offset;
    meta.cpu_rng_state = at::detail::getDefaultCPUGenerator().get_state();
    if (device.is_cuda()) meta.device_rng_state = at::globalContext().defaultGenerator(device).get_state();
    meta.timestep_sampler_state = tsampler->state();
    meta.loss_scale = loss_scale.scale();
    meta.loss_scale_good_steps = loss_scale.good_steps();
    meta.elapsed_seconds = elapsed;
    summary.checkpoint = save_run_checkpoint(req.run_dir, cfg.train.keep_checkpoints, meta, *model, ema_model.get(),
                                             &optimizer);
    log->info("step {}: checkpoint {}", step, summary.checkpoint);
  };
  auto sample_grid = [&]() {
    if (!main_rank || cfg.train.sample_every <= 0 || cfg.train.sample_num <= 0) return;
    GenerateRequest g;
    g.sample = cfg.sample;
    g.sample.steps = std::min<int64_t>(cfg.train.sample_steps, T);
    g.sample.num = cfg.train.sample_num;
    g.sample.sampler = "ddim";
    g.sample.spacing = "";
    g.sample.seed = cfg.train.seed;  // the same noise every time, so grids are comparable
    g.device = device;
    auto images = generate(*ema_model, diffusion, shape, g);
    const auto path = (fs::path(req.run_dir) / "samples" / fmt::format("step_{:08d}.png", step)).string();
    fs::create_directories(fs::path(path).parent_path());
    // Images: a grid; 2-D points: a density picture.
    save_png(path, shape.shape.size() == 3 ? make_grid(images.cpu()) : plot_points(images),
             {{"diffuse", "training sample grid"}, {"step", std::to_string(step)}, {"sampler", "ddim"},
              {"steps", std::to_string(g.sample.steps)}, {"seed", std::to_string(g.sample.seed)}, {"weights", "ema"}});
    summary.grid = path;
    log->info("step {}: sample grid {}", step, path);
  };

  summary.start_step = step;
  summary.parameters = count_parameters(*model);
  summary.threads = threads;
  summary.device = device.str();
  summary.precision = precision;
  const int64_t steady_from = step + req.timing_warmup_steps;
  std::chrono::steady_clock::time_point steady_t0;
  int64_t steady_images = 0;
  ProgressBar bar("train", cfg.train.steps, step, tty && main_rank);
  Window win(device);
  const auto t0 = std::chrono::steady_clock::now();
  steady_t0 = t0;  // replaced at the end of the last warm-up step, if any
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  int64_t images_total = 0;
  model->train();

  while (step < cfg.train.steps) {
    if (g_stop_signal.load() != 0) break;
    if (req.stop_after_step > 0 && step >= req.stop_after_step) break;
    // One optimizer step over grad_accum micro-batches.
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().device(device));
    torch::Tensor mse_sum = torch::zeros({}, torch::TensorOptions().device(device));
    torch::Tensor vb_sum = torch::zeros({}, torch::TensorOptions().device(device));
    std::vector<torch::Tensor> step_losses;  // per micro-batch, in the order of step_draw
    // Everything random about the step except dropout is drawn for all micro-batches at once:
    // the timesteps, then the noise, then the label drops. K micro-batches of B then use the
    // random streams exactly as one batch of K*B does, so accumulation makes the same step as
    // the larger batch would (Train.GradAccumulationEqualsOneBatchOfTheSameExamples).
    std::vector<Batch> micro_batches;
    int64_t step_examples = 0;
    for (int64_t micro = 0; micro < cfg.train.grad_accum; ++micro) {
      micro_batches.push_back(loader.next());
      step_examples += micro_batches.back().x.size(0);
    }
    const auto step_draw = tsampler->sample(step_examples, device, cpu_gen);  // drawn on the CPU, copied without a sync
    auto noise_shape = micro_batches.front().x.sizes().vec();
    noise_shape[0] = step_examples;
    const auto step_noise = torch::randn(noise_shape, torch::TensorOptions().device(device));
    torch::Tensor step_drop;
    if (class_cond && cfg.model.p_uncond > 0)
      step_drop = torch::rand({step_examples}, torch::TensorOptions().device(device)) < cfg.model.p_uncond;
    int64_t first = 0;
    for (auto& batch : micro_batches) {
      auto x0 = batch.x.to(device, /*non_blocking=*/true);
      if (cfg.train.channels_last && x0.dim() == 4) x0 = x0.contiguous(torch::MemoryFormat::ChannelsLast);
      const int64_t B = x0.size(0);
      TimestepDraw draw{step_draw.t.narrow(0, first, B), step_draw.weights.narrow(0, first, B)};
      auto noise = step_noise.narrow(0, first, B).contiguous(x0.suggest_memory_format());
      auto x_t = diffusion.q_sample(x0, draw.t, noise);
      torch::Tensor y;
      if (class_cond) {
        y = batch.y.to(device, /*non_blocking=*/true);  // pinned by the loader on CUDA
        // Classifier-free guidance training: replace labels by the null label with prob p_uncond.
        if (step_drop.defined())
          y = torch::where(step_drop.narrow(0, first, B), torch::full_like(y, model->null_label()), y);
      }
      first += B;
      torch::Tensor out;
      {
        AutocastGuard ac(precision, device);
        out = model->forward(x_t, draw.t.to(torch::kFloat32), y);
      }
      auto losses = training_losses(diffusion, loss_cfg, out.to(torch::kFloat32), x0, x_t, draw.t, noise);
      auto loss = (losses.loss * draw.weights).mean() / static_cast<double>(cfg.train.grad_accum);
      loss_scale.apply(loss).backward();
      loss_sum += loss.detach();
      if (losses.mse.defined()) mse_sum += losses.mse.detach().mean() / static_cast<double>(cfg.train.grad_accum);
      if (losses.vb.defined()) vb_sum += losses.vb.detach().mean() / static_cast<double>(cfg.train.grad_accum);
      step_losses.push_back(losses.loss.detach());
      images_total += B;
      win.images += B;
    }
    loss_scale.unscale(model->parameters());
    // The gradient norm before clipping (with grad_clip = 0 it is only measured), clipped on the
    // device, then loss and norm read in one host sync (torch's clip_grad_norm_ syncs on its own).
    const auto clipped = clip_grad_norm(model->parameters(), cfg.train.grad_clip);
    const auto host = torch::stack({loss_sum.to(torch::kFloat64), clipped.to(loss_sum.device(), torch::kFloat64)}).cpu();
    const double loss_value = host[0].item<double>(), grad_norm = host[1].item<double>();
    const bool finite = std::isfinite(loss_value) && std::isfinite(grad_norm);
    ++step;
    if (step == steady_from) steady_t0 = std::chrono::steady_clock::now();
    if (step > steady_from) steady_images += cfg.train.batch_size * cfg.train.grad_accum;
    const double lr = lrs.at(step);
    if (!finite) {
      optimizer.zero_grad();
      if (loss_scale.enabled() && std::isfinite(loss_value) && loss_scale.update(/*overflow=*/true)) {
        // fp16 overflow in the gradients: lower the scale and try the next batch (as GradScaler).
        log->warn("step {}: gradient overflow in fp16, loss scale now {}", step, loss_scale.scale());
      } else if (cfg.train.on_nonfinite == "skip") {
        ++summary.skipped_steps;
        log->warn("step {}: non-finite {} ({}), step skipped", step, std::isfinite(loss_value) ? "gradient" : "loss",
                  std::isfinite(loss_value) ? grad_norm : loss_value);
      } else {
        // The last good checkpoint stays untouched: nothing is saved after a bad step.
        throw std::runtime_error(fmt::format(
            "step {}: non-finite {} ({}); stopping. The last good checkpoint is kept. Lower train.lr, "
            "check the data, or set train.on_nonfinite: skip",
            step, std::isfinite(loss_value) ? "gradient norm" : "loss",
            std::isfinite(loss_value) ? grad_norm : loss_value));
      }
    } else {
      for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      optimizer.step();
      optimizer.zero_grad();
      ema.update(step);
      loss_scale.update(/*overflow=*/false);
      const auto losses_all = torch::cat(step_losses);
      tsampler->update(step_draw.t, losses_all);
      record_step(win, loss_value, grad_norm, mse_sum, vb_sum, step_draw.t, losses_all, T);
    }
    const double el = elapsed();
    const double rate = static_cast<double>(images_total) / std::max(el, 1e-9);
    const bool last = step == cfg.train.steps;
    // A skipped step still counts for the periodic checkpoint and grid below; only the window
    // statistics leave it out.
    if (win.steps > 0) bar.update(step, fmt::format("loss {:.4f} {:.1f} img/s", win.loss / win.steps, rate));
    if (win.steps > 0 && (step % cfg.train.log_every == 0 || last)) {
      const double wsec = std::chrono::duration<double>(std::chrono::steady_clock::now() - win.start).count();
      last_loss = win.loss / win.steps;
      const auto parts = win.parts.cpu();
      const auto qs = win.quarters.cpu();
      const double mse = parts[0].item<double>() / win.steps, vb = parts[1].item<double>() / win.steps;
      std::string quarters;
      for (int k = 0; k < 4; ++k) {
        const double n = qs[1][k].item<double>();
        quarters += fmt::format(", \"loss_q{}\": {}", k, n > 0 ? json_double(qs[0][k].item<double>() / n) : "null");
      }
      if (main_rank) {
        metrics << fmt::format(
            "{{\"step\": {}, \"loss\": {}, \"mse\": {}, \"vb\": {}{}, \"grad_norm\": {}, \"lr\": {}, "
            "\"images_per_sec\": {}, \"elapsed\": {}}}\n",
            step, json_double(last_loss), json_double(mse), json_double(vb), quarters,
            json_double(win.grad_norm / win.steps), json_double(lr), json_double(win.images / std::max(wsec, 1e-9)),
            json_double(prior_elapsed + el));
        metrics.flush();
      }
      log->info("step {}/{} loss {:.5f} grad_norm {:.3f} lr {:.3g} {:.1f} img/s elapsed {}", step, cfg.train.steps,
                last_loss, win.grad_norm / win.steps, lr, win.images / std::max(wsec, 1e-9),
                format_duration(prior_elapsed + el));
      win = Window(device);
    }
    if (cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0 && !last)
      checkpoint(prior_elapsed + el);
    if (cfg.train.sample_every > 0 && step % cfg.train.sample_every == 0 && !last) {
      sample_grid();
      model->train();
    }
  }
  bar.finish();
  summary.stop_signal = g_stop_signal.load();
  summary.end_step = step;
  summary.seconds = elapsed();
  summary.images_per_second = static_cast<double>(images_total) / std::max(summary.seconds, 1e-9);
  if (std::isnan(last_loss) && win.steps > 0) last_loss = win.loss / win.steps;
  summary.final_loss = last_loss;
  if (step > steady_from) {
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - steady_t0).count();
    summary.steady_images_per_second = static_cast<double>(steady_images) / std::max(sec, 1e-9);
  }
  if (req.save_final && (step > summary.start_step || summary.stop_signal)) {
    checkpoint(prior_elapsed + summary.seconds);
    if (summary.stop_signal) {
      log->warn("stopped by signal {} at step {}; resume with --resume {}", summary.stop_signal, step, req.run_dir);
    } else if (cfg.train.sample_every > 0) {
      sample_grid();
    }
  }
  log->flush();
  return summary;
}

}  // namespace diffuse
