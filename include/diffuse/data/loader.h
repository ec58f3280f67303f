// A threaded, deterministic batch loader over a Dataset.
//
// Order: epoch e visits a permutation of the dataset computed from (seed, e) alone
// (std::mt19937_64 seeded with a SplitMix64 mix of seed and e, Fisher-Yates with unbiased
// rejection sampling; identity when shuffle is off). With world_size W, rank r takes the
// positions r, r + W, r + 2W, ... of that permutation: ranks are disjoint and together cover
// the epoch. drop_last drops the tail that does not fill a whole slice (N mod W) and a whole
// batch; without it the permutation wraps around so that every rank gets ceil(N / W) examples
// (as torch's DistributedSampler) and the last batch of an epoch may be short.
// The horizontal flip of the example at position p of epoch e is a hash of (seed, e, p).
//
// So a batch depends only on (seed, epoch, offset): a run resumed at position() sees exactly the
// batches an uninterrupted run would. Worker threads load and collate whole batches ahead
// (at most `prefetch` batches in flight or ready); next() hands them out in order whatever the
// thread timing. An exception while loading is rethrown by the next() that reaches that batch,
// and by every later call (the loader is then broken; seek() resets it).
#pragma once

#include <torch/types.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "diffuse/config.h"
#include "diffuse/data/dataset.h"

namespace diffuse {

struct LoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = true;
  uint64_t seed = 0;
  bool drop_last = true;
  int64_t workers = 2;   // 0 = load in the calling thread
  int64_t prefetch = 4;  // batches loaded ahead (>= 1)
  bool random_flip = false;
  int64_t rank = 0, world_size = 1;
  bool pin_memory = false;  // page-locked batches (only when CUDA is available)
};

// From the data section: workers, prefetch, random_flip.
LoaderOptions loader_options(const DataConfig& cfg, int64_t batch_size, uint64_t seed, int64_t rank = 0,
                             int64_t world_size = 1);

struct Batch {
  torch::Tensor x;  // [B, ...] float32
  torch::Tensor y;  // int64 [B], -1 where there is no label
};

// Where the next batch starts: an epoch and an example offset into this rank's part of it.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t offset = 0;
  bool operator==(const LoaderPosition& o) const { return epoch == o.epoch && offset == o.offset; }
  bool operator!=(const LoaderPosition& o) const { return !(*this == o); }
};

class DataLoader {
 public:
  // UsageError for bad options (batch_size < 1, rank outside [0, world_size), a dataset smaller
  // than one batch per rank with drop_last, random_flip on non-image examples).
  DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& options, LoaderPosition start = {});
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch; epochs follow each other endlessly.
  Batch next();
  // The position of the batch next() will return (an exhausted epoch reads as {epoch + 1, 0}).
  LoaderPosition position() const;
  // Continue from `position` (e.g. one saved in a checkpoint); drops prefetched batches.
  void seek(LoaderPosition position);

  int64_t examples_per_epoch() const { return per_rank_; }  // this rank's
  int64_t batches_per_epoch() const;
  // This rank's dataset indices for an epoch, in visiting order, and their flips.
  std::vector<int64_t> epoch_indices(int64_t epoch) const;
  bool flipped(int64_t epoch, int64_t offset) const;  // the example at this rank's offset
  const LoaderOptions& options() const { return options_; }
  const Dataset& dataset() const { return *dataset_; }

 private:
  struct Job {
    int64_t seq = 0;
    std::vector<int64_t> indices;
    std::vector<uint8_t> flips;
    LoaderPosition end;  // the position after this batch
  };
  struct Result {
    Batch batch;
    std::exception_ptr error;
    LoaderPosition end;
  };

  LoaderPosition normalize(LoaderPosition p) const;
  Job make_job(LoaderPosition& cursor);  // under mu_; advances cursor
  const std::vector<int64_t>& cached_epoch(int64_t epoch);
  Batch load(const Job& job) const;
  void start_workers();
  void stop_workers();
  void worker_loop();

  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions options_;
  int64_t size_ = 0, per_rank_ = 0;

  mutable std::mutex mu_;
  std::condition_variable work_cv_, ready_cv_;
  bool stop_ = false;
  LoaderPosition consumer_, producer_;
  int64_t next_claim_ = 0, next_return_ = 0;
  std::map<int64_t, Result> ready_;
  std::exception_ptr failed_;
  int64_t cache_epoch_ = -1;
  std::vector<int64_t> cache_indices_;
  std::vector<std::thread> threads_;
};

}  // namespace diffuse
