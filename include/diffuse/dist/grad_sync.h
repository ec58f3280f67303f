// Gradient averaging over ranks, as PyTorch's DistributedDataParallel does it: parameters are
// grouped into flat buckets of about `bucket_bytes` (in reverse registration order, roughly the
// order backward produces them), each bucket's all-reduce starts as soon as its last gradient
// is ready during backward, and the averaged gradients are written back into .grad after it.
//
// Buckets are always started in index order, so every rank issues the same collectives in the
// same order whatever order its hooks fire in. Only the backward pass that completes a step's
// gradient (the last micro-batch under accumulation) is synchronised: arm() before it.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace diffuse {

class ProcessGroup;

class GradientSync {
 public:
  GradientSync(ProcessGroup& group, std::vector<torch::Tensor> parameters, int64_t bucket_bytes);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // The next backward pass produces the step's final gradients: synchronise them.
  void arm();
  // After that backward: start the buckets still waiting (parameters without a gradient count
  // as zero), wait for all of them, and write the mean over ranks into every .grad.
  void finish();

  int64_t num_buckets() const;
  // Seconds finish() spent waiting for communication that backward had not hidden, last step.
  double last_wait_seconds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuse
