// The only file that includes c10d: the LibTorch 1.13 / 2.x differences are kept here.
#include "diffuse/dist/process_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>
// A CUDA LibTorch built without NCCL leaves ProcessGroupNCCL.hpp empty.
#if defined(DIFFUSE_WITH_CUDA) && defined(USE_C10D_NCCL)
#define DIFFUSE_WITH_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <cstring>
#include <functional>
#include <cstdlib>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "diffuse/error.h"
#include "diffuse/runtime.h"

namespace diffuse {

namespace {

// 1.13: backends are ProcessGroups; 2.x: they derive from c10d::Backend (a ProcessGroup wraps
// them, which a single-backend group does not need).
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif
using WorkPtr = c10::intrusive_ptr<c10d::Work>;

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const auto v = env(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    const long long x = std::stoll(*v, &used);
    if (used == v->size() && x >= lo && x <= hi) return x;
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("environment variable {}='{}' is not an integer in [{}, {}]", name, *v, lo, hi));
}

bool is_loopback(const std::string& addr) { return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1"; }

std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

// LibTorch 2.4+ serves TCPStore through libuv by default, which Debian's 2.6 is built without;
// the classic server is in every version. Older versions lack the switch.
template <class T, class = void>
struct HasUseLibUV : std::false_type {};
template <class T>
struct HasUseLibUV<T, std::void_t<decltype(std::declval<T&>().useLibUV)>> : std::true_type {};
template <class Options>
void use_classic_store_server(Options& o) {
  if constexpr (HasUseLibUV<Options>::value) o.useLibUV = false;
}

constexpr auto kHeartbeatPeriod = std::chrono::milliseconds(1000);

std::string heartbeat_key(int64_t rank) { return fmt::format("diffuse/heartbeat/{}", rank); }

}  // namespace

DistEnv read_dist_env() {
  DistEnv e;
  if (!env("WORLD_SIZE") && !env("RANK")) return e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1, e.world_size);
  e.local_rank = env_int("LOCAL_RANK", e.rank % e.local_world_size, 0, e.local_world_size - 1);
  if (e.world_size > 1 && !env("MASTER_ADDR"))
    throw UsageError(
        fmt::format("WORLD_SIZE={} but MASTER_ADDR is not set: launch with torchrun, "
                    "`diffuse train --nproc-per-node N`, or set MASTER_ADDR and MASTER_PORT",
                    e.world_size));
  e.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
  e.master_port = static_cast<int>(env_int("MASTER_PORT", 29500, 1, 65535));
  e.agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 30);
  return e;
}

torch::Device rank_device(const std::string& name, const DistEnv& env) {
  auto device = resolve_device(name);
  if (device.is_cuda() && env.launched() && name.find(':') == std::string::npos)
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  make_current_device(device);
  return device;
}

RankSlice rank_slice(int64_t n, int64_t rank, int64_t world_size) {
  const int64_t base = n / world_size, extra = n % world_size;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

// --- PendingCollective ------------------------------------------------------------------------

struct PendingCollective::Impl {
  WorkPtr work;
  torch::Tensor staged, target;  // a copy on the communication device, copied back after the wait
  std::function<std::string(const std::exception&)> describe;  // the error message on failure
};

PendingCollective::PendingCollective() = default;
PendingCollective::~PendingCollective() {
  if (impl_) {
    try {
      impl_->work->wait();  // a tensor must not be freed under a running collective
    } catch (...) {
    }
  }
}
PendingCollective::PendingCollective(PendingCollective&&) noexcept = default;
PendingCollective& PendingCollective::operator=(PendingCollective&& o) noexcept {
  if (this != &o) {
    PendingCollective old(std::move(*this));
    impl_ = std::move(o.impl_);
  }
  return *this;
}

void PendingCollective::wait() {
  if (!impl_) return;
  auto impl = std::move(impl_);
  try {
    impl->work->wait();
  } catch (const std::exception& e) {
    throw DistError(impl->describe(e));
  }
  if (impl->staged.defined()) impl->target.copy_(impl->staged);
}

// --- ProcessGroup -----------------------------------------------------------------------------

struct ProcessGroup::Impl {
  DistEnv env;
  DistOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Backend> backend;
  std::atomic<bool> stop{false};
  std::thread heartbeat;

  // A store connection of its own (TCPStore clients are not shared between threads).
  c10::intrusive_ptr<c10d::Store> connect(bool server, std::chrono::milliseconds timeout) const {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(env.master_port);
    o.isServer = server;
    o.numWorkers = server ? c10::optional<std::size_t>(env.world_size) : c10::nullopt;
    o.waitWorkers = false;
    o.timeout = timeout;
    use_classic_store_server(o);
    c10::intrusive_ptr<c10d::Store> s = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
    // torchrun's agent store: one key space per restart attempt, as torch.distributed uses it.
    if (env.agent_store)
      s = c10::make_intrusive<c10d::PrefixStore>(fmt::format("/worker/attempt_{}", env.restart_count), s);
    return s;
  }

  void beat_forever() {
    try {
      auto s = connect(false, std::chrono::milliseconds(options.timeout));
      for (int64_t n = 1; !stop.load(); ++n) {
        s->set(heartbeat_key(env.rank), to_bytes(std::to_string(n)));
        for (auto waited = std::chrono::milliseconds(0); waited < kHeartbeatPeriod && !stop.load();
             waited += std::chrono::milliseconds(50))
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } catch (...) {
      // The store went away (its host died): diagnose() reports that.
    }
  }

  // Which peers stopped beating: read every heartbeat twice, a few periods apart.
  std::string diagnose() const {
    try {
      auto s = connect(false, std::chrono::milliseconds(5000));
      auto read_all = [&] {
        std::vector<std::string> v(env.world_size);
        for (int64_t r = 0; r < env.world_size; ++r) {
          if (!s->check({heartbeat_key(r)})) continue;
          const auto b = s->get(heartbeat_key(r));
          v[r] = std::string(b.begin(), b.end());
        }
        return v;
      };
      const auto before = read_all();
      std::this_thread::sleep_for(3 * kHeartbeatPeriod);
      const auto after = read_all();
      std::vector<std::string> silent;
      for (int64_t r = 0; r < env.world_size; ++r)
        if (r != env.rank && (after[r].empty() || after[r] == before[r])) silent.push_back(std::to_string(r));
      if (silent.empty()) return "every rank is still alive, so one is stuck or called another collective";
      return fmt::format("rank{} {} stopped responding (died or hung)", silent.size() > 1 ? "s" : "", join(silent));
    } catch (const std::exception&) {
      return fmt::format("the store at {}:{} is gone, so {} died", env.master_addr, env.master_port,
                         env.agent_store ? "the launcher (torchrun's agent)" : "rank 0, which hosts it,");
    }
  }

  // NCCL takes CUDA tensors only: host tensors (flags, fingerprints, strings) travel through a
  // copy on this rank's device. Gloo takes both.
  torch::Tensor staged(const torch::Tensor& t) const {
    if (options.device.is_cuda() && !t.is_cuda() && backend_name == "nccl") return t.to(options.device);
    return t;
  }
  std::string backend_name;

  std::string failure(const char* op, const char* what, const std::exception& e) const {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    return fmt::format("rank {}: {} ({}) failed: {}; {} (train.dist_timeout {} s)", env.rank, op, what, msg, diagnose(),
                       options.timeout.count());
  }

  void wait(const WorkPtr& w, const char* op, const char* what) const {
    try {
      w->wait();
    } catch (const std::exception& e) {
      throw DistError(failure(op, what, e));
    }
  }

  template <class F>
  WorkPtr start(const char* op, const char* what, F&& f) const {
    try {
      return f();
    } catch (const std::exception& e) {
      throw DistError(failure(op, what, e));
    }
  }
};

ProcessGroup::ProcessGroup() = default;

ProcessGroup::ProcessGroup(const DistEnv& env, const DistOptions& options)
    : impl_(std::make_unique<Impl>()), rank_(env.rank), world_size_(env.world_size) {
  auto& m = *impl_;
  m.env = env;
  m.options = options;
  std::string backend = options.backend;
  if (backend == "auto") backend = options.device.is_cuda() ? "nccl" : "gloo";
  if (backend != "gloo" && backend != "nccl") throw_not_one_of("train.dist_backend", backend, {"auto", "gloo", "nccl"});
  if (backend == "nccl" && !options.device.is_cuda())
    throw UsageError("train.dist_backend: nccl needs a CUDA device (train.device); use gloo on the CPU");
  backend_ = backend;
  m.backend_name = backend;
  const auto timeout = std::chrono::milliseconds(options.timeout);
  try {
    m.store = m.connect(env.rank == 0 && !env.agent_store, timeout);
  } catch (const std::exception& e) {
    throw DistError(fmt::format("rank {}: cannot {} the rendezvous store at {}:{} (MASTER_ADDR:MASTER_PORT): {}",
                                env.rank, env.rank == 0 && !env.agent_store ? "host" : "reach", env.master_addr,
                                env.master_port, e.what()));
  }
  // The first beat before joining, so that a peer's diagnosis finds every rank that got this far.
  m.store->set(heartbeat_key(env.rank), to_bytes("0"));
  m.heartbeat = std::thread([&m] { m.beat_forever(); });
  auto group_store = c10::make_intrusive<c10d::PrefixStore>("diffuse/pg", m.store);
  try {
    if (backend == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      if (const auto ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (is_loopback(env.master_addr))
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      o->threads = 2;
      m.backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group_store, static_cast<int>(env.rank),
                                                              static_cast<int>(env.world_size), o);
    } else {
#ifdef DIFFUSE_WITH_NCCL
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      m.backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(group_store, static_cast<int>(env.rank),
                                                              static_cast<int>(env.world_size), o);
#else
      throw UsageError(
          "train.dist_backend: nccl, but this build of diffuse has no NCCL (LibTorch without CUDA or NCCL)");
#endif
    }
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    throw DistError(m.failure("joining the process group", backend.c_str(), e));
  }
  barrier("joining the process group");
}

ProcessGroup::~ProcessGroup() {
  if (!impl_) return;
  impl_->stop.store(true);
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
}

void ProcessGroup::all_reduce_sum(torch::Tensor& t, const char* what) { all_reduce_sum_async(t, what).wait(); }

PendingCollective ProcessGroup::all_reduce_sum_async(torch::Tensor& t, const char* what) {
  PendingCollective p;
  if (!distributed()) return p;
  auto* m = impl_.get();
  auto dev = m->staged(t);
  std::vector<at::Tensor> ts{dev};
  auto work = m->start("all-reduce", what, [&] { return m->backend->allreduce(ts); });
  p.impl_ = std::make_unique<PendingCollective::Impl>();
  p.impl_->work = work;
  if (!dev.is_same(t)) {
    p.impl_->staged = dev;
    p.impl_->target = t;
  }
  const std::string label = what;
  p.impl_->describe = [m, label](const std::exception& e) { return m->failure("all-reduce", label.c_str(), e); };
  return p;
}

void ProcessGroup::all_reduce_max(torch::Tensor& t, const char* what) {
  if (!distributed()) return;
  auto dev = impl_->staged(t);
  std::vector<at::Tensor> ts{dev};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  impl_->wait(impl_->start("all-reduce (max)", what, [&] { return impl_->backend->allreduce(ts, o); }),
              "all-reduce (max)", what);
  if (!dev.is_same(t)) t.copy_(dev);
}

void ProcessGroup::broadcast(torch::Tensor& t, int64_t root, const char* what) {
  if (!distributed()) return;
  auto dev = impl_->staged(t);
  std::vector<at::Tensor> ts{dev};
  c10d::BroadcastOptions o;
  o.rootRank = static_cast<int>(root);
  impl_->wait(impl_->start("broadcast", what, [&] { return impl_->backend->broadcast(ts, o); }), "broadcast", what);
  if (!dev.is_same(t)) t.copy_(dev);
}

torch::Tensor ProcessGroup::all_gather(const torch::Tensor& t, const char* what) {
  auto in = t.contiguous();
  std::vector<int64_t> sizes{world_size_};
  for (auto s : in.sizes()) sizes.push_back(s);
  auto out = torch::empty(sizes, in.options());
  // Gloo divides by the element count; every rank has the same shape, so all skip together.
  if (in.numel() == 0) return out;
  if (!distributed()) {
    out[0].copy_(in);
    return out;
  }
  auto dev_in = impl_->staged(in);
  auto dev_out = impl_->staged(out);
  std::vector<at::Tensor> inputs{dev_in};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int64_t r = 0; r < world_size_; ++r) outputs[0].push_back(dev_out[r]);
  impl_->wait(impl_->start("all-gather", what, [&] { return impl_->backend->allgather(outputs, inputs); }),
              "all-gather", what);
  return dev_out.is_same(out) ? out : dev_out.to(in.device());
}

void ProcessGroup::barrier(const char* what) {
  if (!distributed()) return;
  // A one-element all-reduce: Gloo's barrier has no timeout of its own in every version.
  auto t = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(impl_->options.device));
  all_reduce_sum(t, what);
}

std::string broadcast_bytes(ProcessGroup& pg, const std::string& bytes, int64_t root, const char* what) {
  if (!pg.distributed()) return bytes;
  auto n = torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kInt64);
  pg.broadcast(n, root, what);
  auto buf = torch::empty({n.item<int64_t>()}, torch::kUInt8);
  if (pg.rank() == root) std::memcpy(buf.data_ptr(), bytes.data(), bytes.size());
  pg.broadcast(buf, root, what);
  return std::string(reinterpret_cast<const char*>(buf.data_ptr()), static_cast<size_t>(buf.numel()));
}

namespace {

// Every rank's t in rank order, as one tensor each; the first dimension may differ between ranks
// (padded for the transfer, trimmed after). One all-gather of the counts, one of the rows.
std::vector<torch::Tensor> gather_row_parts(ProcessGroup& pg, const torch::Tensor& t, const char* what) {
  auto counts =
      pg.all_gather(torch::tensor({t.size(0)}, torch::TensorOptions().dtype(torch::kInt64).device(t.device())), what)
          .cpu();
  const int64_t most = counts.max().item<int64_t>();
  auto sizes = t.sizes().vec();
  sizes[0] = most;
  auto padded = torch::zeros(sizes, t.options());
  padded.narrow(0, 0, t.size(0)).copy_(t);
  auto all = pg.all_gather(padded, what);
  std::vector<torch::Tensor> parts;
  for (int64_t r = 0; r < pg.world_size(); ++r) parts.push_back(all[r].narrow(0, 0, counts[r][0].item<int64_t>()));
  return parts;
}

}  // namespace

std::vector<std::string> all_gather_strings(ProcessGroup& pg, const std::string& s, const char* what) {
  if (!pg.distributed()) return {s};
  auto bytes = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  if (!s.empty()) std::memcpy(bytes.data_ptr(), s.data(), s.size());
  std::vector<std::string> out;
  for (const auto& part : gather_row_parts(pg, bytes, what)) {
    const auto c = part.contiguous();
    out.emplace_back(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), static_cast<size_t>(c.numel()));
  }
  return out;
}

torch::Tensor all_gather_rows(ProcessGroup& pg, const torch::Tensor& t, const char* what) {
  if (!pg.distributed()) return t;
  return torch::cat(gather_row_parts(pg, t, what));
}

}  // namespace diffuse
