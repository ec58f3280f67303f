// 64-bit FNV-1a (Fowler, Noll, Vo): a fast, stable fingerprint of bytes, for files and tensors.
#pragma once

#include <cstddef>
#include <cstdint>

namespace diffuse {

constexpr uint64_t kFnv1aOffsetBasis = 14695981039346656037ull;

// Continues hash h over n bytes; start from kFnv1aOffsetBasis.
inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnv1aOffsetBasis) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

}  // namespace diffuse
