// Small factories from config structs to the objects they describe. Data flows one way:
// YAML -> Config -> (dataset, network, diffusion) -> trainer / sampler / evaluator.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "diffuse/config.h"
#include "diffuse/diffusion.h"
#include "diffuse/gamma_schedule.h"
#include "diffuse/timestep_sampler.h"
#include "diffuse/vdm.h"

namespace diffuse {

class Network;
class Dataset;

ScheduleSpec schedule_spec(const DiffusionConfig& cfg);
// For schedule vdm: the discrete view (T + 1 steps) of the configured fixed gamma schedule, or of
// a learned kind's initial line from gamma_min to gamma_max (the trained one needs the network:
// make_diffusion).
NoiseSchedule make_schedule(const DiffusionConfig& cfg);
// The gamma schedule a config describes (schedule vdm), freshly initialised.
GammaSpec gamma_spec(const DiffusionConfig& cfg);
// The VDM loss a config trains on (schedule vdm): decoder, prediction, the continuous bound or
// the T-step one (continuous: false), and the variance objective for a learned shape.
VdmOptions vdm_options(const DiffusionConfig& cfg);
// A custom schedule's diffusion.betas_file read into diffusion.betas (diffusion.timesteps set to
// their count, betas_file cleared), so that the config a run stores (config.yaml, checkpoints)
// holds the schedule itself, not the name of a file that may change or vanish. Other configs
// are left as they are (validate() names a misused betas_file).
void resolve_betas_file(DiffusionConfig& cfg);
// The variance type in effect: model.learn_sigma with a fixed type means learned_range.
VarianceType effective_variance(const Config& cfg);
// For schedule vdm the process is the discrete view of `net`'s gamma schedule (as learned);
// without a network, of the configured one, which a learned kind refuses (UsageError).
GaussianDiffusion make_diffusion(const Config& cfg, const Network* net = nullptr);
// diffusion.timestep_sampler over cfg's schedule (lognormal: on the edm grid, p_mean / p_std).
std::unique_ptr<TimestepSampler> make_timestep_sampler(const DiffusionConfig& cfg);

// What a network needs to know about its data; stored in checkpoints so a model can be rebuilt
// without the dataset.
struct DataShape {
  std::vector<int64_t> shape;  // per example: [C, H, W] or [D]
  int64_t num_classes = 0;     // 0 = unlabelled
};

// The shape a dataset gives the network (labels counted only when data.class_labels is on).
DataShape data_shape(const Dataset& dataset, const DataConfig& cfg);

std::shared_ptr<Network> make_model(const Config& cfg, const DataShape& data);
// train.channels_last for image data: the network's 4-D weights in channels-last layout, so that
// oneDNN's convolutions keep every activation in it, in training and in sampling alike (with
// weights in the plain layout, a CPU that prefers NHWC converts each convolution's input and
// output; docs/performance.md). A no-op otherwise.
void apply_memory_format(Network& net, const Config& cfg, const DataShape& data);

// UsageError naming `origin` when cfg's model is not a denoising network (model.type classifier:
// it guides sampling, through sample.classifier), where sample or eval expects one.
void require_denoiser(const Config& cfg, const std::string& origin);

}  // namespace diffuse
