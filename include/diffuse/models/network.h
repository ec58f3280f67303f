// The denoising networks' common interface, the factory that builds one from the config, and
// module utilities (parameter count, summary table, channels-last conversion).
//
// A network knows nothing about diffusion: it maps (x_t, t, y) to an output tensor whose meaning
// (eps, x0, v, plus variance channels when sigma is learned) the caller decides.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>

namespace diffuse {

struct ModelConfig;

class Network : public torch::nn::Module {
 public:
  // x: [B,C,H,W] images (UNet) or [B,D] points (MLP).
  // t: [B] (or a scalar, broadcast to B) timesteps in the training schedule's units, 0..T-1;
  //    any dtype, may be fractional (samplers pass continuous values).
  // y: int64 [B] class labels in 0..num_classes, where num_classes is the null label of
  //    classifier-free guidance; undefined means all-null. Ignored by unconditional networks.
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y = {}) = 0;

  int64_t in_channels() const { return in_channels_; }  // data dimension for the MLP
  int64_t out_channels() const { return out_channels_; }
  int64_t num_classes() const { return num_classes_; }  // 0: unconditional
  bool class_conditional() const { return num_classes_ > 0; }
  int64_t null_label() const { return num_classes_; }  // the "no class" label (CFG)
  // > 0: a super-resolution network, whose x is network_input(x_t, low_res) (models/super_res.h).
  int64_t low_res_size() const { return low_res_size_; }
  // The network embeds t * scale + shift: diffusion.rescale_timesteps sets scale 1000 / T, and the
  // edm schedule maps its steps to EDM's c_noise (factory.cpp). 1 and 0 by default.
  void set_timestep_scale(double scale) { timestep_scale_ = scale; }
  void set_timestep_shift(double shift) { timestep_shift_ = shift; }
  double timestep_scale() const { return timestep_scale_; }
  double timestep_shift() const { return timestep_shift_; }

 protected:
  Network(std::string name, int64_t in_channels, int64_t out_channels, int64_t num_classes);

  // t * timestep_scale() + timestep_shift() as float32 [batch] on `device` (a scalar or one-element t is broadcast).
  // Throws std::invalid_argument on a shape mismatch.
  torch::Tensor batch_timesteps(const torch::Tensor& t, int64_t batch, const torch::Device& device) const;
  // y as int64 [batch] on `device`; all null labels when y is undefined. Requires a
  // class-conditional network. Values are not range-checked here (that would force a
  // device sync); the embedding lookup rejects out-of-range labels.
  torch::Tensor batch_labels(const torch::Tensor& y, int64_t batch, const torch::Device& device) const;
  void set_low_res_size(int64_t size) { low_res_size_ = size; }

 private:
  int64_t in_channels_;
  int64_t out_channels_;
  int64_t num_classes_;
  double timestep_scale_ = 1.0;
  double timestep_shift_ = 0.0;
  int64_t low_res_size_ = 0;
};

// Sinusoidal timestep embedding (Vaswani et al. 2017, as improved-diffusion's
// timestep_embedding): [cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})] with h = dim / 2 and
// f_i = max_period^(-i/h); a zero column is appended when dim is odd. t: [B] -> [B, dim] float32.
torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim, double max_period = 10000.0);

// Builds the network cfg.type names. UNet: images of image_size x image_size with in_channels
// channels. MLP: in_channels is the data dimension and image_size is ignored. out_channels is
// the caller's choice (2x the data channels when sigma is learned). num_classes (the dataset's
// class count) is used only when cfg.class_cond, through resolve_num_classes. Throws UsageError
// naming the config key for an unusable configuration.
std::shared_ptr<Network> make_network(const ModelConfig& cfg, int64_t image_size, int64_t in_channels,
                                      int64_t out_channels, int64_t num_classes);

// The class count of a class-conditional network: cfg.num_classes when > 0, else
// dataset_classes; 0 when !cfg.class_cond. Throws UsageError when class_cond has no count.
int64_t resolve_num_classes(const ModelConfig& cfg, int64_t dataset_classes);

// Number of scalar parameters (all of them, trainable or not).
int64_t count_parameters(const torch::nn::Module& module);

// A table with one row per module that owns parameters (dotted name, type, parameter shapes,
// count) and the total at the end ("Total parameters: 1,191,233").
std::string model_summary(const torch::nn::Module& module);

// Converts every 4-D parameter, gradient and buffer to the ChannelsLast memory format in place
// (LibTorch's C++ Module::to has no memory-format overload). Other tensors are left as they are.
void convert_to_channels_last(torch::nn::Module& module);

// "1,191,233": thousands separators for reports.
std::string format_count(int64_t n);

}  // namespace diffuse
