// Process-wide runtime settings: threads, BLAS pool, device choice, version information.
#pragma once

#include <torch/types.h>

#include <string>

namespace diffuse {

// CPUs this process may use: the machine's, narrowed by its affinity mask (taskset, cpusets)
// and a cgroup-v2 CPU quota (containers, systemd CPUQuota=).
int available_cores();

// The tightest cgroup-v2 CPU quota, in CPUs, over the process's cgroup and its ancestors (each
// level's cpu.max); infinity when none is set or cgroup v2 is not mounted. The paths are
// parameters for tests.
double cgroup_cpu_limit(const std::string& cgroup_root = "/sys/fs/cgroup",
                        const std::string& proc_cgroup = "/proc/self/cgroup");

// What threads = 0 means: OMP_NUM_THREADS when it is set to a positive integer, else
// available_cores().
int default_thread_count();

// Sets LibTorch's intra-op threads (0 = default_thread_count()) and holds OpenBLAS's own pool to one
// thread, so the two pools do not compete for the same cores (docs/decisions.md, "Threads").
// Returns the thread count in effect.
int configure_threads(int threads);

// "auto" (CUDA when available), "cpu", "cuda" or "cuda:N". Throws UsageError when CUDA is
// asked for and absent, or for an unknown name.
torch::Device resolve_device(const std::string& name);

// Makes a CUDA device the current one (kernels and NCCL's communicator of this rank go there,
// not to GPU 0); nothing on the CPU.
void make_current_device(const torch::Device& device);

// True when the CPU has native bf16 arithmetic (avx512_bf16 or AMX), from /proc/cpuinfo.
bool cpu_has_native_bf16();

// train.precision 'auto' -> bf16 on Ampere-or-newer GPUs (fp16 on Volta/Turing, fp32 before) and on
// CPUs with native bf16, else fp32; others unchanged.
std::string resolve_precision(const std::string& precision, const torch::Device& device);

// Peak resident memory of this process so far, in MiB (getrusage).
double peak_rss_mib();

// Peak memory the CUDA caching allocator handed out on `device` since the last reset, in MiB
// (torch.cuda.max_memory_allocated); NaN on the CPU or where the build has no CUDA headers.
double peak_device_memory_mib(const torch::Device& device);
void reset_peak_device_memory(const torch::Device& device);

// Lines for `diffuse --version`: diffuse and LibTorch versions, CUDA availability and devices.
std::string version_report();

}  // namespace diffuse
