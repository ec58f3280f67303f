#include "diffuse/data/toy2d.h"

#include <fmt/format.h>

#include <cmath>

#include "diffuse/error.h"

namespace diffuse {

namespace {

constexpr double kPi = 3.14159265358979323846;

// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and the same on every platform.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Box-Muller: a pair of independent standard normals.
  std::pair<double, double> normal2() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    return {r * std::cos(2.0 * kPi * u2), r * std::sin(2.0 * kPi * u2)};
  }
};

constexpr double kSwissNoise = 0.5;
constexpr double kMoonsNoise = 0.1;
// 8 gaussians: radius r with r^2 (1/2 + 1/64) = 1 and std r / 8.
const double kRingRadius = 1.0 / std::sqrt(0.5 + 1.0 / 64.0);
const double kRingStd = kRingRadius / 8.0;

// Distinct streams for evaluation samples and dataset points drawn from the same seed.
constexpr uint64_t kSampleStream = 0x5a3c1e0f2d4b6a79ULL;
constexpr uint64_t kDatasetStream = 0x1f2e3d4c5b6a7988ULL;

uint64_t stream_seed(uint64_t seed, uint64_t stream) {
  SplitMix64 g{seed ^ stream};
  return g.next();
}

ToySamples generate(ToyKind kind, int64_t n, uint64_t state) {
  if (n < 0) throw UsageError(fmt::format("toy sample count must be >= 0, got {}", n));
  ToySamples out;
  out.x = torch::empty({n, 2}, torch::kFloat32);
  out.labels = torch::full({n}, -1, torch::kInt64);
  float* x = out.x.data_ptr<float>();
  int64_t* lab = out.labels.data_ptr<int64_t>();
  const ToyNormalization norm = toy_normalization(kind);
  const double inv = 1.0 / norm.scale;
  SplitMix64 g{state};
  for (int64_t i = 0; i < n; ++i) {
    double px = 0, py = 0;
    switch (kind) {
      case ToyKind::SwissRoll: {
        const double t = 1.5 * kPi * (1.0 + 2.0 * g.uniform());
        const auto [nx, ny] = g.normal2();
        px = t * std::cos(t) + kSwissNoise * nx;
        py = t * std::sin(t) + kSwissNoise * ny;
        break;
      }
      case ToyKind::TwoMoons: {
        const bool inner = g.next() >> 63;
        const double t = kPi * g.uniform();
        const auto [nx, ny] = g.normal2();
        px = (inner ? 1.0 - std::cos(t) : std::cos(t)) + kMoonsNoise * nx;
        py = (inner ? 0.5 - std::sin(t) : std::sin(t)) + kMoonsNoise * ny;
        lab[i] = inner ? 1 : 0;
        break;
      }
      case ToyKind::EightGaussians: {
        const int64_t k = static_cast<int64_t>(g.next() >> 61);  // top 3 bits: 0..7
        const auto [nx, ny] = g.normal2();
        px = kRingRadius * std::cos(k * kPi / 4.0) + kRingStd * nx;
        py = kRingRadius * std::sin(k * kPi / 4.0) + kRingStd * ny;
        lab[i] = k;
        break;
      }
      case ToyKind::Checkerboard: {
        // One of the 8 squares (col, row) in {-2..1}^2 with col + row even, then uniform in it.
        const int64_t s = static_cast<int64_t>(g.next() >> 61);
        const int64_t col = s / 2 - 2;                          // -2..1, two squares per column
        const int64_t row = 2 * (s % 2) - 2 + ((col + 2) % 2);  // rows of col's parity
        px = col + g.uniform();
        py = row + g.uniform();
        break;
      }
    }
    x[2 * i] = static_cast<float>((px - norm.mean_x) * inv);
    x[2 * i + 1] = static_cast<float>((py - norm.mean_y) * inv);
  }
  return out;
}

}  // namespace

ToyNormalization toy_normalization(ToyKind kind) {
  switch (kind) {
    case ToyKind::SwissRoll: {
      // t ~ U(a, b), a = 1.5 pi, b = 4.5 pi: E[t cos t] = (b + a) / (b - a) = 2,
      // E[t sin t] = 2 / (b - a) = 2 / (3 pi), E[t^2] = (a^2 + ab + b^2) / 3 = 9.75 pi^2.
      const double mx = 2.0, my = 2.0 / (3.0 * kPi), et2 = 9.75 * kPi * kPi;
      const double var = (et2 - mx * mx - my * my) / 2.0 + kSwissNoise * kSwissNoise;
      return {mx, my, std::sqrt(var)};
    }
    case ToyKind::TwoMoons: {
      const double s2 = kMoonsNoise * kMoonsNoise;
      const double var_x = 0.5 + 0.25 + s2;
      const double between = 2.0 / kPi - 0.25;
      const double var_y = 0.5 - 4.0 / (kPi * kPi) + between * between + s2;
      return {0.5, 0.25, std::sqrt((var_x + var_y) / 2.0)};
    }
    case ToyKind::EightGaussians: return {0.0, 0.0, 1.0};
    case ToyKind::Checkerboard: return {0.0, 0.0, 2.0 / std::sqrt(3.0)};  // U(-2,2) has variance 4/3
  }
  throw std::logic_error("toy_normalization: unknown kind");
}

int64_t toy_num_classes(ToyKind kind) {
  switch (kind) {
    case ToyKind::EightGaussians: return 8;
    case ToyKind::TwoMoons: return 2;
    default: return 0;
  }
}

ToySamples sample_toy_labeled(ToyKind kind, int64_t n, uint64_t seed) {
  return generate(kind, n, stream_seed(seed, kSampleStream));
}

torch::Tensor sample_toy(ToyKind kind, int64_t n, uint64_t seed) { return sample_toy_labeled(kind, n, seed).x; }

Toy2dDataset::Toy2dDataset(ToyKind kind, int64_t size, uint64_t seed, bool labels)
    : kind_(kind), size_(size), labels_(labels) {
  if (size < 1) throw UsageError(fmt::format("toy2d dataset size must be >= 1, got {}", size));
  samples_ = generate(kind, size, stream_seed(seed, kDatasetStream));
}

Example Toy2dDataset::get(int64_t index) const {
  check_index(index);
  Example e;
  e.x = samples_.x[index].clone();
  e.label = labels_ ? samples_.labels.data_ptr<int64_t>()[index] : -1;
  return e;
}

std::string Toy2dDataset::describe() const {
  return fmt::format("toy2d {}: {} points{}", to_string(kind_), size_,
                     num_classes() > 0 ? fmt::format(", {} classes", num_classes()) : std::string());
}

}  // namespace diffuse
