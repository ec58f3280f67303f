// Counting the floating-point work of a forward pass by watching LibTorch's dispatcher
// (RecordFunction callbacks see every operator and its input shapes): convolutions and matrix
// products, which are nearly all of a UNet's work. A multiply-add counts as 2 FLOPs.
#pragma once

#include <functional>

namespace diffuse {

// FLOPs of the convolutions and matmuls that `fn` runs on the calling thread.
double count_flops(const std::function<void()>& fn);

// Measured dense matmul throughput of this machine / device in GFLOP/s (n x n float32 products).
double measure_matmul_gflops(int64_t n = 1024, double seconds = 1.0, bool cuda = false);

}  // namespace diffuse
