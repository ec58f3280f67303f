#include "diffuse/eval/fid.h"

#include <fmt/format.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>
#include <random>

#include "diffuse/config.h"
#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/safetensors.h"
#include "diffuse/hash.h"
#include "diffuse/eval/fid_inception.h"
#include "diffuse/eval/npz.h"
#include "diffuse/torch_save.h"
#include "diffuse/eval/random.h"
#include "diffuse/models/encoder_unet.h"
#include "diffuse/train/checkpoint.h"

namespace diffuse {

// --- FeatureExtractor -------------------------------------------------------------------------

struct FeatureExtractor::Impl {
  torch::jit::Module module;                  // a TorchScript feature network, or
  std::unique_ptr<FidInceptionV3> inception;  // pytorch-fid's weights in our InceptionV3, or
  std::shared_ptr<EncoderUNet> classifier;    // a classifier diffuse trained (its pooled features at t = 0)
};

namespace {

// A safetensors file (ours: diffuse's checkpoints) opens with its header length and then '{'.
bool looks_like_safetensors(const std::string& bytes) { return bytes.size() > 9 && bytes[8] == '{'; }

// A diffuse checkpoint of model.type classifier, as a feature network at its own image size and
// channel count; its EMA weights when it has them.
std::shared_ptr<EncoderUNet> open_classifier(const std::string& path, const torch::Device& device) {
  CheckpointReader reader(path);
  const Config cfg = parse_config(reader.meta().config_yaml, path);
  if (cfg.model.type != ModelType::Classifier)
    throw UsageError(
        fmt::format("feature extractor '{}' is a diffuse checkpoint of model.type {}; a feature network "
                    "must be a classifier (model.type classifier, e.g. scripts/make-feature-net.sh)",
                    path, to_string(cfg.model.type)));
  auto net = std::dynamic_pointer_cast<EncoderUNet>(load_network(reader, cfg, /*prefer_ema=*/true, device).net);
  if (!net) throw std::logic_error("a model.type classifier checkpoint did not build an EncoderUNet");
  return net;
}

}  // namespace

FeatureExtractor::FeatureExtractor(const std::string& path, FeatureExtractorOptions opts)
    : impl_(std::make_unique<Impl>()), path_(path), opts_(opts) {
  if (opts_.image_size < 0) throw UsageError(fmt::format("feature extractor: image size {} < 0", opts_.image_size));
  if (opts_.batch_size < 1) throw UsageError(fmt::format("feature extractor: batch size {} < 1", opts_.batch_size));
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw UsageError(
        fmt::format("feature extractor '{}' does not exist or is not a file (expected pytorch-fid's "
                    "Inception weights, a diffuse classifier checkpoint or a TorchScript module; see docs/fid.md)",
                    path));
  const std::string bytes = read_file_bytes(path);
  if (looks_like_safetensors(bytes)) {
    impl_->classifier = open_classifier(path, opts_.device);
    // It sees images as it was trained: its own size and channels, no resizing to 299.
    opts_.image_size = impl_->classifier->options().image_size;
    return;
  }
  if (looks_like_torch_save(bytes)) {
    impl_->inception = std::make_unique<FidInceptionV3>();
    impl_->inception->load(decode_torch_save(bytes, path), path);
    impl_->inception->to(opts_.device);
    return;
  }
  try {
    impl_->module = torch::jit::load(path, opts_.device);
  } catch (const c10::Error& e) {
    throw UsageError(
        fmt::format("feature extractor '{}' is neither a torch.save file of pytorch-fid's Inception "
                    "weights nor a TorchScript module that loads: {}",
                    path, e.what_without_backtrace()));
  }
  impl_->module.eval();
}

FeatureExtractor::~FeatureExtractor() = default;
FeatureExtractor::FeatureExtractor(FeatureExtractor&&) noexcept = default;
FeatureExtractor& FeatureExtractor::operator=(FeatureExtractor&&) noexcept = default;

torch::Tensor FeatureExtractor::prepare(const torch::Tensor& images) const {
  if (!images.defined() || images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3))
    throw std::invalid_argument(
        fmt::format("feature extractor: images must be [N, 1 or 3, H, W], got [{}]",
                    images.defined() ? fmt::format("{}", fmt::join(images.sizes(), ", ")) : ""));
  auto x = images.to(opts_.device, torch::kFloat32);
  if (opts_.quantize_8bit) x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0;
  const int64_t channels = impl_->classifier ? impl_->classifier->in_channels() : 3;
  if (x.size(1) == 1 && channels == 3) x = x.expand({x.size(0), 3, x.size(2), x.size(3)});
  if (x.size(1) != channels)
    throw UsageError(fmt::format("feature extractor '{}' takes {}-channel images, got {}", path_, channels, x.size(1)));
  const auto S = opts_.image_size;
  if (S > 0 && (x.size(2) != S || x.size(3) != S)) {
    namespace F = torch::nn::functional;
    x = F::interpolate(
        x, F::InterpolateFuncOptions().size(std::vector<int64_t>{S, S}).mode(torch::kBilinear).align_corners(false));
  }
  return x.contiguous();
}

torch::Tensor FeatureExtractor::features(const torch::Tensor& images) const {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  const int64_t N = images.size(0);
  for (int64_t i = 0; i < N; i += opts_.batch_size) {
    auto batch = prepare(images.narrow(0, i, std::min(opts_.batch_size, N - i)));
    if (impl_->inception) {
      out.push_back(impl_->inception->forward(batch));
      continue;
    }
    if (impl_->classifier) {
      out.push_back(impl_->classifier->features(batch, torch::zeros({batch.size(0)}, batch.options())));
      continue;
    }
    auto result = impl_->module.forward({batch});
    torch::Tensor f;
    if (result.isTensor()) f = result.toTensor();
    else if (result.isTuple() && !result.toTupleRef().elements().empty() &&
             result.toTupleRef().elements()[0].isTensor())
      f = result.toTupleRef().elements()[0].toTensor();
    else if (result.isList() && result.toListRef().size() > 0 && result.toListRef()[0].isTensor())
      f = result.toListRef()[0].toTensor();
    else
      throw UsageError(
          fmt::format("feature extractor '{}' returned a {}, expected a tensor [N, D]", path_, result.tagKind()));
    if (f.dim() < 2 || f.size(0) != batch.size(0) || (f.dim() > 2 && f.numel() != f.size(0) * f.size(1)))
      throw UsageError(fmt::format("feature extractor '{}' returned shape [{}] for {} images, expected [N, D]", path_,
                                   fmt::join(f.sizes(), ", "), batch.size(0)));
    out.push_back(f.reshape({f.size(0), f.size(1)}).to(torch::kFloat32));
  }
  if (out.empty()) return torch::empty({0, 0}, torch::TensorOptions().device(opts_.device));
  return out.size() == 1 ? out[0] : torch::cat(out, 0);
}

// --- Statistics -------------------------------------------------------------------------------

namespace {

void check_features(const torch::Tensor& f, const char* what) {
  if (!f.defined() || f.dim() != 2 || f.size(1) < 1)
    throw std::invalid_argument(fmt::format("{}: features must be [N, D], got [{}]", what,
                                            f.defined() ? fmt::format("{}", fmt::join(f.sizes(), ", ")) : ""));
}

torch::Tensor symmetrize(const torch::Tensor& m) { return 0.5 * (m + m.transpose(0, 1)); }

}  // namespace

FeatureStats feature_stats(const torch::Tensor& features) {
  check_features(features, "feature_stats");
  if (features.size(0) < 2)
    throw std::invalid_argument(
        fmt::format("feature_stats: need at least 2 feature vectors, got {}", features.size(0)));
  // Large sets go through the accumulator in chunks, so the float64 copy stays bounded.
  constexpr int64_t kChunk = 8192;
  if (features.size(0) > kChunk) {
    FeatureStatsAccumulator acc;
    for (int64_t i = 0; i < features.size(0); i += kChunk)
      acc.add(features.narrow(0, i, std::min(kChunk, features.size(0) - i)));
    return acc.stats();
  }
  torch::NoGradGuard no_grad;
  auto x = features.to(torch::kFloat64);
  auto mu = x.mean(0);
  auto c = x - mu;
  auto sigma = symmetrize(c.transpose(0, 1).matmul(c) / static_cast<double>(x.size(0) - 1));
  return {mu, sigma, x.size(0), {}, {}};
}

void FeatureStatsAccumulator::add(const torch::Tensor& features) {
  check_features(features, "FeatureStatsAccumulator");
  const int64_t nb = features.size(0);
  if (nb == 0) return;
  torch::NoGradGuard no_grad;
  auto x = features.to(torch::kFloat64);
  auto mb = x.mean(0);
  auto c = x - mb;
  auto m2b = c.transpose(0, 1).matmul(c);
  if (n_ == 0) {
    mean_ = mb;
    m2_ = m2b;
    n_ = nb;
    return;
  }
  if (mb.size(0) != mean_.size(0))
    throw std::invalid_argument(fmt::format("FeatureStatsAccumulator: feature dimension {} differs from earlier {}",
                                            mb.size(0), mean_.size(0)));
  // Chan, Golub & LeVeque: M2 = M2_a + M2_b + delta delta^T n_a n_b / n.
  const double na = static_cast<double>(n_), nbd = static_cast<double>(nb), n = na + nbd;
  auto delta = mb.to(mean_.device()) - mean_;
  m2_ = m2_ + m2b.to(m2_.device()) + torch::outer(delta, delta) * (na * nbd / n);
  mean_ = mean_ + delta * (nbd / n);
  n_ += nb;
}

FeatureStats FeatureStatsAccumulator::stats() const {
  if (n_ < 2) throw std::invalid_argument(fmt::format("FeatureStatsAccumulator: need at least 2 vectors, have {}", n_));
  return {mean_.clone(), symmetrize(m2_ / static_cast<double>(n_ - 1)), n_, {}, {}};
}

void save_feature_stats(const FeatureStats& stats, const std::string& path) {
  if (!stats.mu.defined() || !stats.sigma.defined())
    throw std::invalid_argument("save_feature_stats: statistics are empty");
  try {
    save_safetensors(
        path,
        {{"mu", stats.mu.detach().to(torch::kCPU, torch::kFloat64)},
         {"sigma", stats.sigma.detach().to(torch::kCPU, torch::kFloat64)},
         {"n", torch::tensor({stats.n}, torch::kLong)}},
        {{"format", "diffuse-feature-stats"}, {"extractor", stats.extractor}, {"reference", stats.reference}});
  } catch (const std::runtime_error& e) {
    throw UsageError(fmt::format("feature statistics file '{}' could not be written: {}", path, e.what()));
  }
}

std::string feature_network_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(fmt::format("feature extractor '{}' could not be opened", path));
  uint64_t h = kFnv1aOffsetBasis;
  uint64_t size = 0;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<size_t>(in.gcount());
    h = fnv1a64(buf.data(), got, h);
    size += got;
  }
  return fmt::format("{} bytes, fnv1a64 {:016x}", size, h);
}

FeatureStats load_feature_stats(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw UsageError(fmt::format("feature statistics file '{}' does not exist or is not a file", path));
  auto unreadable = [&](const std::string& why) {
    return UsageError(
        fmt::format("feature statistics file '{}' could not be read (expected a file written by "
                    "save_feature_stats, or an .npz with mu and sigma): {}",
                    path, why));
  };
  FeatureStats s;
  torch::Tensor n;
  if (is_npz_file(path)) {
    // NumPy statistics, e.g. from pytorch-fid's --save-stats: mu and sigma, no count.
    auto arrays = read_npz(path);
    for (const char* key : {"mu", "sigma"})
      if (!arrays.count(key))
        throw UsageError(fmt::format("feature statistics file '{}' has no '{}' array", path, key));
    s.mu = arrays["mu"];
    s.sigma = arrays["sigma"];
    n = arrays.count("n") ? arrays["n"].reshape({-1}) : torch::zeros({1}, torch::kLong);
  } else {
    const std::string bytes = read_file_bytes(path);
    if (is_zip(bytes))
      throw unreadable(
          "it is a zip archive, as older diffuse versions wrote (a LibTorch archive, no longer read: "
          "its parser is unsafe on crafted files); delete it to compute fresh statistics");
    const auto st = decode_safetensors(bytes, path);
    for (auto [key, t] : {std::pair<const char*, torch::Tensor*>{"mu", &s.mu}, {"sigma", &s.sigma}, {"n", &n}}) {
      const auto* found = st.find(key);
      if (!found) throw UsageError(fmt::format("feature statistics file '{}' has no '{}' entry", path, key));
      *t = *found;
    }
    if (const auto it = st.metadata.find("extractor"); it != st.metadata.end()) s.extractor = it->second;
    if (const auto it = st.metadata.find("reference"); it != st.metadata.end()) s.reference = it->second;
  }
  auto real = [](const torch::Tensor& t) { return t.defined() && !t.is_complex() && t.scalar_type() != torch::kBool; };
  if (!real(s.mu) || !real(s.sigma) || !real(n))
    throw UsageError(fmt::format("feature statistics file '{}': mu, sigma and n must be real numbers", path));
  const bool ok = s.mu.dim() == 1 && s.sigma.dim() == 2 && s.sigma.size(0) == s.mu.size(0) &&
                  s.sigma.size(1) == s.mu.size(0) && n.numel() == 1;
  if (!ok)
    throw UsageError(fmt::format("feature statistics file '{}' holds mu [{}] and sigma [{}], expected [D] and [D, D]",
                                 path, fmt::join(s.mu.sizes(), ", "), fmt::join(s.sigma.sizes(), ", ")));
  s.mu = s.mu.to(torch::kFloat64);
  s.sigma = s.sigma.to(torch::kFloat64);
  s.n = n.to(torch::kLong).item<int64_t>();
  return s;
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  if (!a.mu.defined() || !b.mu.defined() || !a.sigma.defined() || !b.sigma.defined())
    throw std::invalid_argument("frechet_distance: statistics are empty");
  if (a.mu.numel() != b.mu.numel())
    throw UsageError(
        fmt::format("FID: the feature dimensions differ ({} vs {}); were both statistics computed "
                    "with the same feature extractor?",
                    a.mu.numel(), b.mu.numel()));
  torch::NoGradGuard no_grad;
  const auto dev = a.sigma.device();
  auto mu1 = a.mu.to(dev, torch::kFloat64).reshape({-1});
  auto mu2 = b.mu.to(dev, torch::kFloat64).reshape({-1});
  auto s1 = symmetrize(a.sigma.to(dev, torch::kFloat64));
  auto s2 = symmetrize(b.sigma.to(dev, torch::kFloat64));
  auto diff = mu1 - mu2;
  // tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the two matrices are similar, and the
  // second is symmetric positive semi-definite, so its eigenvalues are real and >= 0 up to
  // round-off (scipy's sqrtm on the non-symmetric product can return complex noise instead).
  torch::Tensor sqrt_s1, lm;
  try {
    auto eig1 = torch::linalg_eigh(s1, "L");
    const auto& l1 = std::get<0>(eig1);
    const auto& v1 = std::get<1>(eig1);
    sqrt_s1 = (v1 * l1.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(v1.transpose(0, 1));
    lm = torch::linalg_eigvalsh(symmetrize(sqrt_s1.matmul(s2).matmul(sqrt_s1)), "L");
  } catch (const c10::Error& e) {
    // Found by fuzzing: a crafted covariance can make LAPACK's eigensolver give up.
    throw UsageError(
        fmt::format("FID: the covariance matrices cannot be decomposed ({}); the statistics are not a "
                    "covariance of real features (a corrupt reference file?)",
                    e.what_without_backtrace()));
  }
  auto fid = diff.dot(diff) + s1.trace() + s2.trace() - 2.0 * lm.clamp_min(0.0).sqrt().sum();
  return fid.item<double>();
}

// --- KID --------------------------------------------------------------------------------------

KidResult kid(const torch::Tensor& feats1, const torch::Tensor& feats2, int64_t subsets, int64_t subset_size,
              uint64_t seed) {
  check_features(feats1, "kid");
  check_features(feats2, "kid");
  if (feats1.size(1) != feats2.size(1))
    throw UsageError(fmt::format("KID: the feature dimensions differ ({} vs {})", feats1.size(1), feats2.size(1)));
  if (subsets < 1) throw UsageError(fmt::format("KID: subsets must be >= 1, got {}", subsets));
  if (subset_size < 2) throw UsageError(fmt::format("KID: subset size must be >= 2, got {}", subset_size));
  const int64_t n1 = feats1.size(0), n2 = feats2.size(0);
  if (n1 < 2 || n2 < 2)
    throw UsageError(fmt::format("KID: need at least 2 feature vectors per set, got {} and {}", n1, n2));
  torch::NoGradGuard no_grad;
  const int64_t m = std::min({subset_size, n1, n2});
  const auto dev = feats1.device();
  const auto& x = feats1;
  auto y = feats2.to(dev);
  const double inv_d = 1.0 / static_cast<double>(x.size(1));
  const double md = static_cast<double>(m);
  auto kernel = [inv_d](const torch::Tensor& a, const torch::Tensor& b) {
    return (a.matmul(b.transpose(0, 1)) * inv_d + 1.0).pow(3);
  };

  std::mt19937_64 rng(seed);
  auto values = torch::empty({subsets}, x.options().dtype(torch::kFloat64));
  for (int64_t s = 0; s < subsets; ++s) {
    auto ix = random_subset(rng, n1, m, dev);
    auto iy = random_subset(rng, n2, m, dev);
    // Only the subsets go to float64: a full [50000, 2048] copy would be 800 MB.
    auto X = x.index_select(0, ix).to(torch::kFloat64);
    auto Y = y.index_select(0, iy).to(torch::kFloat64);
    auto kxx = kernel(X, X);
    auto kyy = kernel(Y, Y);
    auto kxy = kernel(X, Y);
    // Unbiased MMD^2 (Gretton et al. 2012, eq. 3): the diagonal k(x_i, x_i) terms are left out.
    auto v = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (md * (md - 1.0)) -
             2.0 * kxy.sum() / (md * md);
    values[s] = v;
  }
  auto host = values.cpu();
  const double* p = host.data_ptr<double>();
  KidResult r;
  r.subsets = subsets;
  r.subset_size = m;
  for (int64_t s = 0; s < subsets; ++s) r.mean += p[s];
  r.mean /= static_cast<double>(subsets);
  double ss = 0;
  for (int64_t s = 0; s < subsets; ++s) ss += (p[s] - r.mean) * (p[s] - r.mean);
  r.std = std::sqrt(ss / static_cast<double>(subsets));
  return r;
}

}  // namespace diffuse
