// Counting the floating-point work of a forward pass by watching LibTorch's dispatcher
// (RecordFunction callbacks see every operator and its input shapes): convolutions and matrix
// products, which are nearly all of a UNet's work. A multiply-add counts as 2 FLOPs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace diffuse {

// FLOPs of the convolutions and matmuls that `fn` runs on the calling thread.
double count_flops(const std::function<void()>& fn);

// One way this machine runs the work a UNet is made of, and the rate it reached here.
struct Ceiling {
  std::string op;       // "matmul" (n x n by n x n) or "conv3x3" (128 -> 128 channels at 32x32)
  std::string dtype;    // "fp32", "bf16" or (CUDA) "fp16"
  std::string backend;  // which library LibTorch hands the op to
  double gflops = 0;
};

// This machine's (or the GPU's) ceilings, each measured for `seconds` with the threads already
// set: the matrix product through torch::mm (OpenBLAS or MKL for fp32 on a CPU, oneDNN for bf16
// where the CPU has it; cuBLAS) and as a 1x1 convolution (oneDNN; cuDNN), and a 3x3
// convolution (oneDNN; cuDNN), in fp32 and in bf16 (and fp16 on CUDA). A dtype without fast kernels is measured
// too: the figures say what the machine does.
std::vector<Ceiling> measure_ceilings(bool cuda, double seconds = 0.5);

// The highest rate among `ceilings` of `dtype` ("fp32", "bf16"), 0 when there is none; *which
// (when given) is set to that entry.
double best_ceiling(const std::vector<Ceiling>& ceilings, const std::string& dtype, const Ceiling** which = nullptr);

}  // namespace diffuse
