#include "fuzz/targets.h"

#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "diffuse/config.h"
#include "diffuse/data/cifar10.h"
#include "diffuse/data/file_bytes.h"
#include "diffuse/data/idx.h"
#include "diffuse/data/image_folder.h"
#include "diffuse/error.h"
#include "diffuse/eval/fid.h"
#include "diffuse/eval/npz.h"
#include "diffuse/image_io.h"
#include "diffuse/safetensors.h"
#include "diffuse/torch_save.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/metrics_file.h"
#include "byte_writers.h"

namespace fs = std::filesystem;
using namespace diffuse::test_bytes;

namespace diffuse::fuzz {
namespace {

// ---- helpers ------------------------------------------------------------------------------

struct Scratch {
  fs::path dir;
  Scratch() {
    const char* tmp = std::getenv("TMPDIR");
    dir = fs::path(tmp && *tmp ? tmp : "/tmp") / fmt::format("diffuse-fuzz-{}", ::getpid());
    fs::create_directories(dir);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::string put_file(const std::string& name, const std::string& bytes) {
  const auto path = scratch_path(name);
  write_file(path, bytes);
  return path;
}

std::string gzip(const std::string& in) { return deflate_bytes(in, MAX_WBITS + 16); }

std::string be32(uint32_t v) { return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)}; }

std::string idx_file(const std::vector<uint32_t>& dims) {
  std::string s{'\0', '\0', '\x08', char(dims.size())};
  size_t n = 1;
  for (auto d : dims) s += be32(d), n *= d;
  for (size_t i = 0; i < n; ++i) s += char((i * 37) & 0xff);
  return s;
}

// Runs `read`, mapping the one allowed refusal (UsageError) to false.
template <class F>
bool accepts(F&& read) {
  try {
    read();
    return true;
  } catch (const UsageError&) {
    return false;
  }
}

torch::Tensor tiny_image(int64_t c, int64_t h, int64_t w) {
  return (torch::arange(c * h * w, torch::kInt64).remainder(251)).to(torch::kUInt8).reshape({c, h, w});
}

// ---- targets ------------------------------------------------------------------------------

bool run_idx(const std::string& bytes) {
  return accepts([&] {
    const auto a = read_idx(put_file("in.idx", bytes));
    size_t n = 1;
    for (auto d : a.dims) n *= static_cast<size_t>(d);
    // Touch the first and last element: the header promised them.
    volatile uint8_t x = n ? a.data()[0] + a.data()[n - 1] : 0;
    (void)x;
  });
}
std::vector<std::string> seeds_idx() {
  const auto images = idx_file({3, 4, 5}), labels = idx_file({3});
  // The last: one file as two concatenated gzip members, as `cat a.gz b.gz` makes.
  return {images, labels, gzip(images), gzip(images.substr(0, 20)) + gzip(images.substr(20))};
}

bool run_cifar10(const std::string& bytes) {
  return accepts([&] {
    Cifar10Dataset d({put_file("batch.bin", bytes)}, ImageOptions{});
    if (d.size() > 0) d.get(0), d.get(d.size() - 1);
  });
}
std::vector<std::string> seeds_cifar10() {
  std::string two;
  for (int r = 0; r < 2; ++r) {
    two += char(r * 7 % 10);
    for (int i = 0; i < 3072; ++i) two += char((i * 13 + r) & 0xff);
  }
  return {two, two.substr(0, kCifarRecordBytes)};
}

// An image file through the image-folder loader: header check at construction, then decode,
// center-crop and resize in get(). The decode floor is lowered to 64 KiB (256x256 grey) for the
// run: the decoders' paths are the same at any size, the size guard is exercised at both sides
// of its limit, and a 16 MiB decode under the sanitizers would cap the rate at ~60 executions/s.
bool run_image(const std::string& bytes) {
  struct Floor {
    size_t before = set_image_decode_floor(64 * 1024);
    ~Floor() { set_image_decode_floor(before); }
  } floor;
  return accepts([&] {
    const auto dir = scratch_path("folder");
    fs::create_directories(dir);
    write_file(dir + "/a.png", bytes);
    ImageFolderOptions o;
    o.image.image_size = 8;
    ImageFolderDataset d(dir, o);
    d.get(0);
  });
}
std::vector<std::string> seeds_image() {
  return {encode_png(tiny_image(1, 9, 7)), encode_png(tiny_image(3, 6, 6)), encode_png(tiny_image(4, 5, 11)),
          encode_png(tiny_image(2, 3, 3))};
}

bool run_png_text(const std::string& bytes) {
  return accepts([&] { read_png_text(put_file("t.png", bytes)); });
}
std::vector<std::string> seeds_png_text() {
  return {encode_png(tiny_image(1, 2, 2), {{"Title", "grid"}, {"config", "model:\n  type: unet\n"}}),
          encode_png(tiny_image(3, 2, 2), {{"Comment", "caf\xc3\xa9 \xe2\x80\x94 utf-8"}})};
}

bool run_npz(const std::string& bytes) {
  return accepts([&] {
    const auto path = put_file("a.npz", bytes);
    if (is_npz_file(path)) {
      read_npz(path);
    } else {
      parse_npy(bytes, path);
    }
  });
}
std::vector<std::string> seeds_npz() {
  const double mu[3] = {0.5, -1.0, 2.0};
  const float sigma[9] = {1, 0, 0, 0, 2, 0, 0, 0, 3};
  const int64_t n = 16;
  const auto mu_npy = npy("<f8", false, {3}, mu, sizeof mu), sigma_npy = npy("<f4", true, {3, 3}, sigma, sizeof sigma),
             n_npy = npy("<i8", false, {}, &n, sizeof n);
  return {mu_npy, sigma_npy, n_npy, zip({{"mu.npy", mu_npy}, {"sigma.npy", sigma_npy}}, false),
          zip({{"mu.npy", mu_npy}, {"sigma.npy", sigma_npy}, {"n.npy", n_npy}}, true)};
}

bool run_safetensors(const std::string& bytes) {
  return accepts([&] { decode_safetensors(bytes, "fuzz.safetensors"); });
}
std::vector<std::string> seeds_safetensors() {
  const auto f = torch::arange(12, torch::kFloat32).reshape({3, 4});
  return {encode_safetensors({{"w", f}, {"b", torch::ones({4}, torch::kFloat16)}}, {{"format", "pt"}}),
          encode_safetensors({{"i", torch::arange(5, torch::kInt64)},
                              {"m", torch::tensor({true, false})},
                              {"e", torch::zeros({0, 2})},
                              {"s", torch::tensor(3.5, torch::kFloat64)}}),
          encode_safetensors({})};
}

bool run_torch_save(const std::string& bytes) {
  return accepts([&] { decode_torch_save(bytes, "fuzz.pt"); });
}
// LibTorch's writer (zip format), and the files Python's torch.save wrote for the tests (both
// formats, torch 1.13 and 2.6).
std::vector<std::string> seeds_torch_save() {
  c10::Dict<std::string, torch::Tensor> d;
  d.insert("w", torch::arange(12, torch::kFloat32).reshape({3, 4}).t());
  d.insert("b", torch::ones({4}, torch::kFloat16));
  d.insert("n", torch::tensor(int64_t{7}));
  const auto bytes = torch::pickle_save(c10::IValue(d));
  std::vector<std::string> out{std::string(bytes.begin(), bytes.end())};
#ifdef DIFFUSE_SOURCE_DIR
  for (const char* f :
       {"nested.torch1.zip.pt", "nested.torch1.legacy.pt", "nested.torch2.zip.pt", "nested.torch2.legacy.pt"})
    out.push_back(read_file_bytes(std::string(DIFFUSE_SOURCE_DIR) + "/tests/reference/torch_save/" + f));
#endif
  return out;
}

// A config file, then `--set` assignments, one per line after a line "---set".
bool run_config(const std::string& bytes) {
  return accepts([&] {
    const auto split = bytes.find("\n---set\n");
    Config cfg = parse_config(bytes.substr(0, split), "fuzz.yaml");
    if (split != std::string::npos) {
      std::istringstream sets(bytes.substr(split + 8));
      for (std::string line; std::getline(sets, line);) apply_override(cfg, line);
    }
    validate(cfg);
    parse_config(to_yaml(cfg), "round trip");
  });
}
std::vector<std::string> seeds_config() {
  std::vector<std::string> out{to_yaml(Config{}), "train:\n  lr: 1.0e-4\n---set\ntrain.lr=2e-4\ntrain.batch_size=16\n"};
#ifdef DIFFUSE_SOURCE_DIR
  for (const auto& e : fs::directory_iterator(fs::path(DIFFUSE_SOURCE_DIR) / "configs"))
    if (e.path().extension() == ".yaml") out.push_back(read_file_bytes(e.path().string()));
#endif
  return out;
}

bool run_checkpoint(const std::string& bytes) {
  return accepts([&] {
    CheckpointReader r(put_file("c.pt", bytes));
    torch::nn::Linear model(3, 2);
    r.load_weights(*model, r.has_ema());
    if (r.has_optimizer()) {
      torch::optim::AdamW opt(model->parameters());
      r.load_optimizer(opt);
    }
  });
}
std::vector<std::string> seeds_checkpoint() {
  torch::manual_seed(0);
  torch::nn::Linear model(3, 2), ema(3, 2);
  torch::optim::AdamW opt(model->parameters());
  model(torch::randn({4, 3})).sum().backward();
  opt.step();
  CheckpointMeta m;
  m.step = 20;
  m.config_yaml = to_yaml(Config{});
  m.data.shape = {1, 28, 28};
  m.data.num_classes = 10;
  m.data_offset = 64;
  m.cpu_rng_state = at::detail::getDefaultCPUGenerator().get_state();
  m.timestep_sampler_state = torch::zeros({2, 3}, torch::kFloat64);
  const auto a = scratch_path("seed-a.pt"), b = scratch_path("seed-b.pt");
  save_checkpoint(a, m, *model, ema.get(), &opt);
  m.timestep_sampler_state = torch::Tensor();
  save_checkpoint(b, m, *model, nullptr, nullptr);
  return {read_file_bytes(a), read_file_bytes(b)};
}

// metrics.jsonl on resume, and the rewritten file read back.
bool run_metrics(const std::string& bytes) {
  return accepts([&] {
    const auto kept = metrics_lines_through(bytes, 5);
    if (metrics_lines_through(kept, 5) != kept) throw std::logic_error("metrics_lines_through is not idempotent");
  });
}
std::vector<std::string> seeds_metrics() {
  std::string lines;
  for (int s = 1; s <= 8; ++s) lines += fmt::format("{{\"step\": {}, \"loss\": 0.{}, \"lr\": 1e-4}}\n", s, s);
  return {lines, lines + "{\"step\": 9, \"lo"};
}

bool run_fid_cache(const std::string& bytes) {
  return accepts([&] {
    const auto s = load_feature_stats(put_file("ref.pt", bytes));
    frechet_distance(s, s);
  });
}
std::vector<std::string> seeds_fid_cache() {
  torch::manual_seed(1);
  const auto f = torch::randn({16, 4}, torch::kFloat64);
  FeatureStats s = feature_stats(f);
  s.extractor = "fuzz";
  s.reference = "seed";
  const auto path = scratch_path("seed-ref.pt");
  save_feature_stats(s, path);
  return {read_file_bytes(path), seeds_npz().back()};
}

}  // namespace

std::string scratch_path(const std::string& file) {
  static Scratch scratch;
  return (scratch.dir / file).string();
}

const std::vector<Target>& targets() {
  static const std::vector<Target> all{
      {"idx", run_idx, seeds_idx},
      {"cifar10", run_cifar10, seeds_cifar10},
      {"image", run_image, seeds_image},
      {"png_text", run_png_text, seeds_png_text},
      {"npz", run_npz, seeds_npz},
      {"safetensors", run_safetensors, seeds_safetensors},
      {"torch_save", run_torch_save, seeds_torch_save},
      {"config", run_config, seeds_config},
      {"checkpoint", run_checkpoint, seeds_checkpoint},
      {"metrics", run_metrics, seeds_metrics, false},
      {"fid_cache", run_fid_cache, seeds_fid_cache},
  };
  return all;
}

const Target* find_target(const std::string& name) {
  for (const auto& t : targets())
    if (name == t.name) return &t;
  return nullptr;
}

}  // namespace diffuse::fuzz
