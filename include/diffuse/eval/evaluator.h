// `diffuse eval` as a library call: the variational bound term by term on held-out data, sample
// quality (FID / KID against a reference, exact distances for 2-D toy data), and sweeps of
// samplers x step counts. Writes its files into one directory and returns the numbers.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/config.h"
#include "diffuse/factory.h"

namespace diffuse {

class Network;
class ProcessGroup;

struct SweepEntry {
  std::string sampler;
  std::vector<int64_t> steps;
};
// "ddim:10,20,50" -> {ddim, [10, 20, 50]}; throws UsageError naming the text.
SweepEntry parse_sweep(const std::string& text);

struct EvalRequest {
  Config config;  // eval.*, sample.* and data.* are used
  DataShape shape;
  std::string out_dir;  // files go here (created)
  torch::Device device = torch::kCPU;
  std::string samples_dir;      // FID/KID: an image folder to measure instead of generating
  std::string reference_stats;  // FID: cache file of reference statistics (read if present, else written)
  std::vector<SweepEntry> sweep;
  // bpd-mc: p(t) for importance sampling (e.g. the training sampler's), undefined = uniform.
  torch::Tensor timestep_probabilities;
  uint64_t seed = 0;
  // Ranks that share the work (null: this process alone). Bits/dim batches go round-robin to
  // the ranks, samples and feature extraction are split by rank_slice; everything is gathered,
  // so rank 0's numbers are those of one rank. Only rank 0 writes files, and only its report is
  // complete. Every rank must call evaluate with the same request.
  ProcessGroup* group = nullptr;
};

struct EvalReport {
  std::vector<std::pair<std::string, double>> values;         // metric name -> value, in order
  std::vector<std::pair<std::string, std::string>> settings;  // how they were measured (e.g. decoder_cdf)
  std::vector<std::pair<std::string, std::string>> files;     // what -> path
  std::string json;                                           // one object with every value
};

// Known names for eval.metrics.
std::vector<std::string> eval_metric_names();

EvalReport evaluate(Network& net, const GaussianDiffusion& diffusion, const EvalRequest& request);

}  // namespace diffuse
