// The InceptionV3 that FID is defined with: the 2015 TensorFlow graph as pytorch-fid ports it
// (torchvision's Inception3 with FID's patched blocks: average pools that do not count padding
// in Mixed_5*, 6b-e and 7b, a max pool in Mixed_7c), up to the 2048-d pool3 features. It loads
// pytorch-fid's weight file (pt_inception-2015-12-05-6726825d.pth, a torch.save state_dict)
// directly, so standard FID needs no Python export step.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace diffuse {

struct TorchSaveFile;

class FidInceptionV3 {
 public:
  FidInceptionV3();
  ~FidInceptionV3();
  FidInceptionV3(FidInceptionV3&&) noexcept;
  FidInceptionV3& operator=(FidInceptionV3&&) noexcept;

  // [N, 3, H, W] float32 images in [-1, 1] (pytorch-fid feeds 299 x 299) -> [N, 2048] pool3
  // features. Inference only (batch norm uses its running statistics).
  torch::Tensor forward(const torch::Tensor& x) const;

  // Every parameter and buffer, named as in pytorch-fid's weight file ("Mixed_5b.branch1x1.conv.weight").
  std::vector<std::pair<std::string, torch::Tensor>> named_tensors() const;
  // Copies the weights in: every tensor named above must be present with its shape; the
  // classifier ("fc.*") and "*.num_batches_tracked" may be there and are not used; any other
  // name is an error. UsageError naming `origin` and the tensor.
  void load(const TorchSaveFile& weights, const std::string& origin);
  void to(torch::Device device);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuse
