// Reading NumPy .npy arrays and .npz archives (np.savez / np.savez_compressed), so statistics
// precomputed in Python (e.g. pytorch-fid's `--save-stats` files holding mu and sigma) load as
// tensors. Supports little-endian float64/float32/int64/int32/uint8 arrays in C or Fortran order, and
// zip entries stored or deflated, including the ZIP64 headers numpy writes.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

namespace diffuse {

// One .npy payload (the whole file's bytes) as a CPU tensor; `origin` names it in errors.
torch::Tensor parse_npy(const std::string& bytes, const std::string& origin);

// Every array of an .npz file, keyed by name without the ".npy" suffix. Throws UsageError
// naming the file (and entry) for anything unreadable or unsupported.
std::map<std::string, torch::Tensor> read_npz(const std::string& path);

// True when the file is a zip archive whose first entry is a ".npy" array. (A TorchScript or
// torch::save archive is a zip file too, but its entries are named "<name>/data.pkl" etc.)
bool is_npz_file(const std::string& path);

}  // namespace diffuse
