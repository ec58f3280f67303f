// A GaussianDiffusion over a standard schedule, for the math tests.
#pragma once

#include "diffuse/diffusion.h"

namespace diffuse::test {

inline GaussianDiffusion make_diffusion(ScheduleKind kind, int64_t T, VarianceType v = VarianceType::FixedSmall,
                                        Prediction p = Prediction::Epsilon) {
  ScheduleSpec s;
  s.kind = kind;
  s.timesteps = T;
  return GaussianDiffusion(NoiseSchedule::from_spec(s), p, v);
}

}  // namespace diffuse::test
