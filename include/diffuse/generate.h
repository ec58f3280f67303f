// Turning a network into samples: batches, per-sample reproducible noise, class labels,
// classifier-free and classifier guidance, over any registered sampler. Used by `diffuse sample`, the
// trainer's periodic grids and the evaluators.
#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/config.h"
#include "diffuse/factory.h"

namespace diffuse {

class Network;
class ProcessGroup;
struct StepInfo;

struct GenerateRequest {
  SampleConfig sample;      // sampler, steps, spacing, eta, clipping, guidance, labels, seed, num, batch_size
  int64_t first_index = 0;  // global index of the first sample: sample i depends only on (seed, i)
  torch::Device device = torch::kCPU;
  // Classifier guidance at sample.classifier_scale (load_guidance_classifier); null = none. The
  // labels are the model's, or (unconditional model) chosen as labels_for over its classes.
  Network* classifier = nullptr;
  // Super-resolution models: low-resolution images [N, C, s, s] in [-1, 1]; the sample of global
  // index g upsamples row g mod N. Undefined for other models.
  torch::Tensor low_res;
  // After each batch: samples done so far, total.
  std::function<void(int64_t done, int64_t total)> on_batch;
  // Before each sampler step of each batch (trajectories); `first` is the batch's first index.
  std::function<void(const StepInfo& info, int64_t first)> on_step;
};

struct GenerateResult {
  torch::Tensor samples;  // [num, ...] float32 on the CPU, in [-1, 1] when clipping
  torch::Tensor labels;   // [num] int64 (-1 = unconditional)
  int64_t nfe = 0;        // network evaluations in all (a guided call counts once per batch)
  int64_t batches = 0;    // batches run (nfe / batches: evaluations per sample)
  // Network rows per sample in each evaluation: 2 under classifier-free guidance, which evaluates
  // [x; x] with the labels and the null label in one call; else 1.
  int64_t rows_per_evaluation = 1;
  double seconds = 0.0;
};

// `s` with another sampler: sample.eta was set for s.sampler, so a different sampler gets its
// own default eta (ddim 0, euler-ancestral 1) rather than one meant for another.
SampleConfig with_sampler(SampleConfig s, const std::string& sampler);

// The labels sample i gets: sample.labels cycled when given, else i mod num_classes.
torch::Tensor labels_for(const SampleConfig& s, int64_t first, int64_t count, int64_t num_classes);

GenerateResult generate_samples(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                                const GenerateRequest& request);

// The noisy-image classifier checkpoint `path` (model.type classifier, from `diffuse import
// --classifier`) for guiding a model of `shape` trained on `diffusion`: on `device`, in eval
// mode, its parameters needing no gradient. UsageError naming the file when it is not a
// classifier, or when its image size, channels or noise schedule differ from the model's.
std::shared_ptr<Network> load_guidance_classifier(const std::string& path, const DataShape& shape,
                                                  const GaussianDiffusion& diffusion, const torch::Device& device);
// An image folder as `diffuse sample` writes it (its numbered PNGs in index order, without the
// grid.png, trajectory.png and scatter.png beside them) or any other: [N, C, S, S] in [-1, 1] on
// the 8-bit grid with C = shape's channels and S its size (0: the first image's). `say` prints
// what is read (stderr).
torch::Tensor load_sample_folder(const std::string& dir, int64_t channels, int64_t image_size, bool say);

// What a super-resolution model upsamples.
struct LowResImages {
  torch::Tensor images;         // [N, C, s, s] float32 in [-1, 1]
  std::vector<int64_t> labels;  // the file's labels (an .npz's arr_1), empty when it has none
};
// The low-resolution images of `path`: an image folder (load_sample_folder; a base model's
// `diffuse sample` output), or an .npz whose arr_0 is uint8 [N, s, s, C] and arr_1 its labels, as
// improved- and guided-diffusion's image_sample.py write it (super_res_sample.py's
// --base_samples). UsageError naming the file when the images are not C channels of s x s.
LowResImages load_low_res_images(const std::string& path, int64_t channels, int64_t size);

// Data-parallel generation: rank r of `group` makes the samples rank_slice(num, r, world) of the
// request (indices first_index + begin .. first_index + end - 1), in batches of batch_size. A
// rank whose share is empty still checks the request (so every rank refuses a bad one alike) and
// returns [0, ...] samples. Callbacks see this rank's batches; nfe and batches are summed over
// the ranks and seconds is the time until the slowest rank is done (a collective: every rank
// calls it).
GenerateResult generate_share(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                              const GenerateRequest& request, ProcessGroup& group);
// Every rank's share gathered (to every rank) in index order: the samples and labels of a
// one-rank run (bit for bit when each rank's batches hold the same samples as that run's; batch
// composition may change float rounding, as --batch-size may on one rank). seconds includes
// the gather.
GenerateResult generate_samples(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                                const GenerateRequest& request, ProcessGroup& group);
// Just the samples.
inline torch::Tensor generate(Network& net, const GaussianDiffusion& diffusion, const DataShape& shape,
                              const GenerateRequest& request) {
  return generate_samples(net, diffusion, shape, request).samples;
}

}  // namespace diffuse
