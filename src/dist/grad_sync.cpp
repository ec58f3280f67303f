#include "diffuse/dist/grad_sync.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <mutex>

#include "diffuse/dist/process_group.h"

namespace diffuse {

struct GradientSync::Impl {
  struct Slot {
    torch::Tensor param;
    int64_t bucket = 0, offset = 0;  // where its gradient lives in the bucket's flat buffer
  };
  struct Bucket {
    torch::Tensor flat;
    int64_t size = 0, waiting = 0;  // parameters still without a gradient this step
    PendingCollective work;
    bool started = false;
  };

  ProcessGroup& group;
  std::vector<Slot> slots;
  std::vector<Bucket> buckets;
  std::vector<bool> ready;
  bool armed = false;
  int64_t next_to_start = 0;
  double wait_seconds = 0.0;
  std::mutex mu;  // hooks of one backward may run on several engine threads (CUDA)

  Impl(ProcessGroup& g) : group(g) {}

  void reset_step() {
    std::fill(ready.begin(), ready.end(), false);
    for (auto& b : buckets) {
      b.waiting = b.size;
      b.started = false;
    }
    next_to_start = 0;
  }

  // Start every bucket from next_to_start on whose gradients are all in, in index order.
  void start_ready_buckets() {
    while (next_to_start < static_cast<int64_t>(buckets.size()) && buckets[next_to_start].waiting == 0) {
      auto& b = buckets[next_to_start++];
      b.work = group.all_reduce_sum_async(b.flat, "gradient bucket");
      b.started = true;
    }
  }

  // The gradient this backward adds, plus what earlier micro-batches accumulated in .grad: the
  // step's whole gradient, copied into the bucket before autograd accumulates it.
  void on_gradient(int64_t i, const torch::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || ready[i]) return;
    auto& s = slots[i];
    auto view = buckets[s.bucket].flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
    view.copy_(grad);
    if (s.param.grad().defined()) view.add_(s.param.grad());
    ready[i] = true;
    --buckets[s.bucket].waiting;
    start_ready_buckets();
  }
};

GradientSync::GradientSync(ProcessGroup& group, std::vector<torch::Tensor> parameters, int64_t bucket_bytes)
    : impl_(std::make_unique<Impl>(group)) {
  auto& m = *impl_;
  std::vector<torch::Tensor> params;
  for (auto& p : parameters)
    if (p.requires_grad()) params.push_back(p);
  // Reverse order: the last layers' gradients arrive first in backward. A bucket holds one dtype.
  std::vector<int64_t> numel;
  int64_t bytes = 0;
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    const int64_t b = it->numel() * static_cast<int64_t>(it->element_size());
    const bool other_dtype = !m.slots.empty() && m.slots.back().param.dtype() != it->dtype();
    if (m.buckets.empty() || other_dtype || (bytes > 0 && bytes + b > bucket_bytes)) {
      m.buckets.emplace_back();
      numel.push_back(0);
      bytes = 0;
    }
    const int64_t k = static_cast<int64_t>(m.buckets.size()) - 1;
    m.slots.push_back({*it, k, numel[k]});
    numel[k] += it->numel();
    ++m.buckets[k].size;
    bytes += b;
  }
  for (size_t k = 0; k < m.buckets.size(); ++k) {
    const auto& first = m.slots[std::find_if(m.slots.begin(), m.slots.end(),
                                             [&](const Impl::Slot& s) { return s.bucket == int64_t(k); }) -
                                m.slots.begin()]
                            .param;
    m.buckets[k].flat = torch::zeros({numel[k]}, first.options().requires_grad(false));
  }
  m.ready.assign(m.slots.size(), false);
  for (size_t i = 0; i < m.slots.size(); ++i) {
    auto* impl = impl_.get();
    const int64_t index = static_cast<int64_t>(i);
    m.slots[i].param.register_hook([impl, index](torch::Tensor grad) { impl->on_gradient(index, grad); });
  }
  m.reset_step();
}

GradientSync::~GradientSync() = default;

void GradientSync::arm() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->reset_step();
  impl_->armed = true;
}

void GradientSync::finish() {
  auto& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    for (size_t i = 0; i < m.slots.size(); ++i) {
      if (m.ready[i]) continue;
      // No gradient from this backward (an unused parameter): the accumulated one, or zero.
      auto& s = m.slots[i];
      auto view = m.buckets[s.bucket].flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
      if (s.param.grad().defined()) view.copy_(s.param.grad());
      else view.zero_();
      m.ready[i] = true;
      --m.buckets[s.bucket].waiting;
    }
    m.start_ready_buckets();
    m.armed = false;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& b : m.buckets) b.work.wait();
  m.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double inv = 1.0 / static_cast<double>(m.group.world_size());
  torch::NoGradGuard no_grad;
  for (auto& b : m.buckets) b.flat.mul_(inv);
  for (auto& s : m.slots) {
    auto view = m.buckets[s.bucket].flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
    if (s.param.grad().defined()) s.param.mutable_grad().copy_(view);
    else s.param.mutable_grad() = view.clone().contiguous(s.param.suggest_memory_format());
  }
}

int64_t GradientSync::num_buckets() const { return static_cast<int64_t>(impl_->buckets.size()); }
double GradientSync::last_wait_seconds() const { return impl_->wait_seconds; }

}  // namespace diffuse
