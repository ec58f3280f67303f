// Portable integer randomness: the same numbers from the same seed with every standard library
// and LibTorch version (std's distributions and torch's generators leave that unspecified), so
// data order, synthetic images and metric subsets repeat anywhere and a run resumes identically.
#pragma once

#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>

namespace diffuse {

// SplitMix64's output function (Steele, Lea, Flood 2014) applied to z + the golden-ratio
// increment: a stateless, well-mixed 64-bit hash of z.
inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform integer in [0, n), n >= 1, by rejection: draws at or above the largest multiple of n
// that fits in 2^64 are redrawn (none when n is a power of two), so there is no modulo bias.
inline uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  if (n == 0) throw std::invalid_argument("uniform_below: n must be >= 1");
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  const uint64_t excess = (kMax % n + 1) % n;  // 2^64 mod n
  uint64_t r = rng();
  while (r > kMax - excess) r = rng();
  return r % n;
}

}  // namespace diffuse
