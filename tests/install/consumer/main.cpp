// Uses the installed library: a cosine schedule's alpha_bar against its closed form
// (Nichol & Dhariwal eq. 17) and a tensor built through LibTorch, then prints "ok".
#include <diffuse/schedule.h>
#include <torch/types.h>

#include <cmath>
#include <cstdio>

int main() {
  diffuse::ScheduleSpec spec;
  spec.kind = diffuse::ScheduleKind::Cosine;
  spec.timesteps = 100;
  const auto betas = diffuse::make_betas(spec);
  const double pi = std::acos(-1.0), s = 0.008;
  const auto f = [&](double t) { return std::pow(std::cos((t / 100 + s) / (1 + s) * pi / 2), 2); };
  double alpha_bar = 1;
  for (int i = 0; i < 50; ++i) alpha_bar *= 1 - betas[i];
  const double expected = f(50) / f(0);
  const auto t = torch::tensor(betas).sum().item<double>();
  if (betas.size() != 100 || std::abs(alpha_bar - expected) > 1e-12 || !(t > 0)) {
    std::printf("wrong: alpha_bar %.15g, expected %.15g\n", alpha_bar, expected);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
