#include "diffuse/train/trainer.h"

#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>

#include <fmt/format.h>

#include "diffuse/data/file_bytes.h"
#include "diffuse/data/dataset.h"
#include "diffuse/data/loader.h"
#include "diffuse/dist/grad_sync.h"
#include "diffuse/dist/process_group.h"
#include "diffuse/error.h"
#include "diffuse/eval/plot.h"
#include "diffuse/factory.h"
#include "diffuse/generate.h"
#include "diffuse/image_io.h"
#include "diffuse/losses.h"
#include "diffuse/models/network.h"
#include "diffuse/models/super_res.h"
#include "diffuse/precision.h"
#include "diffuse/progress.h"
#include "diffuse/runtime.h"
#include "diffuse/timestep_sampler.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/metrics_file.h"
#include "diffuse/train/ema.h"
#include "diffuse/train/grad_clip.h"
#include "diffuse/train/label_dropout.h"
#include "diffuse/train/loss_scale.h"
#include "diffuse/train/lr_schedule.h"
#include "diffuse/train/training_state.h"
#include "json_text.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

std::atomic<int> g_stop_signal{0};

// quiet_console: the console shows warnings and errors only (a terminal with a bar, or a rank
// other than 0); prefix marks the rank's lines in a data-parallel run.
// Holds the log lines of set-up until the run directory is written to: a run refused for bad
// input leaves no train.log behind.
class HeldLines : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    text_.append(buf.data(), buf.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

constexpr const char* kFilePattern = "[%Y-%m-%d %H:%M:%S.%e] {}%l: %v";

// The console first, then a HeldLines sink that open_log_file() replaces with the file.
std::shared_ptr<spdlog::logger> make_logger(bool quiet_console, const std::string& prefix) {
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  // On a terminal the bar carries progress; the console shows warnings and errors, clearing
  // the bar's line first. In a log, every info line is printed.
  if (quiet_console) {
    console->set_level(spdlog::level::warn);
    console->set_pattern(stderr_is_terminal() ? "\r\033[K[%H:%M:%S] " + prefix + "%^%l%$: %v"
                                              : "[%Y-%m-%d %H:%M:%S] " + prefix + "%^%l%$: %v");
  } else {
    console->set_pattern("[%Y-%m-%d %H:%M:%S] " + prefix + "%^%l%$: %v");
  }
  auto held = std::make_shared<HeldLines>();
  held->set_pattern(fmt::format(kFilePattern, prefix));
  std::vector<spdlog::sink_ptr> sinks{console, held};
  auto logger = std::make_shared<spdlog::logger>("train", sinks.begin(), sinks.end());
  logger->set_level(spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  return logger;
}

// Appends the held lines to log_path and logs there from now on ("" = no file: drop them).
void open_log_file(spdlog::logger& logger, const std::string& log_path, const std::string& prefix) {
  auto& sinks = logger.sinks();
  auto held = std::dynamic_pointer_cast<HeldLines>(sinks.back());
  if (!held) return;  // opened already
  sinks.pop_back();
  if (log_path.empty()) return;
  {
    std::ofstream f(log_path, std::ios::app);
    f << held->text();
  }
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_path, /*truncate=*/false);
  file->set_pattern(fmt::format(kFilePattern, prefix));
  sinks.push_back(file);
}

// The sample grids of a run directory (run_dir/samples/step_<step>.png).
std::vector<fs::path> run_grids(const std::string& run_dir) {
  static const std::regex grid(R"(step_\d{8,}\.png)");
  std::vector<fs::path> grids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "samples", ec))
    if (std::regex_match(e.path().filename().string(), grid)) grids.push_back(e.path());
  return grids;
}

// A fresh run must not write over another run (its config, metrics, or checkpoints that the
// keep-last-K pruning would then mix with the new ones). See TrainRequest::overwrite.
void refuse_other_run(const std::string& run_dir, bool overwrite) {
  const auto ckpts = run_checkpoints(run_dir);
  std::error_code ec;
  const fs::path latest = fs::path(run_dir) / "checkpoints" / "latest.pt";
  const bool has_latest = fs::is_symlink(latest, ec) || fs::exists(latest, ec);
  if ((ckpts.empty() && !has_latest) || overwrite) return;
  const auto last = ckpts.empty() ? std::string("latest.pt") : fs::path(ckpts.back()).filename().string();
  throw UsageError(
      fmt::format("run directory '{}' already holds a run ({} checkpoint(s), newest {}): resume it with "
                  "`diffuse train --resume {}`, choose another --run-dir, or pass --overwrite to delete that run "
                  "and start again",
                  run_dir, ckpts.size(), last, run_dir));
}

// --overwrite: what an earlier run wrote into run_dir goes, other files stay.
void clear_old_run(const std::string& run_dir) {
  const fs::path root(run_dir), ck = root / "checkpoints";
  std::error_code ec;
  for (const auto& c : run_checkpoints(run_dir)) fs::remove(c);
  fs::remove(ck / "latest.pt", ec);
  fs::remove(ck / ".latest.pt.tmp", ec);
  for (const char* f : {"metrics.jsonl", "train.log", "config.yaml"}) fs::remove(root / f, ec);
  for (const auto& g : run_grids(run_dir)) fs::remove(g, ec);
}

// The step in the name of a run's file (ckpt_00001000.pt, step_00001000.png).
int64_t step_in_name(const fs::path& p) {
  const auto name = p.filename().string();
  return std::strtoll(name.c_str() + name.find_first_of("0123456789"), nullptr, 10);
}

// Resuming from `step` abandons what the run did after it. Its later checkpoints and grids would
// otherwise linger: name-ordered pruning would keep them instead of the new ones, and they would
// pass for the resumed run's. They are moved aside, not deleted (a resume from an old checkpoint
// may be a mistake), into run_dir/abandoned_after_step_<step>[.N]/, and latest.pt then names the
// newest checkpoint left.
void set_aside_later_steps(const std::string& run_dir, int64_t step, spdlog::logger& log) {
  std::vector<fs::path> later;
  for (const auto& c : run_checkpoints(run_dir))
    if (step_in_name(c) > step) later.emplace_back(c);
  const size_t num_ckpts = later.size();
  for (const auto& g : run_grids(run_dir))
    if (step_in_name(g) > step) later.push_back(g);
  if (later.empty()) return;
  fs::path aside = fs::path(run_dir) / fmt::format("abandoned_after_step_{}", step);
  for (int k = 2; fs::exists(aside); ++k)
    aside = fs::path(run_dir) / fmt::format("abandoned_after_step_{}.{}", step, k);
  fs::create_directories(aside);
  for (const auto& p : later) fs::rename(p, aside / p.filename());
  if (num_ckpts > 0) {
    const auto left = run_checkpoints(run_dir);
    link_latest_checkpoint(run_dir, left.empty() ? "" : left.back());
  }
  log.warn(
      "resuming from step {}: moved {} checkpoint(s) and {} sample grid(s) of later steps, which this run "
      "replaces, to {}",
      step, num_ckpts, later.size() - num_ckpts, aside.string());
}

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
void record_step(Window& win, double loss, double grad_norm, const torch::Tensor& mse_vb, const torch::Tensor& step_t,
                 const torch::Tensor& step_losses, int64_t T) {
  win.loss += loss;
  win.grad_norm += grad_norm;
  ++win.steps;
  win.parts += mse_vb;
  auto q = torch::div(step_t * 4, T, "floor").clamp(0, 3).to(win.quarters.device(), torch::kLong);
  auto l = step_losses.to(torch::kFloat64);
  win.quarters[0].scatter_add_(0, q, l);
  win.quarters[1].scatter_add_(0, q, torch::ones_like(l));
}

// Set-up work that can fail on one rank alone (a missing file, a refused run directory): every
// rank learns of the failure, so none is left waiting in a collective the failed rank never
// reaches. The failed rank rethrows its own error; the others name it.
template <class F>
void on_every_rank(ProcessGroup& pg, const char* what, F&& f) {
  std::string err;
  std::exception_ptr own;
  try {
    f();
  } catch (const UsageError& e) {
    err = std::string("U") + e.what();
    own = std::current_exception();
  } catch (const std::exception& e) {
    err = std::string("R") + e.what();
    own = std::current_exception();
  }
  if (!pg.distributed()) {
    if (own) std::rethrow_exception(own);
    return;
  }
  const auto all = all_gather_strings(pg, err, what);
  if (own) std::rethrow_exception(own);
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    const auto msg = fmt::format("rank {} failed while {}: {}", r, what, all[r].substr(1));
    if (all[r][0] == 'U') throw UsageError(msg);
    throw std::runtime_error(msg);
  }
}

// What one optimizer step drew for the whole global batch (every rank draws the same), and this
// rank's share of it: the examples at global positions rank, rank + W, ..., which is how the
// loader shards a batch, so W ranks of B see the draws one rank of W*B would.
struct StepDraw {
  TimestepDraw global;
  torch::Tensor t, weights, noise, drop;  // this rank's, in its batch order
  torch::Tensor sigma, step;              // continuous noise levels (lognormal) and their network time
  torch::Tensor time, noise0;             // schedule vdm: continuous t in [0, 1) and z_0's noise
};

struct StepResult {
  double loss = 0, grad_norm = 0;
  bool finite = true;
  torch::Tensor parts;                    // [2] float64 on the device: mse, vb (means over all ranks)
  torch::Tensor global_t, global_losses;  // [W*K*B] in global order
};

class TrainLoop {
 public:
  explicit TrainLoop(const TrainRequest& req) : req_(req), cfg_(req.config) {}
  TrainSummary run();

 private:
  TrainSummary run_unlogged();
  void log_fatal(const char* what);
  // Set-up, in order.
  void join_ranks();
  void prepare_run_dir();
  void build_data();
  void check_same_data(const std::string& checkpoint_fingerprint);
  void build_model();
  void restore();
  void commit_run_dir();
  void remove_created_dirs();
  void broadcast_state();
  // One optimizer step and what follows it.
  bool stop_agreed();
  StepResult run_step();
  StepDraw draw_step(const std::vector<Batch>& micro_batches);
  void forward_backward(const std::vector<Batch>& micro_batches, const StepDraw& draw, StepResult& out);
  NoiseLevel noise_level(const StepDraw& d, int64_t first, int64_t B, const torch::Tensor& x0) const;
  TrainingLoss discrete_losses(const StepDraw& d, int64_t first, const torch::Tensor& x0, const torch::Tensor& low_res,
                               const torch::Tensor& y, const Batch& batch);
  TrainingLoss vdm_losses(const StepDraw& d, int64_t first, const torch::Tensor& x0, const torch::Tensor& low_res,
                          const torch::Tensor& y);
  void reduce_step(StepResult& out, const torch::Tensor& clipped);
  void optimize(const StepResult& r, double lr);
  void log_window(double lr, bool last);
  void checkpoint();
  void sample_grid();
  std::vector<torch::Tensor> replicated_state();
  void verify_replicas(const char* when);
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

  const TrainRequest& req_;
  Config cfg_;
  TrainSummary summary_;
  DistEnv env_;
  std::unique_ptr<ProcessGroup> pg_;
  std::unique_ptr<GradientSync> grad_sync_;
  bool main_rank_ = true;
  int64_t W_ = 1, rank_ = 0;
  torch::Device device_ = torch::kCPU;
  std::string precision_;
  int threads_ = 0;
  bool tty_ = false;
  std::shared_ptr<spdlog::logger> log_;
  std::string config_yaml_;
  std::string data_fingerprint_;
  std::vector<fs::path> created_dirs_;  // by prepare_run_dir, deepest first
  bool committed_ = false;              // commit_run_dir has run: the run directory is written to
  std::string log_prefix() const { return W_ > 1 ? fmt::format("[rank {}] ", rank_) : ""; }
  std::unique_ptr<CheckpointReader> ckpt_;

  std::shared_ptr<Dataset> dataset_;
  DataShape shape_;
  std::unique_ptr<DataLoader> loader_;
  std::optional<GaussianDiffusion> diffusion_;
  std::shared_ptr<Network> model_, ema_model_;
  std::shared_ptr<GammaSchedule> gamma_;  // schedule vdm: the trained model's gamma(t)
  VdmOptions vdm_;
  bool classifier_ = false;     // model.type classifier: cross-entropy on x_t instead of a diffusion loss
  torch::Tensor grid_low_res_;  // super-resolution: what the sample grids upsample
  std::unique_ptr<Ema> ema_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<TimestepSampler> tsampler_;
  std::unique_ptr<DynamicLossScale> loss_scale_;
  std::unique_ptr<LrSchedule> lrs_;
  LossConfig loss_cfg_;
  at::Generator cpu_gen_ = at::detail::getDefaultCPUGenerator();

  int64_t step_ = 0, checkpointed_step_ = -1, images_total_ = 0;
  double prior_elapsed_ = 0.0, last_loss_ = std::numeric_limits<double>::quiet_NaN();
  int agreed_signal_ = 0;
  double comm_wait_seconds_ = 0.0;  // gradient all-reduce time not hidden by backward, this window
  std::ofstream metrics_;
  std::optional<Window> win_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

void TrainLoop::join_ranks() {
  env_ = req_.dist;
  W_ = env_.world_size;
  rank_ = env_.rank;
  main_rank_ = rank_ == 0;
  device_ = rank_device(cfg_.train.device, env_);
  if (env_.launched())
    pg_ = std::make_unique<ProcessGroup>(
        env_, DistOptions{cfg_.train.dist_backend, std::chrono::seconds(cfg_.train.dist_timeout), device_});
  else pg_ = std::make_unique<ProcessGroup>();
}

// Checks the run directory and reads what set-up needs, writing nothing into it yet (see
// commit_run_dir): only a directory that did not exist is created, to check that it can be.
void TrainLoop::prepare_run_dir() {
  if (req_.run_dir.empty()) throw UsageError("a run directory is needed (--run-dir)");
  summary_.run_dir = req_.run_dir;
  summary_.log = (fs::path(req_.run_dir) / "train.log").string();
  summary_.metrics = (fs::path(req_.run_dir) / "metrics.jsonl").string();
  summary_.config = (fs::path(req_.run_dir) / "config.yaml").string();
  on_every_rank(*pg_, "preparing the run directory", [&] {
    if (!main_rank_) return;
    std::error_code ec;
    if (fs::exists(req_.run_dir, ec) && !fs::is_directory(req_.run_dir, ec))
      throw UsageError(fmt::format("run directory '{}' exists and is not a directory (--run-dir)", req_.run_dir));
    for (fs::path p = fs::absolute(req_.run_dir, ec); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
      created_dirs_.push_back(p);
      if (p == p.parent_path()) break;
    }
    if (!fs::create_directories(req_.run_dir, ec) && ec)
      throw UsageError(fmt::format("cannot create run directory '{}' (--run-dir): {}", req_.run_dir, ec.message()));
    require_writable_directory(req_.run_dir, "the run directory");
    if (fs::is_directory(fs::path(req_.run_dir) / "checkpoints", ec))
      require_writable_directory((fs::path(req_.run_dir) / "checkpoints").string(), "the run's checkpoint folder");
    if (req_.resume_from.empty()) refuse_other_run(req_.run_dir, req_.overwrite);
  });
  // Resuming: the checkpoint carries the config it was trained with; the caller's config
  // (checkpoint config + overrides) decides the rest (e.g. more steps).
  on_every_rank(*pg_, "reading the checkpoint", [&] {
    if (!req_.resume_from.empty())
      ckpt_ = std::make_unique<CheckpointReader>(resolve_checkpoint(req_.resume_from), device_);
    resolve_betas_file(cfg_.diffusion);  // the run's config and checkpoints carry the betas themselves
    validate(cfg_);
  });
  classifier_ = cfg_.model.type == ModelType::Classifier;
  int threads = static_cast<int>(cfg_.train.threads);
  // Ranks on one machine share its cores, as torchrun's OMP_NUM_THREADS=1 default intends.
  if (threads == 0 && env_.local_world_size > 1 && !std::getenv("OMP_NUM_THREADS"))
    threads = std::max(1, available_cores() / static_cast<int>(env_.local_world_size));
  threads_ = configure_threads(threads);
  precision_ = resolve_precision(cfg_.train.precision, device_);
  tty_ = stderr_is_terminal();
  log_ = make_logger(tty_ || !main_rank_, log_prefix());
  config_yaml_ = to_yaml(cfg_);
}

// Set-up has succeeded: from here on the run writes into its directory (the old run cleared
// for --overwrite, config.yaml, train.log with set-up's lines, metrics.jsonl continued).
void TrainLoop::commit_run_dir() {
  std::string log_path = main_rank_ ? summary_.log : "";
  if (!main_rank_ && cfg_.train.dist_rank_logs) {
    fs::create_directories(req_.run_dir);  // another node's filesystem may not have it yet
    log_path = (fs::path(req_.run_dir) / fmt::format("rank_{}.log", rank_)).string();
  }
  if (main_rank_) {
    if (req_.resume_from.empty() && req_.overwrite) clear_old_run(req_.run_dir);
    write_file_atomic(summary_.config,
                      fmt::format("# world_size {}, global batch {} = {} ranks x batch_size {} x grad_accum {}\n{}", W_,
                                  W_ * cfg_.train.batch_size * cfg_.train.grad_accum, W_, cfg_.train.batch_size,
                                  cfg_.train.grad_accum, config_yaml_));
  }
  open_log_file(*log_, log_path, log_prefix());
  committed_ = true;
  if (main_rank_) {
    if (ckpt_) set_aside_later_steps(req_.run_dir, step_, *log_);
    if (ckpt_) truncate_metrics(summary_.metrics, step_);
    else if (fs::exists(summary_.metrics)) fs::remove(summary_.metrics);
    metrics_.open(summary_.metrics, std::ios::app);
  }
  ckpt_.reset();  // release the archive's memory
}

// A set-up that failed leaves no directory it created (they are empty: nothing was written).
void TrainLoop::remove_created_dirs() {
  std::error_code ec;
  for (const auto& p : created_dirs_) fs::remove(p, ec);
}

void TrainLoop::build_data() {
  torch::manual_seed(cfg_.train.seed);
  on_every_rank(*pg_, "loading the data", [&] {
    dataset_ = make_dataset(cfg_.data, cfg_.train.seed);
    shape_ = data_shape(*dataset_, cfg_.data);
    if (classifier_) {
      // A noisy-image classifier learns the labels: every example needs one inside its logits.
      if (dataset_->num_classes() == 0)
        throw UsageError("model.type classifier learns class labels, but the data (" + dataset_->describe() +
                         ") has none");
      if (cfg_.model.num_classes < dataset_->num_classes())
        throw UsageError(fmt::format("model.num_classes is {}, but the dataset has {} classes", cfg_.model.num_classes,
                                     dataset_->num_classes()));
    }
    if (cfg_.model.class_cond) {
      // A label outside the embedding would fail mid-run (a device assert on CUDA): refuse it now.
      if (dataset_->num_classes() == 0)
        throw UsageError("model.class_cond: true, but the data (" + dataset_->describe() + ") has no class labels");
      if (cfg_.model.num_classes > 0 && cfg_.model.num_classes < dataset_->num_classes())
        throw UsageError(fmt::format("model.num_classes is {}, but the dataset has {} classes", cfg_.model.num_classes,
                                     dataset_->num_classes()));
    }
    if (ckpt_ && ckpt_->meta().data.shape != shape_.shape)
      throw UsageError("checkpoint '" + ckpt_->path() + "' was trained on data of another shape than data.* gives now");
    data_fingerprint_ = dataset_->fingerprint();
    if (ckpt_) check_same_data(ckpt_->meta().data_fingerprint);
    auto lo = loader_options(cfg_.data, cfg_.train.batch_size, cfg_.train.seed, rank_, W_);
    lo.pin_memory = device_.is_cuda();
    loader_ = std::make_unique<DataLoader>(dataset_, lo, LoaderPosition{0, 0});
  });
}

void TrainLoop::check_same_data(const std::string& then) {
  if (then.empty() || data_fingerprint_.empty() || then == data_fingerprint_) return;
  const auto what = fmt::format(
      "data.path '{}': the data is not the data checkpoint '{}' was trained on "
      "(fingerprint {} now, {} in the checkpoint)",
      cfg_.data.path, ckpt_->path(), data_fingerprint_, then);
  if (!req_.allow_data_change)
    throw UsageError(what +
                     "; resuming would continue its data order over other examples (pass "
                     "--allow-data-change to resume anyway)");
  log_->warn("{}; resuming on it (--allow-data-change)", what);
}

void TrainLoop::build_model() {
  model_ = make_model(cfg_, shape_);
  ema_model_ = make_model(cfg_, shape_);
  if (ckpt_) {
    model_->to(torch::kCPU);
    ckpt_->load_weights(*model_, false);
  }
  model_->to(device_);
  ema_model_->to(device_);
  apply_memory_format(*model_, cfg_, shape_);
  apply_memory_format(*ema_model_, cfg_, shape_);
  ema_ = std::make_unique<Ema>(model_, ema_model_, cfg_.train.ema_decay, cfg_.train.ema_warmup);
  if (ckpt_ && ckpt_->has_ema()) ckpt_->load_weights(*ema_model_, true);
  ema_model_->eval();
  diffusion_.emplace(make_diffusion(cfg_, model_.get()));
  gamma_ = find_gamma_schedule(*model_);
  vdm_ = vdm_options(cfg_.diffusion);
  optimizer_ = std::make_unique<torch::optim::AdamW>(model_->parameters(),
                                                     torch::optim::AdamWOptions(cfg_.train.lr)
                                                         .betas({cfg_.train.adam_beta1, cfg_.train.adam_beta2})
                                                         .eps(cfg_.train.adam_eps)
                                                         .weight_decay(cfg_.train.weight_decay));
  tsampler_ = make_timestep_sampler(cfg_.diffusion);
  loss_scale_ = std::make_unique<DynamicLossScale>(precision_ == "fp16");
  lrs_ = std::make_unique<LrSchedule>(
      LrSchedule{cfg_.train.lr, cfg_.train.warmup_steps, cfg_.train.lr_schedule, cfg_.train.min_lr, cfg_.train.steps});
  loss_cfg_ = LossConfig{cfg_.diffusion.loss, cfg_.diffusion.hybrid_lambda, cfg_.diffusion.loss_weighting,
                         cfg_.diffusion.min_snr_gamma};
  if (W_ > 1) grad_sync_ = std::make_unique<GradientSync>(*pg_, model_->parameters(), cfg_.train.dist_bucket_mb << 20);
}

// The data position of a checkpoint written by another number of ranks: the epoch's first
// offset * W_old positions were consumed; W ranks continue at the largest offset that re-reads
// none of them twice... except the remainder, which is re-seen (logged).
LoaderPosition map_position(const CheckpointMeta& m, int64_t W, spdlog::logger& log) {
  if (m.world_size == W) return {m.data_epoch, m.data_offset};
  const int64_t consumed = m.data_offset * m.world_size;
  const LoaderPosition p{m.data_epoch, consumed / W};
  log.warn(
      "the checkpoint was written by {} rank(s), this run has {}: {} examples of epoch {} were seen; "
      "continuing at offset {} per rank ({} of them seen again)",
      m.world_size, W, consumed, m.data_epoch, p.offset, consumed - p.offset * W);
  return p;
}

void TrainLoop::restore() {
  if (ckpt_) {
    const auto& m = ckpt_->meta();
    ckpt_->load_optimizer(*optimizer_);
    step_ = m.step;
    if (m.cpu_rng_state.defined()) cpu_gen_.set_state(m.cpu_rng_state);  // shares the default's state
    if (device_.is_cuda() && m.device_rng_state.defined()) {
      at::Generator g = at::globalContext().defaultGenerator(device_);
      g.set_state(m.device_rng_state);
    }
    if (m.timestep_sampler_state.defined())
      tsampler_->load_state(m.timestep_sampler_state, "checkpoint '" + ckpt_->path() + "'");
    loss_scale_->restore(m.loss_scale, m.loss_scale_good_steps);  // only when fp16 then and now
    prior_elapsed_ = m.elapsed_seconds;
    loader_->seek(map_position(m, W_, *log_));
    log_->info("resumed from {} at step {}", ckpt_->path(), step_);
  }
}

// Every tensor that must be equal on all ranks: weights, EMA, optimizer moments.
std::vector<torch::Tensor> TrainLoop::replicated_state() {
  auto v = module_tensors(*model_);
  for (auto& t : module_tensors(*ema_model_)) v.push_back(t);
  for (auto& t : adamw_moments(*optimizer_, model_->parameters())) v.push_back(t);
  return v;
}

// Rank 0's weights, EMA and optimizer moments everywhere (a fresh run's initialisation, or the
// restored state), then a check that the rest of the state (step, RNG, sampler) agrees.
void TrainLoop::broadcast_state() {
  if (W_ == 1) return;
  torch::NoGradGuard no_grad;
  for (auto& t : replicated_state()) pg_->broadcast(t, 0, "initial state");
  verify_replicas("after set-up");
}

void TrainLoop::verify_replicas(const char* when) {
  if (W_ == 1) return;
  auto state = replicated_state();
  state.push_back(cpu_gen_.get_state());
  state.push_back(tsampler_->state());
  state.push_back(torch::tensor({step_, loader_->position().epoch, loader_->position().offset}));
  const auto h = static_cast<int64_t>(tensors_fingerprint(state));
  const auto all = pg_->all_gather(torch::tensor({h}, torch::kInt64), "state fingerprints");
  std::vector<std::string> differ;
  for (int64_t r = 1; r < W_; ++r)
    if (all[r][0].item<int64_t>() != all[0][0].item<int64_t>()) differ.push_back(std::to_string(r));
  if (!differ.empty())
    throw std::runtime_error(
        fmt::format("step {}: the training state of rank(s) {} differs from rank 0's {} "
                    "(weights, EMA, optimizer, RNG or data position)",
                    step_, join(differ), when));
}

bool TrainLoop::stop_agreed() {
  if (W_ == 1) agreed_signal_ = g_stop_signal.load();
  return agreed_signal_ != 0 || (req_.stop_after_step > 0 && step_ >= req_.stop_after_step);
}

StepDraw TrainLoop::draw_step(const std::vector<Batch>& micro_batches) {
  int64_t local = 0;
  for (const auto& b : micro_batches) local += b.x.size(0);
  const int64_t n = local * W_;
  // Everything random about the step except dropout is drawn for the whole step at once: the
  // timesteps, then the noise, then the label drops. K micro-batches of B on W ranks then use
  // the random streams exactly as one batch of W*K*B does
  // (Train.GradAccumulationEqualsOneBatchOfTheSameExamples, Dist.*).
  StepDraw d;
  d.global = tsampler_->sample(n, device_, cpu_gen_);  // drawn on the CPU, copied without a sync
  auto noise_shape = micro_batches.front().x.sizes().vec();
  noise_shape[0] = n;
  auto noise = torch::randn(noise_shape, torch::TensorOptions().device(device_));
  auto mine = [&](const torch::Tensor& t) { return t.slice(0, rank_, n, W_); };
  d.t = mine(d.global.t);
  d.weights = mine(d.global.weights);
  if (d.global.sigma.defined()) {
    d.sigma = mine(d.global.sigma);
    d.step = mine(d.global.step);
  }
  d.noise = mine(noise);
  if (d.global.time.defined()) {
    d.time = mine(d.global.time);
    d.noise0 = mine(torch::randn(noise_shape, torch::TensorOptions().device(device_)));
  }
  if (model_->class_conditional() && cfg_.model.p_uncond > 0)
    d.drop = mine(draw_label_drops(n, cfg_.model.p_uncond, device_));
  return d;
}

NoiseLevel TrainLoop::noise_level(const StepDraw& d, int64_t first, int64_t B, const torch::Tensor& x0) const {
  if (!d.sigma.defined()) return diffusion_->level(d.t.narrow(0, first, B), x0);
  auto shape = std::vector<int64_t>(static_cast<size_t>(x0.dim()), 1);
  shape[0] = B;
  const auto n = noise_level_at_sigma(d.sigma.narrow(0, first, B).reshape(shape));
  return {n.a.to(x0.scalar_type()), n.s.to(x0.scalar_type())};
}

// The losses on the discrete schedule (or EDM's continuous sigma): x_t, the network, the loss.
TrainingLoss TrainLoop::discrete_losses(const StepDraw& d, int64_t first, const torch::Tensor& x0,
                                        const torch::Tensor& low_res, const torch::Tensor& y, const Batch& batch) {
  const int64_t B = x0.size(0);
  const auto t = d.t.narrow(0, first, B);
  auto noise = d.noise.narrow(0, first, B).contiguous(x0.suggest_memory_format());
  const auto level = noise_level(d, first, B, x0);
  auto x_t = level.a * x0 + level.s * noise;  // q_sample (Luo eq. 69)
  const auto net_t = d.step.defined() ? d.step.narrow(0, first, B) : t.to(torch::kFloat32);
  torch::Tensor net_out;
  {
    AutocastGuard ac(precision_, device_);
    net_out = model_->forward(network_input(*model_, diffusion_->network_input(x_t, level), low_res), net_t, y);
  }
  net_out = net_out.to(torch::kFloat32);
  if (classifier_) {
    auto out = classifier_losses(net_out, batch.y.to(device_));
    // A classifier's first statistic is its accuracy on the noisy batch (logged as "accuracy").
    out.mse = net_out.detach().argmax(1).eq(batch.y.to(device_)).to(torch::kFloat);
    return out;
  }
  return d.sigma.defined() ? mse_loss(*diffusion_, loss_cfg_, net_out, x0, noise, level)
                           : training_losses(*diffusion_, loss_cfg_, net_out, x0, x_t, t, noise);
}

// The variational bound on the gamma schedule (vdm.h), the network called as in the other losses.
TrainingLoss TrainLoop::vdm_losses(const StepDraw& d, int64_t first, const torch::Tensor& x0,
                                   const torch::Tensor& low_res, const torch::Tensor& y) {
  const int64_t B = x0.size(0);
  const auto like = [&](const torch::Tensor& n) {
    return n.narrow(0, first, B).contiguous(x0.suggest_memory_format());
  };
  auto net = [&](const torch::Tensor& input, const torch::Tensor& gamma) {
    AutocastGuard ac(precision_, device_);
    return model_->forward(network_input(*model_, input, low_res), gamma.to(torch::kFloat32), y).to(torch::kFloat32);
  };
  const auto terms = vdm_loss(*gamma_, net, x0, d.time.narrow(0, first, B), like(d.noise), like(d.noise0), vdm_);
  TrainingLoss out;
  out.loss = terms.total.to(torch::kFloat32);
  out.mse = terms.eps_mse.to(torch::kFloat32);
  out.vb = terms.total.detach().to(torch::kFloat32);
  return out;
}

void TrainLoop::forward_backward(const std::vector<Batch>& micro_batches, const StepDraw& d, StepResult& out) {
  const auto opts = torch::TensorOptions().device(device_);
  torch::Tensor loss_sum = torch::zeros({}, opts), mse_sum = torch::zeros({}, opts), vb_sum = torch::zeros({}, opts);
  std::vector<torch::Tensor> losses_seen;
  const double K = static_cast<double>(cfg_.train.grad_accum);
  int64_t first = 0;
  for (size_t micro = 0; micro < micro_batches.size(); ++micro) {
    const auto& batch = micro_batches[micro];
    auto x0 = batch.x.to(device_, /*non_blocking=*/true);
    if (cfg_.train.channels_last && x0.dim() == 4) x0 = x0.contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t B = x0.size(0);
    torch::Tensor y;
    if (model_->class_conditional()) {
      y = batch.y.to(device_, /*non_blocking=*/true);  // pinned by the loader on CUDA
      // Classifier-free guidance training: replace labels by the null label with prob p_uncond.
      if (d.drop.defined()) y = drop_labels(y, d.drop.narrow(0, first, B), model_->null_label());
    }
    // A super-resolution model learns p(x_0 | x_0 averaged down), as guided-diffusion's load_superres_data.
    const auto low_res = model_->low_res_size() > 0 ? downsample_area(x0, model_->low_res_size()) : torch::Tensor();
    if (low_res.defined() && !grid_low_res_.defined()) grid_low_res_ = low_res.detach().to(torch::kCPU, torch::kFloat);
    const auto losses =
        gamma_ ? vdm_losses(d, first, x0, low_res, y) : discrete_losses(d, first, x0, low_res, y, batch);
    auto loss = (losses.loss * d.weights.narrow(0, first, B)).mean() / K;
    if (grad_sync_ && micro + 1 == micro_batches.size()) grad_sync_->arm();  // gradients sync once per step
    loss_scale_->apply(loss).backward();
    loss_sum += loss.detach();
    if (losses.mse.defined()) mse_sum += losses.mse.detach().mean() / K;
    if (losses.vb.defined()) vb_sum += losses.vb.detach().mean() / K;
    losses_seen.push_back(losses.loss.detach());
    first += B;
    images_total_ += B * W_;
    win_->images += B * W_;
  }
  if (grad_sync_) {
    grad_sync_->finish();
    comm_wait_seconds_ += grad_sync_->last_wait_seconds();
  }
  out.parts = torch::stack({loss_sum, mse_sum, vb_sum}).to(torch::kFloat64);
  out.global_t = d.global.t;
  out.global_losses = torch::cat(losses_seen);
}

// Means over all ranks' examples and one stop decision, in one all-reduce; per-example losses
// gathered into global order for the timestep sampler and the quarter log. Then one host sync.
void TrainLoop::reduce_step(StepResult& r, const torch::Tensor& clipped) {
  auto stats = r.parts;  // [3] loss, mse, vb
  if (W_ > 1) {
    // Sums over ranks: the three means, how many ranks saw a stop signal, and which signal.
    const int sig = g_stop_signal.load();
    auto flags = torch::tensor({sig != 0 ? 1.0 : 0.0, static_cast<double>(sig)}, stats.options());
    stats = torch::cat({stats, flags});
    pg_->all_reduce_sum(stats, "step statistics");
    stats.narrow(0, 0, 3).div_(static_cast<double>(W_));
    // Per-example losses of every rank, in global order (rank r's j-th is global j * W + r).
    r.global_losses = pg_->all_gather(r.global_losses, "per-example losses").transpose(0, 1).reshape({-1});
  }
  const auto host = torch::cat({stats, clipped.to(stats.device(), torch::kFloat64).reshape({1})}).cpu();
  const auto h = host.accessor<double, 1>();
  r.loss = h[0];
  r.grad_norm = h[host.size(0) - 1];
  r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  r.parts = stats.narrow(0, 1, 2);
  if (W_ > 1 && h[3] > 0) {
    const int own = g_stop_signal.load();
    agreed_signal_ = own != 0 ? own : static_cast<int>(std::lround(h[4] / h[3]));
  }
}

StepResult TrainLoop::run_step() {
  std::vector<Batch> micro_batches;
  for (int64_t micro = 0; micro < cfg_.train.grad_accum; ++micro) micro_batches.push_back(loader_->next());
  const auto draw = draw_step(micro_batches);
  StepResult r;
  forward_backward(micro_batches, draw, r);
  loss_scale_->unscale(model_->parameters());
  // The gradient norm before clipping (with grad_clip = 0 it is only measured), clipped on the
  // device; the gradients are the same on every rank after the all-reduce, so is the norm.
  const auto clipped = clip_grad_norm(model_->parameters(), cfg_.train.grad_clip);
  reduce_step(r, clipped);
  return r;
}

void TrainLoop::optimize(const StepResult& r, double lr) {
  if (!r.finite) {
    optimizer_->zero_grad();
    if (loss_scale_->enabled() && std::isfinite(r.loss) && loss_scale_->update(/*overflow=*/true)) {
      // fp16 overflow in the gradients: lower the scale and try the next batch (as GradScaler).
      log_->warn("step {}: gradient overflow in fp16, loss scale now {}", step_, loss_scale_->scale());
    } else if (cfg_.train.on_nonfinite == "skip") {
      ++summary_.skipped_steps;
      log_->warn("step {}: non-finite {} ({}), step skipped", step_, std::isfinite(r.loss) ? "gradient" : "loss",
                 std::isfinite(r.loss) ? r.grad_norm : r.loss);
    } else {
      // The last good checkpoint stays untouched: nothing is saved after a bad step.
      throw std::runtime_error(fmt::format(
          "step {}: non-finite {} ({}); stopping. The last good checkpoint is kept. Lower train.lr, "
          "check the data, or set train.on_nonfinite: skip",
          step_, std::isfinite(r.loss) ? "gradient norm" : "loss", std::isfinite(r.loss) ? r.grad_norm : r.loss));
    }
    return;
  }
  for (auto& group : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  optimizer_->step();
  optimizer_->zero_grad();
  ema_->update(step_);
  loss_scale_->update(/*overflow=*/false);
  tsampler_->update(r.global_t, r.global_losses);
  record_step(*win_, r.loss, r.grad_norm, r.parts, r.global_t, r.global_losses, diffusion_->num_timesteps());
}

void TrainLoop::log_window(double lr, bool last) {
  auto& win = *win_;
  if (win.steps == 0 || !(step_ % cfg_.train.log_every == 0 || last)) return;
  const double el = elapsed();
  const double wsec = std::chrono::duration<double>(std::chrono::steady_clock::now() - win.start).count();
  last_loss_ = win.loss / win.steps;
  const auto parts = win.parts.cpu();
  const auto qs = win.quarters.cpu();
  const double mse = parts[0].item<double>() / win.steps, vb = parts[1].item<double>() / win.steps;
  const double rate = win.images / std::max(wsec, 1e-9);
  if (main_rank_) {
    Json line;
    line["step"] = step_;
    line["loss"] = last_loss_;
    if (classifier_) {
      line["accuracy"] = mse;
    } else {
      line["mse"] = mse;
      line["vb"] = vb;
    }
    for (int k = 0; k < 4; ++k) {
      const double n = qs[1][k].item<double>();
      line[fmt::format("loss_q{}", k)] = n > 0 ? Json(qs[0][k].item<double>() / n) : Json(nullptr);
    }
    line["grad_norm"] = win.grad_norm / win.steps;
    line["lr"] = lr;
    line["images_per_sec"] = rate;
    line["elapsed"] = prior_elapsed_ + el;
    line["world_size"] = W_;
    line["global_batch"] = W_ * cfg_.train.batch_size * cfg_.train.grad_accum;
    if (W_ > 1) line["allreduce_wait_sec"] = comm_wait_seconds_ / std::max<int64_t>(win.steps, 1);
    metrics_ << json_line(line) << "\n";
    metrics_.flush();
  }
  log_->info("step {}/{} loss {:.5f}{} grad_norm {:.3f} lr {:.3g} {:.1f} img/s elapsed {}", step_, cfg_.train.steps,
             last_loss_, classifier_ ? fmt::format(" accuracy {:.3f}", mse) : "", win.grad_norm / win.steps, lr, rate,
             format_duration(prior_elapsed_ + el));
  win_.emplace(device_);
  comm_wait_seconds_ = 0.0;
}

void TrainLoop::checkpoint() {
  if (checkpointed_step_ == step_) return;  // this step is on disk already
  checkpointed_step_ = step_;
  verify_replicas("before the checkpoint");  // all ranks; rank 0 then writes for them all
  if (!main_rank_) return;
  CheckpointMeta meta;
  meta.step = step_;
  meta.config_yaml = config_yaml_;
  meta.data = shape_;
  const auto pos = loader_->position();
  meta.data_epoch = pos.epoch;
  meta.data_offset = pos.offset;
  meta.world_size = W_;
  meta.data_fingerprint = data_fingerprint_;
  meta.cpu_rng_state = cpu_gen_.get_state();
  if (device_.is_cuda()) meta.device_rng_state = at::globalContext().defaultGenerator(device_).get_state();
  meta.timestep_sampler_state = tsampler_->state();
  meta.loss_scale = loss_scale_->scale();
  meta.loss_scale_good_steps = loss_scale_->good_steps();
  meta.elapsed_seconds = prior_elapsed_ + elapsed();
  summary_.checkpoint =
      save_run_checkpoint(req_.run_dir, cfg_.train.keep_checkpoints, meta, *model_, ema_model_.get(), optimizer_.get());
  log_->info("step {}: checkpoint {}", step_, summary_.checkpoint);
}

void TrainLoop::sample_grid() {
  if (!main_rank_ || classifier_ || cfg_.train.sample_every <= 0 || cfg_.train.sample_num <= 0) return;
  GenerateRequest g;
  g.sample = with_sampler(cfg_.sample, "ddim");  // ddim's own eta, not one meant for sample.sampler
  g.sample.steps = std::min<int64_t>(cfg_.train.sample_steps, diffusion_->num_timesteps());
  g.sample.num = cfg_.train.sample_num;
  g.sample.spacing = "";
  g.sample.seed = cfg_.train.seed;  // the same noise every time, so grids are comparable
  g.sample.classifier = "";         // the grids show the model as it trains
  g.device = device_;
  g.low_res = grid_low_res_;  // a super-resolution model upsamples the run's first images
  if (ema_model_->low_res_size() > 0 && !g.low_res.defined()) return;
  // A learned gamma schedule is sampled on the EMA weights' own discrete view.
  const auto diffusion = gamma_ ? make_diffusion(cfg_, ema_model_.get()) : *diffusion_;
  auto images = generate(*ema_model_, diffusion, shape_, g);
  const auto path = (fs::path(req_.run_dir) / "samples" / fmt::format("step_{:08d}.png", step_)).string();
  fs::create_directories(fs::path(path).parent_path());
  // Images: a grid; 2-D points: a density picture.
  save_png(path, shape_.shape.size() == 3 ? make_grid(images.cpu()) : plot_points(images),
           {{"diffuse", "training sample grid"},
            {"step", std::to_string(step_)},
            {"sampler", "ddim"},
            {"steps", std::to_string(g.sample.steps)},
            {"seed", std::to_string(g.sample.seed)},
            {"weights", "ema"}});
  summary_.grid = path;
  log_->info("step {}: sample grid {}", step_, path);
  model_->train();
}

// An error that ends the run (a checkpoint that cannot be written, a non-finite step) goes to
// train.log as well; main() prints it on stderr, so it is not printed to the console twice.
TrainSummary TrainLoop::run() {
  try {
    return run_unlogged();
  } catch (const std::exception& e) {
    if (committed_) log_fatal(e.what());
    else remove_created_dirs();
    throw;
  }
}

void TrainLoop::log_fatal(const char* what) {
  if (!log_) return;                       // failed before the log was opened
  auto& console = *log_->sinks().front();  // make_logger puts the console first
  const auto level = console.level();
  console.set_level(spdlog::level::off);
  log_->error("{}", what);
  console.set_level(level);
}

TrainSummary TrainLoop::run_unlogged() {
  join_ranks();
  prepare_run_dir();
  build_data();
  build_model();
  restore();
  commit_run_dir();
  broadcast_state();
  if (W_ > 1) {
    // A signal during set-up stops every rank before the first step, or none.
    auto flag = torch::full({1}, static_cast<double>(g_stop_signal.load()), torch::kFloat64);
    pg_->all_reduce_max(flag, "stop flag");
    agreed_signal_ = static_cast<int>(flag.item<double>());
  }
  log_->info("diffuse train: {} parameters, data {} ({} examples), device {} ({}), {} threads, batch {} x {} accum{}",
             count_parameters(*model_), dataset_->describe(), dataset_->size(), device_.str(), precision_, threads_,
             cfg_.train.batch_size, cfg_.train.grad_accum,
             W_ > 1
                 ? fmt::format(" x {} ranks ({}, {} gradient buckets)", W_, pg_->backend(), grad_sync_->num_buckets())
                 : "");
  log_->info("run directory {}", req_.run_dir);

  summary_.start_step = step_;
  summary_.parameters = count_parameters(*model_);
  summary_.threads = threads_;
  summary_.device = device_.str();
  summary_.precision = precision_;
  const int64_t steady_from = step_ + req_.timing_warmup_steps;
  auto steady_t0 = std::chrono::steady_clock::now();
  int64_t steady_images = 0;
  ProgressBar bar("train", cfg_.train.steps, step_, tty_ && main_rank_);
  win_.emplace(device_);
  t0_ = std::chrono::steady_clock::now();
  model_->train();

  while (step_ < cfg_.train.steps && !stop_agreed()) {
    const auto r = run_step();
    ++step_;
    if (step_ == steady_from) steady_t0 = std::chrono::steady_clock::now();
    if (step_ > steady_from) steady_images += W_ * cfg_.train.batch_size * cfg_.train.grad_accum;
    const double lr = lrs_->at(step_);
    optimize(r, lr);
    const bool last = step_ == cfg_.train.steps;
    // A skipped step still counts for the periodic checkpoint and grid below; only the window
    // statistics leave it out.
    if (win_->steps > 0)
      bar.update(step_, fmt::format("loss {:.4f} {:.1f} img/s", win_->loss / win_->steps,
                                    static_cast<double>(images_total_) / std::max(elapsed(), 1e-9)));
    log_window(lr, last);
    if (cfg_.train.checkpoint_every > 0 && step_ % cfg_.train.checkpoint_every == 0 && !last) checkpoint();
    if (cfg_.train.sample_every > 0 && step_ % cfg_.train.sample_every == 0 && !last) sample_grid();
  }
  bar.finish();
  summary_.stop_signal = agreed_signal_;
  summary_.end_step = step_;
  summary_.seconds = elapsed();
  summary_.images_per_second = static_cast<double>(images_total_) / std::max(summary_.seconds, 1e-9);
  if (std::isnan(last_loss_) && win_->steps > 0) last_loss_ = win_->loss / win_->steps;
  summary_.final_loss = last_loss_;
  if (step_ > steady_from) {
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - steady_t0).count();
    summary_.steady_images_per_second = static_cast<double>(steady_images) / std::max(sec, 1e-9);
  }
  if (req_.save_final && (step_ > summary_.start_step || summary_.stop_signal)) {
    checkpoint();
    if (summary_.stop_signal) {
      log_->warn("stopped by signal {} at step {}; resume with --resume {}", summary_.stop_signal, step_, req_.run_dir);
    } else if (cfg_.train.sample_every > 0) {
      sample_grid();
    }
  }
  log_->flush();
  return summary_;
}

}  // namespace

void request_stop(int signal) noexcept { g_stop_signal.store(signal); }
void clear_stop_request() noexcept { g_stop_signal.store(0); }

TrainSummary train(const TrainRequest& request) { return TrainLoop(request).run(); }

}  // namespace diffuse
