// Data-parallel ranks: the launch environment (torchrun's contract) and a process group over
// LibTorch's c10d (Gloo on CPU, NCCL on CUDA). With one rank every collective is the identity
// and no c10d object is made, so single-process runs pay nothing.
//
// Collectives must be called in the same order on every rank. A failed or timed-out collective
// throws DistError naming this rank, the operation and, where the others' heartbeats tell, the
// rank that died or hung.
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffuse {

// The launcher's variables (torchrun, `diffuse train --nproc-per-node`, or an srun wrapper).
struct DistEnv {
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;   // TORCHELASTIC_USE_AGENT_STORE=True: the launcher hosts the store
  int64_t restart_count = 0;  // TORCHELASTIC_RESTART_COUNT
  bool launched() const { return world_size > 1; }
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and the
// torchelastic variables; all absent means one rank. Throws UsageError naming a variable that
// is malformed or inconsistent (RANK outside [0, WORLD_SIZE), WORLD_SIZE without MASTER_ADDR...).
DistEnv read_dist_env();

// The device a rank computes on, made current: `name` as train.device / --device reads it; under
// a launcher a CUDA device without an index is LOCAL_RANK's (one GPU per rank).
torch::Device rank_device(const std::string& name, const DistEnv& env);

struct DistOptions {
  std::string backend = "auto";  // auto | gloo | nccl (auto: nccl for a CUDA device, else gloo)
  std::chrono::seconds timeout{1800};
  torch::Device device = torch::kCPU;  // where the tensors given to collectives live
};

// Raised when a collective fails (a peer died, a timeout, a broken connection).
class DistError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A collective started without waiting (gradient buckets during backward).
class PendingCollective {
 public:
  PendingCollective();
  ~PendingCollective();
  PendingCollective(PendingCollective&&) noexcept;
  PendingCollective& operator=(PendingCollective&&) noexcept;
  void wait();  // throws DistError
  bool pending() const { return impl_ != nullptr; }

 private:
  friend class ProcessGroup;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class ProcessGroup {
 public:
  // One rank: no communication at all.
  ProcessGroup();
  // Joins the group described by env (blocking until every rank has joined or the timeout).
  ProcessGroup(const DistEnv& env, const DistOptions& options);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  bool distributed() const { return world_size_ > 1; }
  const std::string& backend() const { return backend_; }  // "none" for one rank

  // Elementwise sum over ranks, in place (t must be contiguous).
  void all_reduce_sum(torch::Tensor& t, const char* what);
  PendingCollective all_reduce_sum_async(torch::Tensor& t, const char* what);
  // Elementwise maximum over ranks, in place.
  void all_reduce_max(torch::Tensor& t, const char* what);
  // Root's values into every rank's t (same shape and dtype everywhere), in place.
  void broadcast(torch::Tensor& t, int64_t root, const char* what);
  // [world_size, ...t.sizes()]: every rank's t (same shape everywhere), rank order.
  torch::Tensor all_gather(const torch::Tensor& t, const char* what);
  void barrier(const char* what);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t rank_ = 0, world_size_ = 1;
  std::string backend_ = "none";
};

// Broadcasts a variable-length byte string from root (sizes first), e.g. a checkpoint or a
// file's contents for ranks that cannot read it.
std::string broadcast_bytes(ProcessGroup& pg, const std::string& bytes, int64_t root, const char* what);

// Every rank's string, in rank order (e.g. each rank's error during set-up, empty if none).
std::vector<std::string> all_gather_strings(ProcessGroup& pg, const std::string& s, const char* what);

// [sum_r n_r, ...]: every rank's t concatenated in rank order; the first dimension may differ
// between ranks (padded for the transfer, trimmed after).
torch::Tensor all_gather_rows(ProcessGroup& pg, const torch::Tensor& t, const char* what);

// The contiguous block [begin, end) of n items that rank r of w takes (the first n mod w ranks
// take one more), so that concatenating the blocks in rank order gives 0..n-1.
struct RankSlice {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
RankSlice rank_slice(int64_t n, int64_t rank, int64_t world_size);

}  // namespace diffuse
