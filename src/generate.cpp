#include "diffuse/generate.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "diffuse/data/image_folder.h"
#include "diffuse/dist/process_group.h"
#include "diffuse/eval/npz.h"
#include "diffuse/error.h"
#include "diffuse/models/network.h"
#include "diffuse/models/super_res.h"
#include "diffuse/precision.h"
#include "diffuse/runtime.h"
#include "diffuse/samplers/classifier_guidance.h"
#include "diffuse/samplers/guidance.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/shape_string.h"
#include "diffuse/train/checkpoint.h"

namespace diffuse {

torch::Tensor labels_for(const SampleConfig& s, int64_t first, int64_t count, int64_t num_classes) {
  auto out = torch::empty({count}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t g = first + i;
    if (!s.labels.empty()) p[i] = s.labels[static_cast<size_t>(g % static_cast<int64_t>(s.labels.size()))];
    else p[i] = num_classes > 0 ? g % num_classes : -1;
  }
  return out;
}

SampleConfig with_sampler(SampleConfig s, const std::string& sampler) {
  if (sampler != s.sampler) s.eta = -1.0;
  s.sampler = sampler;
  return s;
}

namespace {

// The class count the labels range over: the model's, else a guiding classifier's (0: none).
int64_t label_classes(const Network& net, const Network* classifier) {
  if (net.class_conditional()) return net.num_classes();
  return classifier ? classifier->out_channels() : 0;
}

// A super-resolution model has its low-resolution images, [N, C, s, s]; other models have none.
void check_low_res(const Network& net, const DataShape& shape, const torch::Tensor& low_res) {
  const int64_t size = net.low_res_size();
  if (size == 0) {
    if (low_res.defined())
      throw UsageError("low-resolution images were given (--low-res), but the model is not a super-resolution model");
    return;
  }
  if (!low_res.defined())
    throw UsageError(
        fmt::format("the model is a super-resolution model: it needs the {}x{} images to upsample "
                    "(diffuse sample --low-res FILE)",
                    size, size));
  const int64_t channels = shape.shape.empty() ? 0 : shape.shape[0];
  if (low_res.dim() != 4 || low_res.size(0) < 1 || low_res.size(1) != channels || low_res.size(2) != size ||
      low_res.size(3) != size)
    throw UsageError(fmt::format("the low-resolution images are {}; the model upsamples images of {}x{}x{}",
                                 shape_string(low_res.sizes().vec()), channels, size, size));
}

// The checks on a request that need no sampling (every rank makes them, with work or without).
void check_request(Network& net, const SampleConfig& s, const Network* classifier) {
  if (s.num < 1) throw UsageError("sample.num must be >= 1");
  if (s.batch_size < 1) throw UsageError("sample.batch_size must be >= 1");
  const bool cond = net.class_conditional();
  const int64_t classes = label_classes(net, classifier);
  if (classes == 0 && !s.labels.empty())
    throw UsageError(
        "class labels were given (sample.labels, --label), but the model is not class-conditional "
        "and no classifier guides it");
  if (!cond && s.guidance_scale != 1.0)
    throw UsageError("sample.guidance_scale needs a class-conditional model (trained with model.class_cond)");
  if (cond && classifier && classifier->out_channels() != net.num_classes())
    throw UsageError("the classifier has " + std::to_string(classifier->out_channels()) + " classes, the model " +
                     std::to_string(net.num_classes()));
  for (auto l : s.labels)
    if (l < 0 || l >= classes)
      throw UsageError("class label " + std::to_string(l) + " is outside [0, " + std::to_string(classes - 1) + "]");
  if (!s.classifier.empty() && !classifier)
    throw std::invalid_argument("sample.classifier '" + s.classifier +
                                "' is set but not loaded (load_guidance_classifier)");
  find_sampler(s.sampler);  // unknown names fail before any work
}

}  // namespace

GenerateResult generate_samples(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                                const GenerateRequest& req) {
  const auto& s = req.sample;
  check_request(net, s, req.classifier);
  check_low_res(net, shape, req.low_res);
  const bool cond = net.class_conditional();
  const bool guided = cond && s.guidance_scale != 1.0;

  SamplerOptions opts;
  opts.steps = s.steps;
  opts.spacing = s.spacing;
  if (s.eta >= 0.0) opts.eta = s.eta;  // else the sampler's own default
  // Clipping / thresholding x0 to [-1, 1] is for images; toy points are standardised to unit
  // variance and would be cut off.
  const bool images = shape.shape.size() == 3;
  opts.clip_x0 = s.clip_x0 && images;
  opts.dynamic_threshold = images ? s.dynamic_threshold : 0.0;
  opts.sigmas = s.sigmas;
  opts.rho = s.rho;
  opts.s_churn = s.s_churn;
  opts.s_tmin = s.s_tmin;
  opts.s_tmax = s.s_tmax;
  opts.s_noise = s.s_noise;

  const bool was_training = net.is_training();
  net.eval();
  const bool learned = is_learned(diffusion.variance_type());
  // The network may run under autocast; the samplers' arithmetic stays in float32.
  const std::string precision = resolve_precision(s.precision, req.device);
  torch::Tensor low_res;  // the batch's, for a super-resolution model
  auto raw = [&net, &low_res, precision, device = req.device](const torch::Tensor& x, const torch::Tensor& t,
                                                              const torch::Tensor& y) {
    AutocastGuard ac(precision, device);
    return net.forward(network_input(net, x, low_res), t, y).to(torch::kFloat32);
  };
  LogitsFn logits;
  if (req.classifier) {
    logits = [cls = req.classifier, precision, device = req.device](const torch::Tensor& x, const torch::Tensor& t) {
      AutocastGuard ac(precision, device);
      return cls->forward(x, t).to(torch::kFloat32);
    };
  }
  GenerateResult result;
  result.labels = labels_for(s, req.first_index, s.num, label_classes(net, req.classifier));
  result.rows_per_evaluation = guided ? 2 : 1;
  std::vector<torch::Tensor> parts;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < s.num; done += s.batch_size) {
    const int64_t n = std::min(s.batch_size, s.num - done);
    const int64_t first = req.first_index + done;
    if (req.low_res.defined())
      low_res =
          req.low_res.index_select(0, torch::arange(first, first + n).remainder(req.low_res.size(0))).to(req.device);
    ModelFn fn;
    if (cond) {
      auto y = result.labels.slice(0, done, done + n).to(req.device);
      fn = guided ? classifier_free_guidance(raw, y, net.null_label(), s.guidance_scale, learned) : with_labels(raw, y);
    } else {
      fn = [&raw](const torch::Tensor& x, const torch::Tensor& t) { return raw(x, t, torch::Tensor()); };
    }
    GuidanceGradient guidance;
    if (logits)
      guidance = classifier_gradient(logits, result.labels.slice(0, done, done + n).to(req.device), s.classifier_scale);
    Denoiser denoiser(fn, diffusion, guidance);
    auto noise = NoiseSource::range(s.seed, first, n, shape.shape, req.device);
    if (req.on_step) opts.on_step = [&](const StepInfo& info) { req.on_step(info, first); };
    auto x = run_sampler(s.sampler, denoiser, noise, opts);
    result.nfe += denoiser.nfe();
    ++result.batches;
    parts.push_back(x.to(torch::kCPU, torch::kFloat32));
    if (req.on_batch) req.on_batch(done + n, s.num);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  result.samples = torch::cat(parts, 0);
  if (was_training) net.train();
  return result;
}

torch::Tensor load_sample_folder(const std::string& dir, int64_t channels, int64_t image_size, bool say) {
  ImageFolderOptions opt;
  opt.image.channels = channels;
  opt.image.image_size = image_size;
  opt.image.labels = false;
  opt.ignore_names = {"grid.png", "trajectory.png", "scatter.png"};  // what cmd_sample.cpp writes beside the samples
  ImageFolderDataset ds(dir, opt);
  if (say) std::cerr << "reading " << ds.describe() << "\n";  // stderr: stdout may be JSON
  return load_examples(ds, 0);
}

namespace {

LowResImages low_res_from_npz(const std::string& path, int64_t channels, int64_t size) {
  const auto arrays = read_npz(path);
  const auto images = arrays.find("arr_0");
  if (images == arrays.end()) throw UsageError("'" + path + "': no arr_0 (the images) in the .npz");
  const auto& x = images->second;
  if (x.scalar_type() != torch::kByte || x.dim() != 4 || x.size(0) < 1 || x.size(1) != size || x.size(2) != size ||
      x.size(3) != channels)
    throw UsageError(
        fmt::format("'{}': arr_0 is {} {}; expected uint8 [N, {}, {}, {}] (N images of {}x{}, {} "
                    "channels last, as image_sample.py saves them)",
                    path, std::string(c10::toString(x.scalar_type())), shape_string(x.sizes().vec()), size, size,
                    channels, size, size, channels));
  LowResImages r;
  r.images = x.permute({0, 3, 1, 2}).to(torch::kFloat).div(127.5).sub(1.0).contiguous();
  const auto labels = arrays.find("arr_1");
  if (labels != arrays.end()) {
    const auto& y = labels->second;
    if (y.is_floating_point() || y.dim() != 1 || y.size(0) != x.size(0))
      throw UsageError(fmt::format("'{}': arr_1 (the labels) is {} {}; expected {} integers", path,
                                   std::string(c10::toString(y.scalar_type())), shape_string(y.sizes().vec()),
                                   x.size(0)));
    const auto l = y.to(torch::kLong).contiguous();
    r.labels.assign(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
  }
  return r;
}

}  // namespace

LowResImages load_low_res_images(const std::string& path, int64_t channels, int64_t size) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) {
    if (!is_npz_file(path))
      throw UsageError("--low-res '" + path + "': expected an image folder or an .npz of images (arr_0)");
    return low_res_from_npz(path, channels, size);
  }
  LowResImages r;
  r.images = load_sample_folder(path, channels, 0, false);
  if (r.images.size(2) != size || r.images.size(3) != size)
    throw UsageError(fmt::format("--low-res '{}': the images are {}x{}; the model upsamples {}x{} images", path,
                                 r.images.size(3), r.images.size(2), size, size));
  return r;
}

std::shared_ptr<Network> load_guidance_classifier(const std::string& path, const DataShape& shape,
                                                  const GaussianDiffusion& diffusion, const torch::Device& device) {
  CheckpointReader reader(path);
  const Config cfg = parse_config(reader.meta().config_yaml, path);
  if (cfg.model.type != ModelType::Classifier)
    throw UsageError("'" + path + "' is a " + to_string(cfg.model.type) +
                     " checkpoint, not a noisy-image classifier (diffuse import --classifier makes one)");
  if (reader.meta().data.shape != shape.shape)
    throw UsageError(fmt::format("'{}' classifies images of {}, the model makes {}", path,
                                 fmt::join(reader.meta().data.shape, "x"), fmt::join(shape.shape, "x")));
  // The classifier reads t in the model's units on the model's noisy images: the schedules must agree.
  const auto theirs = make_diffusion(cfg);
  const auto& a = theirs.schedule().alpha_bar();
  const auto& b = diffusion.schedule().alpha_bar();
  bool same = a.size() == b.size();
  for (size_t i = 0; same && i < a.size(); ++i) same = std::abs(a[i] - b[i]) <= 1e-12 * std::max(1.0, std::abs(b[i]));
  if (!same)
    throw UsageError(
        fmt::format("'{}' was trained on a {}-step {} schedule; the model's ({} steps) differs, so the "
                    "classifier's t would not match the model's noise levels",
                    path, cfg.diffusion.timesteps, to_string(cfg.diffusion.schedule), b.size()));
  auto net = load_network(reader, cfg, /*prefer_ema=*/false, device).net;
  for (auto& p : net->parameters()) p.requires_grad_(false);
  return net;
}

GenerateResult generate_share(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                              const GenerateRequest& req, ProcessGroup& group) {
  const auto t0 = std::chrono::steady_clock::now();
  check_request(net, req.sample, req.classifier);
  check_low_res(net, shape, req.low_res);
  const auto share = rank_slice(req.sample.num, group.rank(), group.world_size());
  GenerateResult r;
  if (share.size() > 0) {
    GenerateRequest mine = req;
    mine.first_index = req.first_index + share.begin;
    mine.sample.num = share.size();
    r = generate_samples(net, diffusion, shape, mine);
  } else {
    std::vector<int64_t> sizes{0};
    sizes.insert(sizes.end(), shape.shape.begin(), shape.shape.end());
    r.samples = torch::empty(sizes, torch::kFloat32);
    r.labels = torch::empty({0}, torch::kLong);
  }
  if (group.distributed()) {
    auto counts = torch::tensor({r.nfe, r.batches}, torch::kLong);
    group.all_reduce_sum(counts, "network evaluations");
    r.nfe = counts[0].item<int64_t>();
    r.batches = counts[1].item<int64_t>();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return r;
}

GenerateResult generate_samples(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                                const GenerateRequest& req, ProcessGroup& group) {
  if (!group.distributed()) return generate_samples(net, diffusion, shape, req);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = generate_share(net, diffusion, shape, req, group);
  r.samples = all_gather_rows(group, r.samples, "generated samples");
  r.labels = all_gather_rows(group, r.labels, "sample labels");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace diffuse
