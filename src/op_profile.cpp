#include "diffuse/op_profile.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <map>

namespace diffuse {

namespace {

using Clock = std::chrono::steady_clock;

struct Frame {
  const char* name;
  Clock::time_point start;
  double child_ms;
};

struct Totals {
  int64_t calls = 0;
  double self_ms = 0, total_ms = 0;
};

thread_local std::vector<Frame>* t_stack = nullptr;
thread_local std::map<std::string, Totals>* t_totals = nullptr;

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction& fn) {
  if (t_stack && fn.name()) t_stack->push_back({fn.name(), Clock::now(), 0.0});
  return nullptr;
}

void on_exit(const at::RecordFunction& fn, at::ObserverContext*) {
  if (!t_stack || !fn.name() || t_stack->empty()) return;
  const Frame f = t_stack->back();
  t_stack->pop_back();
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - f.start).count();
  auto& t = (*t_totals)[f.name];
  ++t.calls;
  t.self_ms += ms - f.child_ms;
  t.total_ms += ms;
  if (!t_stack->empty()) t_stack->back().child_ms += ms;
}

}  // namespace

OpProfile profile_ops(const std::function<void()>& fn) {
  std::vector<Frame> stack;
  std::map<std::string, Totals> totals;
  t_stack = &stack;
  t_totals = &totals;
  auto handle = at::addThreadLocalCallback(at::RecordFunctionCallback(on_enter, on_exit));
  const auto start = Clock::now();
  try {
    fn();
  } catch (...) {
    at::removeCallback(handle);
    t_stack = nullptr;
    t_totals = nullptr;
    throw;
  }
  OpProfile out;
  out.wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  at::removeCallback(handle);
  t_stack = nullptr;
  t_totals = nullptr;
  for (const auto& [name, t] : totals) out.ops.push_back({name, t.calls, t.self_ms, t.total_ms});
  std::sort(out.ops.begin(), out.ops.end(), [](const OpTime& a, const OpTime& b) { return a.self_ms > b.self_ms; });
  return out;
}

}  // namespace diffuse
