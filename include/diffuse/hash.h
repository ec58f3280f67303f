// 64-bit FNV-1a (Fowler, Noll, Vo): a fast, stable fingerprint of bytes, for files and tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace diffuse {

constexpr uint64_t kFnv1aOffsetBasis = 14695981039346656037ull;

// Continues hash h over n bytes; start from kFnv1aOffsetBasis.
inline uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnv1aOffsetBasis) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// "fnv1a64:<16 hex digits>", the form fingerprints take in files and messages.
inline std::string fingerprint_string(uint64_t h) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace diffuse
