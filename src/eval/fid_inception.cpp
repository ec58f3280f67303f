#include "diffuse/eval/fid_inception.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <map>
#include <set>

#include "diffuse/error.h"
#include "diffuse/torch_save.h"

namespace diffuse {

namespace {

namespace F = torch::nn::functional;
using torch::nn::Module;

// conv (no bias) + batch norm (eps 1e-3, TensorFlow's) + ReLU: torchvision's BasicConv2d.
struct ConvBnImpl : Module {
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  ConvBnImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, int64_t stride = 1,
             std::vector<int64_t> padding = {0, 0}) {
    if (kernel.size() == 1) kernel.push_back(kernel[0]);
    conv = register_module(
        "conv",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false)));
    bn = register_module("bn", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(out).eps(1e-3)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return torch::relu(bn->forward(conv->forward(x))); }
};
TORCH_MODULE(ConvBn);

// Each block keeps its branches by name, as the weight file names them.
struct Block : Module {
  std::map<std::string, ConvBn> c;
  void add(const std::string& name, int64_t in, int64_t out, std::vector<int64_t> kernel, int64_t stride = 1,
           std::vector<int64_t> padding = {0, 0}) {
    c.emplace(name, register_module(name, ConvBn(in, out, std::move(kernel), stride, std::move(padding))));
  }
  torch::Tensor operator()(const std::string& name, const torch::Tensor& x) { return c.at(name)->forward(x); }
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

// TensorFlow's 3x3 average pool, which leaves the padding out of each mean (FID's patch).
torch::Tensor tf_avg_pool(const torch::Tensor& x) {
  return F::avg_pool2d(x, F::AvgPool2dFuncOptions(3).stride(1).padding(1).count_include_pad(false));
}
torch::Tensor max_pool(const torch::Tensor& x, int64_t stride, int64_t padding = 0) {
  return F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(stride).padding(padding));
}

struct InceptionA : Block {  // Mixed_5b, 5c, 5d
  InceptionA(int64_t in, int64_t pool_features) {
    add("branch1x1", in, 64, {1});
    add("branch5x5_1", in, 48, {1});
    add("branch5x5_2", 48, 64, {5}, 1, {2, 2});
    add("branch3x3dbl_1", in, 64, {1});
    add("branch3x3dbl_2", 64, 96, {3}, 1, {1, 1});
    add("branch3x3dbl_3", 96, 96, {3}, 1, {1, 1});
    add("branch_pool", in, pool_features, {1});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& s = *this;
    return torch::cat(
        {s("branch1x1", x), s("branch5x5_2", s("branch5x5_1", x)),
         s("branch3x3dbl_3", s("branch3x3dbl_2", s("branch3x3dbl_1", x))), s("branch_pool", tf_avg_pool(x))},
        1);
  }
};

struct InceptionB : Block {  // Mixed_6a
  explicit InceptionB(int64_t in) {
    add("branch3x3", in, 384, {3}, 2);
    add("branch3x3dbl_1", in, 64, {1});
    add("branch3x3dbl_2", 64, 96, {3}, 1, {1, 1});
    add("branch3x3dbl_3", 96, 96, {3}, 2);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& s = *this;
    return torch::cat(
        {s("branch3x3", x), s("branch3x3dbl_3", s("branch3x3dbl_2", s("branch3x3dbl_1", x))), max_pool(x, 2)}, 1);
  }
};

struct InceptionC : Block {  // Mixed_6b .. 6e
  InceptionC(int64_t in, int64_t c7) {
    add("branch1x1", in, 192, {1});
    add("branch7x7_1", in, c7, {1});
    add("branch7x7_2", c7, c7, {1, 7}, 1, {0, 3});
    add("branch7x7_3", c7, 192, {7, 1}, 1, {3, 0});
    add("branch7x7dbl_1", in, c7, {1});
    add("branch7x7dbl_2", c7, c7, {7, 1}, 1, {3, 0});
    add("branch7x7dbl_3", c7, c7, {1, 7}, 1, {0, 3});
    add("branch7x7dbl_4", c7, c7, {7, 1}, 1, {3, 0});
    add("branch7x7dbl_5", c7, 192, {1, 7}, 1, {0, 3});
    add("branch_pool", in, 192, {1});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& s = *this;
    auto b7 = s("branch7x7_3", s("branch7x7_2", s("branch7x7_1", x)));
    auto d7 = x;
    for (const char* n : {"branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"})
      d7 = s(n, d7);
    return torch::cat({s("branch1x1", x), b7, d7, s("branch_pool", tf_avg_pool(x))}, 1);
  }
};

struct InceptionD : Block {  // Mixed_7a
  explicit InceptionD(int64_t in) {
    add("branch3x3_1", in, 192, {1});
    add("branch3x3_2", 192, 320, {3}, 2);
    add("branch7x7x3_1", in, 192, {1});
    add("branch7x7x3_2", 192, 192, {1, 7}, 1, {0, 3});
    add("branch7x7x3_3", 192, 192, {7, 1}, 1, {3, 0});
    add("branch7x7x3_4", 192, 192, {3}, 2);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& s = *this;
    auto b7 = x;
    for (const char* n : {"branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"}) b7 = s(n, b7);
    return torch::cat({s("branch3x3_2", s("branch3x3_1", x)), b7, max_pool(x, 2)}, 1);
  }
};

struct InceptionE : Block {  // Mixed_7b (average pool), Mixed_7c (max pool: FID's graph has one there)
  bool max_pool_branch;
  InceptionE(int64_t in, bool max_pool_branch) : max_pool_branch(max_pool_branch) {
    add("branch1x1", in, 320, {1});
    add("branch3x3_1", in, 384, {1});
    add("branch3x3_2a", 384, 384, {1, 3}, 1, {0, 1});
    add("branch3x3_2b", 384, 384, {3, 1}, 1, {1, 0});
    add("branch3x3dbl_1", in, 448, {1});
    add("branch3x3dbl_2", 448, 384, {3}, 1, {1, 1});
    add("branch3x3dbl_3a", 384, 384, {1, 3}, 1, {0, 1});
    add("branch3x3dbl_3b", 384, 384, {3, 1}, 1, {1, 0});
    add("branch_pool", in, 192, {1});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& s = *this;
    auto b3 = s("branch3x3_1", x);
    auto d3 = s("branch3x3dbl_2", s("branch3x3dbl_1", x));
    auto pool = max_pool_branch ? max_pool(x, 1, 1) : tf_avg_pool(x);
    return torch::cat({s("branch1x1", x), torch::cat({s("branch3x3_2a", b3), s("branch3x3_2b", b3)}, 1),
                       torch::cat({s("branch3x3dbl_3a", d3), s("branch3x3dbl_3b", d3)}, 1), s("branch_pool", pool)},
                      1);
  }
};

struct Network : Module {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> stem;  // the five ConvBn layers
  std::vector<std::shared_ptr<Block>> mixed;
  Network() {
    const std::vector<std::tuple<const char*, int64_t, int64_t, int64_t, int64_t, int64_t>> convs = {
        {"Conv2d_1a_3x3", 3, 32, 3, 2, 0},
        {"Conv2d_2a_3x3", 32, 32, 3, 1, 0},
        {"Conv2d_2b_3x3", 32, 64, 3, 1, 1},
        {"Conv2d_3b_1x1", 64, 80, 1, 1, 0},
        {"Conv2d_4a_3x3", 80, 192, 3, 1, 0}};
    for (const auto& [name, in, out, k, stride, pad] : convs)
      stem.emplace_back(name, register_module(name, ConvBn(in, out, std::vector<int64_t>{k}, stride,
                                                           std::vector<int64_t>{pad, pad})));
    auto block = [&](const char* name, std::shared_ptr<Block> b) { mixed.push_back(register_module(name, b)); };
    block("Mixed_5b", std::make_shared<InceptionA>(192, 32));
    block("Mixed_5c", std::make_shared<InceptionA>(256, 64));
    block("Mixed_5d", std::make_shared<InceptionA>(288, 64));
    block("Mixed_6a", std::make_shared<InceptionB>(288));
    block("Mixed_6b", std::make_shared<InceptionC>(768, 128));
    block("Mixed_6c", std::make_shared<InceptionC>(768, 160));
    block("Mixed_6d", std::make_shared<InceptionC>(768, 160));
    block("Mixed_6e", std::make_shared<InceptionC>(768, 192));
    block("Mixed_7a", std::make_shared<InceptionD>(768));
    block("Mixed_7b", std::make_shared<InceptionE>(1280, false));
    block("Mixed_7c", std::make_shared<InceptionE>(2048, true));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (size_t i = 0; i < stem.size(); ++i) {
      x = std::static_pointer_cast<ConvBnImpl>(stem[i].second)->forward(x);
      if (i == 2 || i == 4) x = max_pool(x, 2);  // pytorch-fid's blocks 0 and 1 end in a 3x3/2 max pool
    }
    for (auto& b : mixed) x = b->forward(x);
    return F::adaptive_avg_pool2d(x, F::AdaptiveAvgPool2dFuncOptions(1)).flatten(1);
  }
};

bool unused_entry(const std::string& name) {
  const std::string tail = ".num_batches_tracked";
  return name.rfind("fc.", 0) == 0 ||
         (name.size() > tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0);
}

}  // namespace

struct FidInceptionV3::Impl {
  std::shared_ptr<Network> net = std::make_shared<Network>();
};

FidInceptionV3::FidInceptionV3() : impl_(std::make_unique<Impl>()) { impl_->net->eval(); }
FidInceptionV3::~FidInceptionV3() = default;
FidInceptionV3::FidInceptionV3(FidInceptionV3&&) noexcept = default;
FidInceptionV3& FidInceptionV3::operator=(FidInceptionV3&&) noexcept = default;

torch::Tensor FidInceptionV3::forward(const torch::Tensor& x) const {
  torch::NoGradGuard no_grad;
  return impl_->net->forward(x);
}

std::vector<std::pair<std::string, torch::Tensor>> FidInceptionV3::named_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : impl_->net->named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : impl_->net->named_buffers())
    if (!unused_entry(b.key())) out.emplace_back(b.key(), b.value());
  return out;
}

void FidInceptionV3::load(const TorchSaveFile& weights, const std::string& origin) {
  torch::NoGradGuard no_grad;
  std::set<std::string> wanted;
  for (auto& [name, t] : named_tensors()) {
    wanted.insert(name);
    const torch::Tensor* w = weights.find(name);
    if (!w)
      throw UsageError(
          fmt::format("Inception weights '{}' have no tensor '{}' (expected pytorch-fid's "
                      "pt_inception-2015-12-05 state_dict)",
                      origin, name));
    if (w->sizes() != t.sizes())
      throw UsageError(fmt::format("Inception weights '{}': '{}' has shape [{}], expected [{}]", origin, name,
                                   fmt::join(w->sizes(), ", "), fmt::join(t.sizes(), ", ")));
    if (!w->is_floating_point())
      throw UsageError(fmt::format("Inception weights '{}': '{}' is not floating point", origin, name));
    t.copy_(*w);
  }
  for (const auto& [name, w] : weights.tensors)
    if (!wanted.count(name) && !unused_entry(name))
      throw UsageError(
          fmt::format("Inception weights '{}' hold '{}', which pytorch-fid's InceptionV3 has not (another "
                      "network's weights?)",
                      origin, name));
}

void FidInceptionV3::to(torch::Device device) { impl_->net->to(device); }

}  // namespace diffuse
