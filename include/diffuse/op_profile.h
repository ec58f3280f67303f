// Where a piece of work spends its time, operator by operator: LibTorch's RecordFunction
// callbacks on the calling thread, each operator's self time (its time less that of the
// operators it called), summed by name. `diffuse bench --profile` prints it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace diffuse {

struct OpTime {
  std::string name;
  int64_t calls = 0;
  double self_ms = 0;   // time inside the operator, not in operators it called
  double total_ms = 0;  // with them (an operator that recurses into itself counts once per call)
};

struct OpProfile {
  std::vector<OpTime> ops;  // by self time, largest first
  double wall_ms = 0;       // of `fn` in all
};

// Runs `fn` once and reports its operators. Only operators entered on the calling thread are
// seen (LibTorch's intra-op workers run kernels, not operators).
OpProfile profile_ops(const std::function<void()>& fn);

}  // namespace diffuse
