#include "diffuse/data/loader.h"

#include <fmt/format.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "diffuse/error.h"
#include "diffuse/rng.h"
#include "diffuse/shape_string.h"

namespace diffuse {

namespace {

uint64_t mix(uint64_t a, uint64_t b) { return splitmix64(splitmix64(a) ^ (b + 0x632be59bd9b4e019ULL)); }

constexpr uint64_t kOrderTag = 0x6f726465725f7631ULL;  // "order_v1"
constexpr uint64_t kFlipTag = 0x666c69705f5f7631ULL;   // "flip__v1"

bool flip_at(uint64_t seed, int64_t epoch, int64_t position) {
  return mix(mix(seed ^ kFlipTag, static_cast<uint64_t>(epoch)), static_cast<uint64_t>(position)) >> 63;
}

}  // namespace

LoaderOptions loader_options(const DataConfig& cfg, int64_t batch_size, uint64_t seed, int64_t rank,
                             int64_t world_size) {
  LoaderOptions o;
  o.batch_size = batch_size;
  o.seed = seed;
  o.workers = cfg.workers;
  o.prefetch = cfg.prefetch;
  o.random_flip = cfg.random_flip;
  o.rank = rank;
  o.world_size = world_size;
  return o;
}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& options, LoaderPosition start)
    : dataset_(std::move(dataset)), options_(options) {
  if (!dataset_) throw std::invalid_argument("DataLoader: null dataset");
  const auto& o = options_;
  if (o.batch_size < 1) throw UsageError(fmt::format("batch size must be >= 1, got {}", o.batch_size));
  if (o.workers < 0) throw UsageError(fmt::format("data.workers must be >= 0, got {}", o.workers));
  if (o.prefetch < 1) throw UsageError(fmt::format("data.prefetch must be >= 1, got {}", o.prefetch));
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size)
    throw UsageError(fmt::format("rank {} is not in [0, world_size = {})", o.rank, o.world_size));
  size_ = dataset_->size();
  if (size_ < 1) throw UsageError("the dataset is empty: " + dataset_->describe());
  per_rank_ = o.drop_last ? size_ / o.world_size : (size_ + o.world_size - 1) / o.world_size;
  if (o.drop_last && per_rank_ < o.batch_size)
    throw UsageError(fmt::format("{} examples{} do not fill one batch of {} (drop_last): {}", size_,
                                 o.world_size > 1 ? fmt::format(" ({} per rank)", per_rank_) : std::string(),
                                 o.batch_size, dataset_->describe()));
  if (o.random_flip && dataset_->shape().size() != 3)
    throw UsageError(fmt::format("random_flip needs image examples [C,H,W]; this dataset's are {}",
                                 shape_string(dataset_->shape())));
  consumer_ = producer_ = normalize(start);
  start_workers();
}

DataLoader::~DataLoader() { stop_workers(); }

int64_t DataLoader::batches_per_epoch() const {
  const int64_t b = options_.batch_size;
  return options_.drop_last ? per_rank_ / b : (per_rank_ + b - 1) / b;
}

LoaderPosition DataLoader::normalize(LoaderPosition p) const {
  if (p.epoch < 0 || p.offset < 0 || p.offset > per_rank_)
    throw UsageError(
        fmt::format("loader position (epoch {}, offset {}) is invalid: offsets run 0..{} "
                    "(examples per epoch for this rank)",
                    p.epoch, p.offset, per_rank_));
  if (p.offset == per_rank_ || (options_.drop_last && p.offset + options_.batch_size > per_rank_))
    return {p.epoch + 1, 0};
  return p;
}

std::vector<int64_t> DataLoader::epoch_indices(int64_t epoch) const {
  std::vector<int64_t> perm(size_);
  std::iota(perm.begin(), perm.end(), 0);
  if (options_.shuffle) {
    std::mt19937_64 rng(mix(options_.seed ^ kOrderTag, static_cast<uint64_t>(epoch)));
    for (int64_t i = size_ - 1; i > 0; --i) std::swap(perm[i], perm[uniform_below(rng, static_cast<uint64_t>(i) + 1)]);
  }
  // Rank r owns positions r, r + W, ...; positions past the end wrap (no drop_last).
  std::vector<int64_t> mine(per_rank_);
  for (int64_t j = 0; j < per_rank_; ++j) mine[j] = perm[(options_.rank + options_.world_size * j) % size_];
  return mine;
}

bool DataLoader::flipped(int64_t epoch, int64_t offset) const {
  return options_.random_flip && flip_at(options_.seed, epoch, options_.rank + options_.world_size * offset);
}

const std::vector<int64_t>& DataLoader::cached_epoch(int64_t epoch) {
  if (epoch != cache_epoch_) {
    cache_indices_ = epoch_indices(epoch);
    cache_epoch_ = epoch;
  }
  return cache_indices_;
}

DataLoader::Job DataLoader::make_job(LoaderPosition& cursor) {
  const auto& indices = cached_epoch(cursor.epoch);
  const int64_t count = std::min(options_.batch_size, per_rank_ - cursor.offset);
  Job job;
  job.indices.assign(indices.begin() + cursor.offset, indices.begin() + cursor.offset + count);
  job.flips.resize(count);
  for (int64_t i = 0; i < count; ++i) job.flips[i] = flipped(cursor.epoch, cursor.offset + i);
  cursor = normalize({cursor.epoch, cursor.offset + count});
  job.end = cursor;
  return job;
}

Batch DataLoader::load(const Job& job) const {
  const auto b = static_cast<int64_t>(job.indices.size());
  Example first = dataset_->get(job.indices[0]);
  const auto shape = first.x.sizes().vec();
  std::vector<int64_t> batch_shape{b};
  batch_shape.insert(batch_shape.end(), shape.begin(), shape.end());
  auto opts = first.x.options().device(torch::kCPU);
  if (options_.pin_memory && torch::cuda::is_available()) opts = opts.pinned_memory(true);
  Batch out;
  out.x = torch::empty(batch_shape, opts);
  out.y = torch::empty({b}, torch::kInt64);
  int64_t* y = out.y.data_ptr<int64_t>();
  const int64_t numel = first.x.numel();
  for (int64_t i = 0; i < b; ++i) {
    Example e = i == 0 ? std::move(first) : dataset_->get(job.indices[i]);
    if (e.x.sizes() != shape)
      throw UsageError(fmt::format("example {} has shape {}, example {} has {} (examples must share one shape): {}",
                                   job.indices[i], shape_string(e.x.sizes().vec()), job.indices[0], shape_string(shape),
                                   dataset_->describe()));
    if (e.x.scalar_type() == torch::kFloat32 && e.x.device().is_cpu()) {
      // Plain copies: no per-example tensor dispatch.
      const auto src_t = e.x.contiguous();
      const float* src = src_t.data_ptr<float>();
      float* dst = out.x.data_ptr<float>() + i * numel;
      if (!job.flips[i]) {
        std::memcpy(dst, src, numel * sizeof(float));
      } else {
        const int64_t w = shape.back();
        for (int64_t r = 0; r < numel; r += w) std::reverse_copy(src + r, src + r + w, dst + r);
      }
    } else {
      auto dst = out.x[i];
      if (job.flips[i]) dst.copy_(e.x.flip({-1}));
      else dst.copy_(e.x);
    }
    y[i] = e.label;
  }
  return out;
}

Batch DataLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  if (failed_) std::rethrow_exception(failed_);
  if (threads_.empty()) {
    LoaderPosition cursor = consumer_;
    const Job job = make_job(cursor);
    Batch b = load(job);  // on error the position stays, and the call can be retried
    consumer_ = cursor;
    return b;
  }
  ready_cv_.wait(lock, [&] { return ready_.count(next_return_) > 0; });
  auto node = ready_.extract(next_return_);
  Result& r = node.mapped();
  if (r.error) {
    failed_ = r.error;
    std::rethrow_exception(failed_);
  }
  ++next_return_;
  consumer_ = r.end;
  lock.unlock();
  work_cv_.notify_all();
  return std::move(r.batch);
}

LoaderPosition DataLoader::position() const {
  std::lock_guard<std::mutex> lock(mu_);
  return consumer_;
}

void DataLoader::seek(LoaderPosition position) {
  const LoaderPosition p = normalize(position);
  stop_workers();
  ready_.clear();
  failed_ = nullptr;
  next_claim_ = next_return_ = 0;
  consumer_ = producer_ = p;
  start_workers();
}

void DataLoader::start_workers() {
  stop_ = false;
  for (int64_t i = 0; i < options_.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

void DataLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void DataLoader::worker_loop() {
  for (;;) {
    Job job;
    Result result;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || next_claim_ < next_return_ + options_.prefetch; });
      if (stop_) return;
      job.seq = next_claim_++;
      try {
        Job made = make_job(producer_);
        made.seq = job.seq;
        job = std::move(made);
      } catch (...) {
        result.error = std::current_exception();
      }
    }
    if (!result.error) {
      try {
        result.batch = load(job);
        result.end = job.end;
      } catch (...) {
        result.error = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(job.seq, std::move(result));
    }
    ready_cv_.notify_all();
  }
}

}  // namespace diffuse
