#include "diffuse/runtime.h"

#include <dlfcn.h>
#include <sched.h>
#include <sys/resource.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include <fmt/format.h>

#include "diffuse/error.h"

// Device names need the CUDA runtime headers, present only in CUDA builds of LibTorch.
#if defined(DIFFUSE_WITH_CUDA) && __has_include(<ATen/cuda/CUDAContext.h>) && __has_include(<cuda_runtime_api.h>)
#include <ATen/cuda/CUDAContext.h>
#define DIFFUSE_CUDA_NAMES 1
#endif
#if defined(DIFFUSE_CUDA_NAMES) && __has_include(<c10/cuda/CUDAFunctions.h>)
#include <c10/cuda/CUDAFunctions.h>
#define DIFFUSE_CUDA_SET_DEVICE 1
#endif
#if defined(DIFFUSE_CUDA_NAMES) && __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define DIFFUSE_CUDA_MEMORY_STATS 1
#endif

namespace diffuse {

namespace {
[[maybe_unused]] int cuda_index(const torch::Device& device) { return device.index() < 0 ? 0 : device.index(); }
}  // namespace

void make_current_device(const torch::Device& device) {
#ifdef DIFFUSE_CUDA_SET_DEVICE
  if (device.is_cuda()) c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_index(device)));
#endif
}

double cgroup_cpu_limit(const std::string& cgroup_root, const std::string& proc_cgroup) {
  // The process's cgroup-v2 path is the "0::PATH" line; inside a container with its own cgroup
  // namespace it is "/", elsewhere (systemd CPUQuota=, a limit on a parent) a nested path.
  std::string rel = "/";
  {
    std::ifstream in(proc_cgroup);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("0::", 0) == 0) rel = line.substr(3);
  }
  double limit = std::numeric_limits<double>::infinity();
  // Every level's cpu.max ("QUOTA PERIOD", or "max PERIOD" for none) applies: take the tightest.
  for (auto level = std::filesystem::path(rel).relative_path();; level = level.parent_path()) {
    std::ifstream in(std::filesystem::path(cgroup_root) / level / "cpu.max");
    std::string quota;
    double period = 0;
    if (in >> quota >> period && quota != "max" && period > 0) {
      const double q = std::strtod(quota.c_str(), nullptr);
      if (q > 0) limit = std::min(limit, q / period);
    }
    if (level.empty()) break;  // the root has been read
  }
  return limit;
}

int available_cores() {
  int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // A container or `taskset` may allow fewer CPUs than the machine has.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = std::max(1, std::min(n, CPU_COUNT(&set)));
  // A CPU quota caps the usable cores too (1.5 CPUs of quota: 2 threads).
  const double quota = cgroup_cpu_limit();
  if (std::isfinite(quota)) n = std::max(1, std::min(n, static_cast<int>(std::ceil(quota))));
  return n;
}

int default_thread_count() {
  // The usual convention (PyTorch, NumPy, OpenMP itself): OMP_NUM_THREADS, when set to a
  // positive integer, is the default. Several jobs on one machine each taking every core
  // oversubscribe it, and OpenMP's spin-waiting then costs far more than the lost parallelism
  // (two 2-thread jobs on 2 cores measured ~2.8x slower than running them one after the other).
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v <= 4096) return static_cast<int>(v);
  }
  return available_cores();
}

int configure_threads(int threads) {
  if (threads < 0) throw UsageError("threads must be >= 0 (0 = the default), got " + std::to_string(threads));
  const int n = threads == 0 ? default_thread_count() : threads;
  torch::set_num_threads(n);
  // OpenBLAS (and some other BLAS builds) expose this; resolve it at run time so the binary
  // does not depend on which BLAS LibTorch was linked against.
  using SetThreads = void (*)(int);
  for (const char* name : {"openblas_set_num_threads", "goto_set_num_threads"}) {
    if (auto fn = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, name))) {
      fn(1);
      break;
    }
  }
  return n;
}

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw UsageError("device '" + name +
                       "' was asked for, but CUDA is not available in this build/machine "
                       "(use device: auto or cpu)");
    torch::Device d(name == "cuda" ? std::string("cuda:0") : name);
    if (d.index() >= static_cast<int>(torch::cuda::device_count()))
      throw UsageError("device '" + name + "': only " + std::to_string(torch::cuda::device_count()) +
                       " CUDA device(s) present");
    return d;
  }
  throw_not_one_of("device", name, {"auto", "cpu", "cuda", "cuda:N"});
}

bool cpu_has_native_bf16() {
  static const bool has = [] {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("flags", 0) != 0) continue;
      return line.find(" avx512_bf16") != std::string::npos || line.find(" amx_bf16") != std::string::npos;
    }
    return false;
  }();
  return has;
}

std::string resolve_precision(const std::string& precision, const torch::Device& device) {
  if (precision != "auto") return precision;
  if (device.is_cuda()) {
#ifdef DIFFUSE_CUDA_NAMES
    // bf16 needs Ampere (compute capability 8.0) or newer; Volta and Turing have fp16 tensor
    // cores (the trainer scales the loss), older GPUs neither.
    const int major = at::cuda::getDeviceProperties(cuda_index(device))->major;
    if (major < 8) return major >= 7 ? "fp16" : "fp32";
#endif
    return "bf16";
  }
  return cpu_has_native_bf16() ? "bf16" : "fp32";
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

void reset_peak_device_memory(const torch::Device& device) {
#ifdef DIFFUSE_CUDA_MEMORY_STATS
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(cuda_index(device));
#endif
}

double peak_device_memory_mib(const torch::Device& device) {
#ifdef DIFFUSE_CUDA_MEMORY_STATS
  if (device.is_cuda()) {
    // allocated_bytes[0]: the aggregate over both pools (StatType::AGGREGATE), as
    // torch.cuda.max_memory_allocated reports it.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(cuda_index(device));
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);
  }
#endif
  return std::numeric_limits<double>::quiet_NaN();
}

std::string version_report() {
  std::string out = fmt::format("diffuse {}\nLibTorch {}\n", DIFFUSE_VERSION, TORCH_VERSION);
  const bool cuda = torch::cuda::is_available();
  out += fmt::format("CUDA available: {}\n", cuda ? "yes" : "no");
  if (cuda) {
    const auto n = torch::cuda::device_count();
    for (size_t i = 0; i < n; ++i) {
#ifdef DIFFUSE_CUDA_NAMES
      out += fmt::format("  cuda:{} {}\n", i, at::cuda::getDeviceProperties(static_cast<int>(i))->name);
#else
      out += fmt::format("  cuda:{}\n", i);
#endif
    }
  }
  out += fmt::format(
      "CPU threads by default: {} (usable cores: {}, machine: {}{})\n", default_thread_count(), available_cores(),
      std::thread::hardware_concurrency(),
      std::getenv("OMP_NUM_THREADS") ? fmt::format(", OMP_NUM_THREADS={}", std::getenv("OMP_NUM_THREADS")) : "");
  return out;
}

}  // namespace diffuse
