// Fréchet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Bińkowski et
// al. 2018) over features of the standard InceptionV3 (pytorch-fid's weight file, run by our own
// network: eval/fid_inception.h) or of any TorchScript feature network. See docs/fid.md for what
// the numbers are comparable to.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>

namespace diffuse {

// --- Feature network --------------------------------------------------------------------------

struct FeatureExtractorOptions {
  // Images are resized (bilinear, align_corners = false, as pytorch-fid's InceptionV3 does) to
  // image_size x image_size before the network sees them; 0 passes them at their own size.
  int64_t image_size = 299;
  // Round to the 256 levels of an 8-bit image first, so generated samples are measured as if
  // saved to PNG and read back (the protocol reference statistics are computed with).
  bool quantize_8bit = true;
  int64_t batch_size = 100;  // images per network call
  torch::Device device = torch::kCPU;
};

// The feature network of a file: pytorch-fid's Inception weights (a torch.save state_dict, such
// as pt_inception-2015-12-05-6726825d.pth), a diffuse checkpoint of model.type classifier (its
// pooled features at t = 0, at its own image size and channels: EncoderUNet::features; what
// scripts/make-feature-net.sh trains for Fashion-MNIST), or a TorchScript module mapping
// [N, 3, S, S] float32 images in [-1, 1] to features [N, D] (an output [N, D, 1, 1], or a
// tuple/list whose first element is that, is accepted too).
class FeatureExtractor {
 public:
  // Throws UsageError naming the file when it is missing or neither kind of file.
  explicit FeatureExtractor(const std::string& path, FeatureExtractorOptions opts = {});
  ~FeatureExtractor();
  FeatureExtractor(FeatureExtractor&&) noexcept;
  FeatureExtractor& operator=(FeatureExtractor&&) noexcept;

  // What the network is fed: [N, C, H, W] images in [-1, 1] with C = 1 (repeated to 3 for a
  // 3-channel network) or 3, quantised and resized as the options say, float32 on the device.
  torch::Tensor prepare(const torch::Tensor& images) const;
  // Features [N, D] float32 (on the extractor's device), in batches of opts.batch_size.
  torch::Tensor features(const torch::Tensor& images) const;

  const std::string& path() const { return path_; }
  const FeatureExtractorOptions& options() const { return opts_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  FeatureExtractorOptions opts_;
};

// --- Gaussian statistics and FID --------------------------------------------------------------

struct FeatureStats {
  torch::Tensor mu;     // [D] float64
  torch::Tensor sigma;  // [D, D] float64, the unbiased sample covariance (divisor n - 1)
  int64_t n = 0;        // number of feature vectors (0 when unknown, e.g. read from an .npz)
  // Where the statistics came from, so a cache is not reused for another network or reference
  // set (empty when unknown: an .npz, or a file written before these were recorded).
  std::string extractor;  // feature_network_fingerprint() of the network
  std::string reference;  // what was measured (e.g. "fashion-mnist test split of /usr/share/...")
};

// A fingerprint of a feature-network file that survives moving or copying it: its size and a
// 64-bit FNV-1a hash of its bytes ("<bytes> bytes, fnv1a64 <16 hex digits>"). Errors name the file.
std::string feature_network_fingerprint(const std::string& path);

// Mean and covariance of features [N, D] (N >= 2), in float64, two-pass (centred) on the
// features' device.
FeatureStats feature_stats(const torch::Tensor& features);

// The same statistics accumulated batch by batch: each batch is reduced in two passes and
// merged with Chan et al.'s pairwise update, so no running sum of squares ever cancels.
class FeatureStatsAccumulator {
 public:
  void add(const torch::Tensor& features);  // [N, D]
  int64_t count() const { return n_; }
  FeatureStats stats() const;  // needs count() >= 2

 private:
  int64_t n_ = 0;
  torch::Tensor mean_, m2_;  // float64 [D], [D, D] (sum of centred outer products)
};

// Cache file: a safetensors file holding "mu", "sigma" (float64) and "n", with "extractor" and
// "reference" in its metadata, written atomically (temporary file, rename). Loading also
// reads NumPy .npz files with arrays mu and sigma (pytorch-fid's --save-stats format; n = 0
// unless an array n is present). Errors name the file.
void save_feature_stats(const FeatureStats& stats, const std::string& path);
FeatureStats load_feature_stats(const std::string& path);

// |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), with the trace term computed from the
// symmetric, similar matrix S1^(1/2) S2 S1^(1/2) by two symmetric eigendecompositions in float64
// (tiny negative eigenvalues from round-off clamped to 0). Throws UsageError when the feature
// dimensions differ.
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

// --- KID --------------------------------------------------------------------------------------

struct KidResult {
  double mean = 0;  // mean of the unbiased MMD^2 estimates over subsets
  double std = 0;   // their standard deviation (divisor = subsets, as torch-fidelity reports it)
  int64_t subsets = 0;
  int64_t subset_size = 0;  // the size actually used: min(subset_size, N1, N2)
};

// MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3, unbiased estimator (diagonal terms
// left out), over `subsets` random subsets (without replacement, drawn from `seed`) of both
// feature sets [N1, D], [N2, D]. Computed in float64 on the features' device.
KidResult kid(const torch::Tensor& feats1, const torch::Tensor& feats2, int64_t subsets = 100,
              int64_t subset_size = 1000, uint64_t seed = 0);

}  // namespace diffuse
