#include "diffuse/eval/evaluator.h"

#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

#include <fmt/format.h>

#include "diffuse/data/file_bytes.h"
#include "diffuse/data/dataset.h"
#include "diffuse/data/image_folder.h"
#include "diffuse/data/toy2d.h"
#include "diffuse/dist/process_group.h"
#include "diffuse/error.h"
#include "diffuse/eval/bpd.h"
#include "diffuse/eval/fid.h"
#include "diffuse/eval/plot.h"
#include "diffuse/eval/precision_recall.h"
#include "diffuse/eval/random.h"
#include "diffuse/eval/toy_metrics.h"
#include "diffuse/factory.h"
#include "diffuse/gamma_schedule.h"
#include "diffuse/vdm.h"
#include "diffuse/generate.h"
#include "diffuse/image_io.h"
#include "diffuse/models/network.h"
#include "diffuse/models/super_res.h"
#include "diffuse/progress.h"
#include "diffuse/samplers/noise_source.h"
#include "json_text.h"

namespace fs = std::filesystem;

namespace diffuse {

std::vector<std::string> eval_metric_names() { return {"bpd", "bpd-mc", "fid", "kid", "precision", "recall", "toy"}; }

SweepEntry parse_sweep(const std::string& text) {
  const auto colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= text.size())
    throw UsageError("--sweep '" + text + "': expected SAMPLER:STEPS[,STEPS...], e.g. ddim:10,20,50");
  SweepEntry e{text.substr(0, colon), {}};
  std::stringstream ss(text.substr(colon + 1));
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t pos = 0;
      const long long v = std::stoll(item, &pos);
      if (pos != item.size() || v < 1) throw std::invalid_argument(item);
      e.steps.push_back(v);
    } catch (const std::exception&) {
      throw UsageError("--sweep '" + text + "': '" + item + "' is not a positive step count");
    }
  }
  return e;
}

namespace {

// Whether any metric asked for is measured in a feature network's space.
bool wants_features(const std::vector<std::string>& metrics) {
  for (const char* m : {"fid", "kid", "precision", "recall"})
    if (std::find(metrics.begin(), metrics.end(), m) != metrics.end()) return true;
  return false;
}

Series line(std::string label, std::vector<double> x, std::vector<double> y) {
  Series s;
  s.label = std::move(label);
  s.x = std::move(x);
  s.y = std::move(y);
  return s;
}

// An image folder measured against (or as) samples is read at the model's image shape.
int64_t folder_channels(const DataShape& shape) { return shape.shape.size() == 3 ? shape.shape[0] : 0; }
int64_t folder_size(const DataShape& shape) { return shape.shape.size() == 3 ? shape.shape[1] : 0; }

// The network the bound is of. A class-conditional network is evaluated with the null label:
// the unconditional model it also learned (p_uncond > 0), so the bound is of p(x), comparable
// across models. One that never learned it (an imported OpenAI model) has only p(x | y): it is
// evaluated with the held-out images' own labels, and the report says so.
bool bound_given_labels(const Network& net, const ModelConfig& model) {
  return net.class_conditional() && model.p_uncond <= 0.0;
}

// A super-resolution network's bound is of p(x | its low-resolution version, made from x0 as in training).
ModelFn bound_fn(Network& net, const torch::Tensor& labels, const torch::Tensor& x0) {
  const torch::Tensor low_res = net.low_res_size() > 0 ? downsample_area(x0, net.low_res_size()) : torch::Tensor();
  return [&net, labels, low_res](const torch::Tensor& x, const torch::Tensor& t) {
    return net.forward(network_input(net, x, low_res), t.to(torch::kFloat32), labels);
  };
}

struct Reporter {
  EvalReport report;
  void value(const std::string& k, double v) { report.values.emplace_back(k, v); }
  void file(const std::string& what, const std::string& path) { report.files.emplace_back(what, path); }
  void setting(const std::string& k, const std::string& v) { report.settings.emplace_back(k, v); }
};

// This rank's share of the samples for the sample-quality metrics (all of them on one rank).
GenerateResult generate_for_eval(Network& net, const GaussianDiffusion& diffusion, const EvalRequest& req,
                                 ProcessGroup& pg, const std::string& sampler, int64_t steps) {
  GenerateRequest g;
  g.sample = with_sampler(req.config.sample, sampler);
  g.sample.steps = steps;
  g.sample.num = req.config.eval.num_samples;
  g.sample.batch_size = req.config.eval.batch_size;
  g.sample.seed = req.seed;
  g.device = req.device;
  std::shared_ptr<Network> classifier;
  if (!g.sample.classifier.empty())
    classifier = load_guidance_classifier(g.sample.classifier, req.shape, diffusion, req.device);
  g.classifier = classifier.get();
  const auto share = rank_slice(g.sample.num, pg.rank(), pg.world_size());
  auto bar = ProgressBar::on_lead(fmt::format("sample {} x{}", sampler, steps), share.size(), pg.rank() == 0);
  g.on_batch = [&](int64_t done, int64_t) { bar.update(done); };
  auto r = generate_share(net, diffusion, req.shape, g, pg);
  bar.finish();
  return r;
}

// The noise of bits/dim batch b depends only on (seed, b), so the ranks may take any batches.
// (A CPU generator, seeded with 32 bits of the key, draws on the CPU and the noise moves to the
// data's device: the same noise on every device.)
constexpr uint64_t kBpdStream = 0x6270645f6c6f6f70ULL;    // "bpd_loop"
constexpr uint64_t kBpdMcStream = 0x6270645f6d635f5fULL;  // "bpd_mc__"
torch::Generator batch_generator(uint64_t seed, int64_t batch, uint64_t stream) {
  return at::detail::createCPUGenerator(NoiseSource::stream_key(seed, batch, stream));
}

// What every metric unit shares: the request, the ranks, the report and the output folder.
struct EvalContext {
  EvalContext(Network& net_, const GaussianDiffusion& diffusion_, const EvalRequest& req_, ProcessGroup& pg_)
      : net(net_),
        diffusion(diffusion_),
        req(req_),
        cfg(req_.config),
        ev(req_.config.eval),
        pg(pg_),
        R(pg_.rank()),
        W(pg_.world_size()),
        lead(pg_.rank() == 0) {}

  bool wants(const char* metric) const {
    return std::find(ev.metrics.begin(), ev.metrics.end(), metric) != ev.metrics.end();
  }
  bool images() const { return req.shape.shape.size() == 3; }
  // The path of an output file; rank 0 creates the folder at the first file, so a refused eval
  // leaves no folder.
  std::string out(const std::string& name) const {
    if (lead) fs::create_directories(req.out_dir);
    return (fs::path(req.out_dir) / name).string();
  }

  Network& net;
  const GaussianDiffusion& diffusion;
  const EvalRequest& req;
  const Config& cfg;
  const EvalConfig& ev;
  ProcessGroup& pg;
  const int64_t R, W;
  const bool lead;  // writes the files and shows progress
  Reporter rep;
};

// Refuses metric sets that cannot run on this model and data, before any work.
void check_request(const Network& net, const EvalRequest& req) {
  const auto& ev = req.config.eval;
  const auto names = eval_metric_names();
  for (const auto& m : ev.metrics)
    if (std::find(names.begin(), names.end(), m) == names.end()) throw_not_one_of("eval metric", m, names);
  auto wants = [&](const char* m) { return std::find(ev.metrics.begin(), ev.metrics.end(), m) != ev.metrics.end(); };
  const bool images = req.shape.shape.size() == 3;
  if (wants_features(ev.metrics) && !images)
    throw UsageError("fid/kid/precision/recall need image data; use the 'toy' metric for toy2d");
  if (wants("toy") && req.config.data.dataset != DatasetKind::Toy2d)
    throw UsageError("the 'toy' metric needs data.dataset: toy2d");
  const bool generates =
      ((wants_features(ev.metrics) || wants("toy")) && req.samples_dir.empty()) || !req.sweep.empty();
  if (generates && net.low_res_size() > 0)
    throw UsageError(
        "fid / kid / sweeps: a super-resolution model samples from low-resolution images; make them with "
        "`diffuse sample --low-res FILE` and measure the folder with `diffuse eval --samples DIR`");
}

// The held-out images of the bound, in batches of eval.batch_size. Batch b (images bB .. bB + B
// - 1, noise from (seed, b)) is rank b mod W's. Each round the ranks do one batch each and rank
// order is batch order, so the gathered results reach the accumulator in the order of a one-rank
// run, with the same bits.
class BoundBatches {
 public:
  explicit BoundBatches(EvalContext& c) : c_(c) {
    if (!c.images()) throw UsageError("bpd is defined for 8-bit image data; use the 'toy' metric for toy2d");
    DataConfig dc = c.cfg.data;
    dc.split = c.ev.split;
    dc.limit = 0;
    auto ds = make_dataset(dc, c.cfg.train.seed);
    given_labels_ = bound_given_labels(c.net, c.cfg.model);
    x_all_ = load_examples(*ds, c.ev.num_images, &y_all_);
    N_ = x_all_.size(0);
    B_ = c.ev.batch_size;
    c.rep.setting("decoder_cdf", to_string(c.ev.decoder_cdf));
    const std::string given_low_res =
        c.net.low_res_size() > 0 ? fmt::format(", given x averaged down to {0}x{0}", c.net.low_res_size()) : "";
    c.rep.setting(
        "bound",
        (given_labels_ ? "p(x | y) with the images' labels (model.p_uncond 0: no unconditional model)" : "p(x)") +
            given_low_res);
    if (given_labels_ && N_ > 0 && y_all_.min().item<int64_t>() < 0)
      throw UsageError(
          "bpd: this class-conditional model was trained without the null label (model.p_uncond 0, as "
          "OpenAI's are), so its bound is of p(x | y) and needs labelled images (data.class_labels: true "
          "and a labelled dataset, e.g. class subfolders)");
    c.rep.value("num_images", static_cast<double>(N_));
    c.rep.value("timesteps", static_cast<double>(c.diffusion.num_timesteps()));
  }

  int64_t size() const { return N_; }
  torch::Tensor x0(int64_t b) const { return x_all_.slice(0, b * B_, std::min(N_, (b + 1) * B_)).to(c_.req.device); }
  // Batch b's network: the null label, or batch b's own labels.
  ModelFn fn(int64_t b) const {
    return bound_fn(
        c_.net, given_labels_ ? y_all_.slice(0, b * B_, std::min(N_, (b + 1) * B_)).to(c_.req.device) : torch::Tensor(),
        x0(b));
  }
  // f(b, images in the round, images up to its end) per round; b = -1 when this rank has none.
  template <class F>
  void each_round(F&& f) const {
    const int64_t batches = (N_ + B_ - 1) / B_;
    auto images_before = [&](int64_t b) { return std::min(N_, b * B_); };
    for (int64_t first = 0; first < batches; first += c_.W) {
      const int64_t b = first + c_.R, end = images_before(std::min(batches, first + c_.W));
      f(b < batches ? b : -1, end - images_before(first), end);
    }
  }

 private:
  EvalContext& c_;
  bool given_labels_ = false;
  torch::Tensor x_all_, y_all_;
  int64_t N_ = 0, B_ = 1;
};

// The whole T-step bound (improved-diffusion's calc_bpd_loop), its terms per t as CSV, JSON and plots.
void exact_bound(EvalContext& c, const BoundBatches& batches) {
  const int64_t N = batches.size(), T = c.diffusion.num_timesteps();
  BpdAccumulator acc;
  ProgressBar bar("bpd", N * T, 0, c.lead && stderr_is_terminal());
  const bool plain_log = c.lead && !bar.enabled();
  int64_t done = 0;
  batches.each_round([&](int64_t b, int64_t round_images, int64_t images_after) {
    auto rows = torch::empty({0, 4 + 3 * T}, torch::kFloat64);
    if (b >= 0) {
      BpdOptions opts;
      opts.decoder_cdf = c.ev.decoder_cdf;
      int64_t k = 0;
      opts.progress = [&](int64_t) { bar.update(done + (++k) * round_images); };
      rows = bpd_rows(
          calc_bpd_loop(c.diffusion, batches.fn(b), batches.x0(b), batch_generator(c.req.seed, b, kBpdStream), opts));
    }
    acc.add_rows(all_gather_rows(c.pg, rows, "bpd terms"));
    done += round_images * T;
    if (plain_log) std::cerr << fmt::format("bpd: {}/{} images\n", images_after, N);
  });
  bar.finish();
  auto s = acc.summary();
  s.decoder_cdf = to_string(c.ev.decoder_cdf);
  c.rep.value("total_bpd", s.total_bpd);
  c.rep.value("total_bpd_std_error", s.total_bpd_std_error);
  c.rep.value("prior_bpd", s.prior_bpd);
  c.rep.value("decoder_bpd", s.decoder_bpd);
  c.rep.value("diffusion_bpd", s.diffusion_bpd);
  c.rep.file("per-t terms (CSV)", c.out("bpd_terms.csv"));
  c.rep.file("bound (JSON)", c.out("bpd.json"));
  c.rep.file("per-t terms (plot)", c.out("bpd_terms.png"));
  c.rep.file("per-t MSE (plot)", c.out("mse_terms.png"));
  if (!c.lead) return;
  write_bpd_terms_csv(c.out("bpd_terms.csv"), s);
  write_bpd_json(c.out("bpd.json"), s);
  std::vector<double> ts(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) ts[static_cast<size_t>(t)] = static_cast<double>(t);
  PlotOptions po;
  po.title = fmt::format("VLB terms, total {:.4f} bits/dim", s.total_bpd);
  po.x_label = "t";
  po.y_label = "bits/dim";
  po.log_y = true;
  save_png(c.out("bpd_terms.png"), plot_lines({line("L_t (bits/dim)", ts, s.vb_bpd)}, po));
  PlotOptions pm = po;
  pm.title = "denoising error per t";
  pm.y_label = "MSE";
  save_png(c.out("mse_terms.png"), plot_lines({line("eps MSE", ts, s.eps_mse), line("x0 MSE", ts, s.x0_mse)}, pm));
}

// The linear-in-gamma schedule between `gamma`'s ends: t uniform on it is gamma uniform.
std::shared_ptr<GammaSchedule> even_in_gamma(const GammaSchedule& gamma) {
  GammaSpec s = gamma.spec();
  s.kind = GammaKind::Linear;
  s.gamma_min = gamma.gamma0().item<double>();
  s.gamma_max = gamma.gamma1().item<double>();
  return std::make_shared<GammaSchedule>(s);
}

// A gamma-schedule model's continuous-time bound (vdm.h): eval.mc_timesteps draws per image
// (antithetic across the batch), one z_0 draw, with the standard error over images. The draws
// are uniform in gamma between the model's ends: the change of variables t -> gamma writes the
// diffusion loss as 1/2 int E||eps - eps_hat(z_gamma; gamma)||^2 d gamma, the same value for any
// schedule with those ends (the network sees gamma, not t), and uniform gamma keeps the
// estimate's variance independent of the schedule's shape, which a steep piece (the cosine
// kind's near t = 0) makes heavy-tailed. The batch loss variance is measured on the model's own
// schedule, the noise its training sees.
void continuous_bound(EvalContext& c, const BoundBatches& batches, const GammaSchedule& gamma) {
  auto vo = vdm_options(c.cfg.diffusion);
  vo.timesteps = 0;  // the continuous bound, whichever one the model trained on
  const auto even = even_in_gamma(gamma);
  const bool own_is_even = gamma_kind_shape(gamma.spec().kind) == GammaShape::Line;
  std::vector<torch::Tensor> rows;
  ProgressBar bar("bpd-mc", batches.size(), 0, c.lead && stderr_is_terminal());
  batches.each_round([&](int64_t b, int64_t, int64_t images_after) {
    auto mine = torch::empty({0, 5}, torch::kFloat64);
    if (b >= 0) {
      auto gen = batch_generator(c.req.seed, b, kBpdMcStream);
      const auto r = vdm_bound(*even, batches.fn(b), batches.x0(b), c.ev.mc_timesteps, vo, gen);
      const auto own = own_is_even ? r : vdm_bound(gamma, batches.fn(b), batches.x0(b), c.ev.mc_timesteps, vo, gen);
      // The spread of one batch's loss estimate over the draws, on every row of the batch.
      const auto spread = c.ev.mc_timesteps > 1 ? own.draw_means.var() : torch::full({}, NAN, torch::kFloat64);
      mine = torch::stack({r.per_image, r.prior, r.recon, r.diffusion, spread.expand_as(r.prior)}, 1)
                 .to(torch::kCPU, torch::kFloat64);
    }
    rows.push_back(all_gather_rows(c.pg, mine, "bpd-mc estimates"));
    bar.update(images_after);
  });
  bar.finish();
  const auto all = torch::cat(rows);
  const auto est = make_bpd_estimate(all.select(1, 0).contiguous(), c.ev.mc_timesteps);
  c.rep.setting("bpd_mc_bound",
                "continuous time (T -> infinity), gamma drawn uniformly between the model's ends, "
                "decoder " +
                    to_string(vo.decoder));
  c.rep.value("bpd_mc", est.mean);
  c.rep.value("bpd_mc_std_error", est.std_error);
  c.rep.value("bpd_mc_timesteps_per_image", static_cast<double>(c.ev.mc_timesteps));
  c.rep.value("bpd_mc_prior", all.select(1, 1).mean().item<double>());
  c.rep.value("bpd_mc_recon", all.select(1, 2).mean().item<double>());
  c.rep.value("bpd_mc_diffusion", all.select(1, 3).mean().item<double>());
  // Over the draws of t and noise, of L_diffusion's mean over one batch of eval.batch_size images
  // (bits/dim squared), averaged over batches (docs/vdm.md).
  c.rep.value("bpd_mc_batch_loss_variance", all.select(1, 4).mean().item<double>());
}

// log SNR(t) = -gamma(t) of the model's schedule beside the fixed kinds (linear in gamma, the
// cosine and linear-beta schedules' SNR) between the ends the model's config gives.
void write_snr_plot(EvalContext& c, const GammaSchedule& gamma) {
  c.rep.file("log SNR(t) (plot)", c.out("snr.png"));
  if (!c.lead) return;
  const int64_t n = 201;
  const auto t = torch::linspace(0.0, 1.0, n, torch::kFloat64);
  auto as_vector = [](const torch::Tensor& v) {
    const auto cv = v.contiguous();
    return std::vector<double>(cv.data_ptr<double>(), cv.data_ptr<double>() + cv.numel());
  };
  const auto ts = as_vector(t);
  std::vector<Series> lines;
  for (const auto& name : gamma_kind_names()) {
    const auto kind = parse_gamma_kind(name);
    if (gamma_kind_learned(kind)) continue;  // the fixed kinds: linear, cosine, linear-beta
    GammaSpec fixed = gamma.spec();
    fixed.kind = kind;
    if (fixed.gamma_max > gamma_kind_limit(kind)) continue;
    lines.push_back(line("fixed " + to_string(kind), ts, as_vector(-GammaSchedule(fixed).at(t).gamma)));
  }
  // Drawn last, over the others (a linear model's line lies on the fixed one).
  lines.push_back(line("this model (" + to_string(gamma.spec().kind) + ")", ts, as_vector(-gamma.at(t).gamma)));
  PlotOptions po;
  po.title = "log SNR(t)";
  po.x_label = "t";
  po.y_label = "log SNR";
  save_png(c.out("snr.png"), plot_lines(lines, po));
}

// The unbiased estimate from eval.mc_timesteps random t per image, with its standard error.
void monte_carlo_bound(EvalContext& c, const BoundBatches& batches) {
  if (const auto gamma = find_gamma_schedule(c.net)) return continuous_bound(c, batches, *gamma);
  std::vector<torch::Tensor> per_image;
  BpdMcOptions mo;
  mo.samples_per_image = c.ev.mc_timesteps;
  mo.decoder_cdf = c.ev.decoder_cdf;
  mo.probabilities = c.req.timestep_probabilities;
  ProgressBar bar("bpd-mc", batches.size(), 0, c.lead && stderr_is_terminal());
  batches.each_round([&](int64_t b, int64_t, int64_t images_after) {
    auto mine = torch::empty({0}, torch::kFloat64);
    if (b >= 0)
      mine =
          estimate_bpd_mc(c.diffusion, batches.fn(b), batches.x0(b), batch_generator(c.req.seed, b, kBpdMcStream), mo)
              .per_image.to(torch::kCPU, torch::kFloat64);
    per_image.push_back(all_gather_rows(c.pg, mine, "bpd-mc estimates"));
    bar.update(images_after);
  });
  bar.finish();
  auto est = make_bpd_estimate(torch::cat(per_image), c.ev.mc_timesteps);
  c.rep.value("bpd_mc", est.mean);
  c.rep.value("bpd_mc_std_error", est.std_error);
  c.rep.value("bpd_mc_timesteps_per_image", static_cast<double>(c.ev.mc_timesteps));
}

// Sample quality against the reference: the feature network, the reference statistics (cached
// in --reference-stats when asked) and the toy distances, for any set of samples.
class SampleQuality {
 public:
  explicit SampleQuality(EvalContext& c) : c_(c) {}

  // Opens the feature network and checks a --reference-stats cache against it and against the
  // reference asked for. Called before any sample is generated, so a mismatch costs nothing.
  void open() {
    if (extractor_) return;
    const auto& ev = c_.ev;
    if (ev.feature_extractor.empty())
      throw UsageError(
          "fid/kid/precision/recall need eval.feature_extractor (pytorch-fid's Inception weights, a classifier "
          "checkpoint from scripts/make-feature-net.sh, or a TorchScript network; see docs/fid.md)");
    FeatureExtractorOptions fo;
    fo.device = c_.req.device;
    extractor_ = std::make_unique<FeatureExtractor>(ev.feature_extractor, fo);
    extractor_id_ = feature_network_fingerprint(ev.feature_extractor);
    const auto& path = c_.req.reference_stats;
    if (path.empty() || !fs::exists(path)) return;
    cached_ = load_feature_stats(path);
    const std::string fix = "; delete it, or give --reference-stats another file, to compute fresh statistics";
    if (!cached_.extractor.empty() && cached_.extractor != extractor_id_)
      throw UsageError(
          fmt::format("reference statistics '{}' were computed with another feature network ({}) than "
                      "eval.feature_extractor '{}' ({}){}",
                      path, cached_.extractor, ev.feature_extractor, extractor_id_, fix));
    const auto source = reference_source();
    if (!cached_.reference.empty() && cached_.reference != source)
      throw UsageError(fmt::format("reference statistics '{}' describe {}, not {} as asked now{}", path,
                                   cached_.reference, source, fix));
    if (cached_.extractor.empty() && c_.lead)
      std::cerr << "note: reference statistics '" << path
                << "' do not record their feature network or images (an .npz or an older file); used as given\n";
  }

  // The metrics of the samples whose share `mine` is this rank's: gathered (toy) or measured
  // here and gathered (features), then computed on rank 0 (the others get no values).
  std::vector<std::pair<std::string, double>> measure(const torch::Tensor& mine, const std::string& prefix) {
    std::vector<std::pair<std::string, double>> q;
    torch::Tensor samples, feats;
    if (c_.wants("toy")) samples = all_gather_rows(c_.pg, mine, "samples");
    if (wants_features(c_.ev.metrics)) {
      ensure_reference(c_.wants("kid") || c_.wants("precision") || c_.wants("recall"));
      feats = gathered_features(mine, "sample features");
    }
    if (!c_.lead) return q;
    if (c_.wants("toy")) {
      auto truth = sample_toy(c_.cfg.data.toy, samples.size(0), c_.req.seed + 1);
      SlicedWassersteinOptions so;
      so.seed = c_.req.seed;
      q.emplace_back(prefix + "sliced_w2", sliced_wasserstein2(samples, truth, so));
      MmdOptions mo;
      mo.seed = c_.req.seed;
      q.emplace_back(prefix + "mmd2_rbf", mmd_rbf(samples, truth, mo).mmd2);
    }
    if (feats.defined()) {
      if (c_.wants("fid")) q.emplace_back(prefix + "fid", frechet_distance(feature_stats(feats), ref_stats_));
      if (c_.wants("kid")) {
        auto k = kid(feats, ref_feats_, 100, 1000, c_.req.seed);
        q.emplace_back(prefix + "kid", k.mean);
        q.emplace_back(prefix + "kid_std", k.std);
      }
      if (c_.wants("precision") || c_.wants("recall")) {
        const auto pr = precision_recall(equal_count_reference(feats.size(0)), feats);
        if (c_.wants("precision")) q.emplace_back(prefix + "precision", pr.precision);
        if (c_.wants("recall")) q.emplace_back(prefix + "recall", pr.recall);
      }
    }
    return q;
  }

  // Improved precision/recall's manifolds depend on their point counts: as many reference
  // features as samples, a seeded subset when there are more.
  torch::Tensor equal_count_reference(int64_t n) const {
    if (ref_feats_.size(0) <= n) return ref_feats_;
    std::mt19937_64 rng(c_.req.seed);
    return ref_feats_.index_select(0, random_subset(rng, ref_feats_.size(0), n, ref_feats_.device()));
  }

  // Images in the reference statistics (0 before any were computed or read).
  int64_t reference_count() const { return ref_stats_.n; }

 private:
  // What the reference statistics describe; a cache made from anything else is refused.
  std::string reference_source() const {
    const auto& ev = c_.ev;
    std::string shape;
    for (auto d : c_.req.shape.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    if (!ev.reference.empty())
      return fmt::format("images in {} at {}", fs::weakly_canonical(ev.reference).string(), shape);
    const auto& data = c_.cfg.data;
    return fmt::format("{} {} split of {} at {}", to_string(data.dataset), ev.split,
                       data.path.empty() ? std::string("(default path)") : fs::weakly_canonical(data.path).string(),
                       shape);
  }

  // Features [n, D], float64 on the CPU, of this rank's images, gathered from every rank in rank
  // order. A rank without images runs one blank image to learn D, so the rows it sends (none)
  // have the shape of the others'.
  torch::Tensor gathered_features(const torch::Tensor& x, const char* what) {
    auto one = x.sizes().vec();
    one[0] = 1;
    auto f =
        x.size(0) > 0 ? extractor_->features(x) : extractor_->features(torch::zeros(one, x.options())).slice(0, 0, 0);
    return all_gather_rows(c_.pg, f.to(torch::kCPU, torch::kFloat64).contiguous(), what);
  }

  void ensure_reference(bool need_features) {
    open();
    if (have_stats_ && (!need_features || ref_feats_.defined())) return;
    if (!need_features && cached_.mu.defined()) {
      ref_stats_ = cached_;
      have_stats_ = true;
      return;
    }
    const auto& ev = c_.ev;
    torch::Tensor x;  // every rank reads the reference and measures its rank_slice of it
    if (!ev.reference.empty()) {
      x = load_sample_folder(ev.reference, folder_channels(c_.req.shape), folder_size(c_.req.shape), c_.lead);
    } else {
      DataConfig dc = c_.cfg.data;
      dc.split = ev.split;
      dc.limit = 0;
      x = load_examples(*make_dataset(dc, c_.cfg.train.seed), 0);
    }
    const auto share = rank_slice(x.size(0), c_.R, c_.W);
    ref_feats_ = gathered_features(x.slice(0, share.begin, share.end), "reference features");
    have_stats_ = true;
    if (!c_.lead) return;  // statistics and metrics are rank 0's
    ref_stats_ = feature_stats(ref_feats_);
    ref_stats_.extractor = extractor_id_;
    ref_stats_.reference = reference_source();
    // An existing cache was checked above to describe this network and these images, so fresh
    // statistics over it lose nothing; one that records nothing (an .npz from pytorch-fid, say)
    // is the user's and is left alone.
    const auto& path = c_.req.reference_stats;
    if (!path.empty() && (!cached_.mu.defined() || !cached_.extractor.empty())) {
      save_feature_stats(ref_stats_, path);
      c_.rep.file("reference statistics", path);
    }
  }

  EvalContext& c_;
  std::unique_ptr<FeatureExtractor> extractor_;
  std::string extractor_id_;
  FeatureStats cached_;      // --reference-stats, when the file exists (checked against the network)
  bool have_stats_ = false;  // ref_stats_ holds the reference statistics
  FeatureStats ref_stats_;
  torch::Tensor ref_feats_;
};

// FID / KID / toy distances of --samples DIR, or of eval.num_samples samples generated here.
void sample_metrics(EvalContext& c, SampleQuality& quality) {
  torch::Tensor mine;  // this rank's share of the samples
  int64_t total = c.ev.num_samples;
  if (!c.req.samples_dir.empty()) {
    auto all = load_sample_folder(c.req.samples_dir, folder_channels(c.req.shape), folder_size(c.req.shape), c.lead);
    total = all.size(0);
    const auto share = rank_slice(total, c.R, c.W);
    mine = all.slice(0, share.begin, share.end);
  } else {
    auto r = generate_for_eval(c.net, c.diffusion, c.req, c.pg, c.cfg.sample.sampler, c.cfg.sample.steps);
    mine = r.samples;
    c.rep.value("sample_seconds", r.seconds);
  }
  c.rep.value("num_samples", static_cast<double>(total));
  for (auto& [k, v] : quality.measure(mine, "")) c.rep.value(k, v);
  if (quality.reference_count() > 0) c.rep.value("num_reference", static_cast<double>(quality.reference_count()));
}

// Samplers x step counts: quality against NFE and against time, as sweep.csv and two plots.
void sweep(EvalContext& c, SampleQuality& quality) {
  std::string csv = "sampler,steps,nfe_per_sample,seconds,samples_per_second";
  std::vector<std::string> metric_names;
  std::map<std::string, Series> curves, timed;  // quality against NFE, and against seconds per sample
  std::string main_metric;
  for (const auto& e : c.req.sweep) {
    for (auto steps : e.steps) {
      auto r = generate_for_eval(c.net, c.diffusion, c.req, c.pg, e.sampler, steps);
      auto q = quality.measure(r.samples, "");
      if (!c.lead) continue;
      if (metric_names.empty()) {
        for (auto& [k, v] : q) {
          metric_names.push_back(k);
          csv += "," + k;
        }
        csv += "\n";
        main_metric = metric_names.front();
      }
      const auto n = static_cast<double>(c.ev.num_samples);  // r.samples: this rank's share
      const double nfe_per_sample = static_cast<double>(r.nfe) / static_cast<double>(std::max<int64_t>(1, r.batches));
      csv += fmt::format("{},{},{},{},{}", e.sampler, steps, nfe_per_sample, r.seconds, n / r.seconds);
      for (auto& [k, v] : q) csv += fmt::format(",{}", v);
      csv += "\n";
      auto add_point = [&](std::map<std::string, Series>& plot, double x) {
        auto& s = plot[e.sampler];
        s.label = e.sampler;
        s.x.push_back(x);
        s.y.push_back(q.front().second);
        s.markers = true;
      };
      add_point(curves, nfe_per_sample);
      add_point(timed, r.seconds / std::max(1.0, n));
      std::cerr << fmt::format("sweep: {} {} steps: {} = {:.5g} ({:.1f}s)\n", e.sampler, steps, main_metric,
                               q.front().second, r.seconds);
    }
  }
  if (!c.lead) return;  // the others have no values
  write_file_atomic(c.out("sweep.csv"), csv);
  c.rep.file("sweep table", c.out("sweep.csv"));
  std::vector<Series> series;
  for (auto& [k, s] : curves) series.push_back(s);
  PlotOptions po;
  po.title = "sample quality vs network evaluations";
  po.x_label = "NFE per sample";
  po.y_label = main_metric;
  po.log_x = true;
  save_png(c.out("sweep.png"), plot_lines(series, po));
  c.rep.file("sweep plot (NFE)", c.out("sweep.png"));
  series.clear();
  for (auto& [k, s] : timed) series.push_back(s);
  po.title = "sample quality vs time";
  po.x_label = "seconds per sample";
  save_png(c.out("sweep_time.png"), plot_lines(series, po));
  c.rep.file("sweep plot (time)", c.out("sweep_time.png"));
}

// One JSON object with every number and setting, as eval.json (rank 0).
void write_json(EvalContext& c) {
  auto& report = c.rep.report;
  Json j;
  for (const auto& [k, v] : report.values) j[k] = json_number(v);
  for (const auto& [k, v] : report.settings) j[k] = v;
  report.json = json_line(j);
  write_file_atomic(c.out("eval.json"), report.json + "\n");
  c.rep.file("all numbers (JSON)", c.out("eval.json"));
}

}  // namespace

EvalReport evaluate(Network& net, const GaussianDiffusion& diffusion, const EvalRequest& req) {
  check_request(net, req);
  ProcessGroup solo;
  EvalContext c(net, diffusion, req, req.group ? *req.group : solo);
  if (c.lead) check_output_dir(req.out_dir, "the output directory (--out)");
  net.eval();
  torch::NoGradGuard no_grad;
  if (c.wants("bpd") || c.wants("bpd-mc")) {
    const BoundBatches batches(c);
    if (c.wants("bpd")) exact_bound(c, batches);
    if (c.wants("bpd-mc")) monte_carlo_bound(c, batches);
    if (const auto gamma = find_gamma_schedule(net)) write_snr_plot(c, *gamma);
  }
  SampleQuality quality(c);
  const bool measures_samples = wants_features(c.ev.metrics) || c.wants("toy");
  if (wants_features(c.ev.metrics)) quality.open();  // refuse a bad network or cache before sampling
  if (measures_samples) sample_metrics(c, quality);
  if (!req.sweep.empty()) {
    if (!measures_samples)
      throw UsageError("--sweep needs a sample-quality metric (fid, kid, precision, recall or toy) in --metrics");
    sweep(c, quality);
  }
  if (c.lead) write_json(c);
  return c.rep.report;
}

}  // namespace diffuse
