// Our InceptionV3 against pytorch-fid's own (tests/reference/make_fid_inception.py ran
// pytorch-fid's InceptionV3 and calculate_frechet_distance): the same tensor names and shapes as
// its weight file, the same 2048-d features on the same images with the same weights (a formula
// both sides compute, since the real weights cannot be downloaded here), and the same Frechet
// distance on the same features.
#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "diffuse/error.h"
#include "diffuse/eval/fid.h"
#include "diffuse/eval/fid_inception.h"
#include "diffuse/hash.h"
#include "diffuse/torch_save.h"
#include "test_util.h"

using namespace diffuse;

namespace {

std::string reference(const std::string& name) {
  return std::string(DIFFUSE_SOURCE_DIR) + "/tests/reference/fid_inception/" + name;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The script's formula: u = 2 * (splitmix64(fnv1a64(name) + i) >> 11) / 2^53 - 1, then a scale
// per kind of tensor, in float64, rounded to float32.
torch::Tensor formula(const std::string& name, at::IntArrayRef shape) {
  auto out = torch::empty(shape, torch::kFloat32);
  const uint64_t h = fnv1a64(name.data(), name.size());
  const double fan_in = shape.size() == 4 ? static_cast<double>(shape[1] * shape[2] * shape[3]) : 1.0;
  float* p = out.data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    uint64_t z = h + static_cast<uint64_t>(i) + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    const double u = 2.0 * static_cast<double>(z >> 11) / 9007199254740992.0 - 1.0;
    double v;
    if (ends_with(name, "conv.weight")) v = u * std::sqrt(6.0 / fan_in);
    else if (ends_with(name, "bn.weight")) v = 1 + 0.2 * u;
    else if (ends_with(name, "bn.bias")) v = 0.2 * u;
    else if (ends_with(name, "running_mean")) v = 0.1 * u;
    else if (ends_with(name, "running_var")) v = 1 + 0.25 * (u + 1);
    else v = 0.01 * u;  // fc.*
    p[i] = static_cast<float>(v);
  }
  return out;
}

// names.txt: "<name> <d0>x<d1>..." for every tensor of pytorch-fid's weight file.
std::vector<std::pair<std::string, std::vector<int64_t>>> weight_file_layout() {
  std::ifstream in(reference("names.txt"));
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (std::string line; std::getline(in, line);) {
    const auto space = line.find(' ');
    std::vector<int64_t> shape;  // empty for a scalar
    std::stringstream dims(line.substr(space + 1));
    for (std::string d; std::getline(dims, d, 'x');)
      if (!d.empty()) shape.push_back(std::stoll(d));
    out.emplace_back(line.substr(0, space), shape);
  }
  return out;
}

// A torch.save file (LibTorch's writer) of the layout, filled by the formula: what
// pytorch-fid's weight file would be with those weights.
std::string write_weights(const std::string& path, const std::string& drop = "", const std::string& extra = "") {
  c10::Dict<std::string, torch::Tensor> d;
  for (const auto& [name, shape] : weight_file_layout()) {
    if (name == drop) continue;
    d.insert(name, ends_with(name, "num_batches_tracked") ? torch::tensor(int64_t{0}) : formula(name, shape));
  }
  if (!extra.empty()) d.insert(extra, torch::zeros({1}));
  const auto bytes = torch::pickle_save(c10::IValue(d));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

}  // namespace

TEST(FidInception, TensorNamesAndShapesAreThoseOfPytorchFidsWeightFile) {
  const auto layout = weight_file_layout();
  ASSERT_EQ(layout.size(), 566u);
  std::map<std::string, std::vector<int64_t>> ours;
  for (const auto& [name, t] : FidInceptionV3().named_tensors()) ours[name] = t.sizes().vec();
  size_t used = 0;
  for (const auto& [name, shape] : layout) {
    if (name.rfind("fc.", 0) == 0 || ends_with(name, "num_batches_tracked")) continue;
    ++used;
    ASSERT_TRUE(ours.count(name)) << name;
    EXPECT_EQ(ours[name], shape) << name;
  }
  EXPECT_EQ(ours.size(), used);
}

TEST(FidInception, FeaturesEqualPytorchFidsOnTheSameImagesAndWeights) {
  test::TempDir dir;
  const auto path = write_weights(dir.str() + "/pt_inception.pth");
  const auto ref = load_torch_save(reference("reference.pt"));
  const auto images = *ref.find("images");  // [3, 3, 37, 41] in [0, 1], as pytorch-fid takes them
  const auto want = *ref.find("features");
  FeatureExtractorOptions o;
  o.quantize_8bit = false;  // the reference images are not 8-bit
  o.batch_size = 2;         // two calls, as a longer run makes them
  const FeatureExtractor fx(path, o);
  const auto got = fx.features(images * 2 - 1);
  ASSERT_EQ(got.sizes(), want.sizes());
  const double rel = ((got - want).abs().max() / want.abs().max()).item<double>();
  EXPECT_LT(rel, 1e-4) << "largest difference relative to the largest feature";
  EXPECT_GT(want.abs().max().item<double>(), 0.1);  // the weights do not collapse the features
}

TEST(FidInception, FrechetDistanceEqualsPytorchFids) {
  const auto ref = load_torch_save(reference("reference.pt"));
  const double want = ref.find("fid")->item<double>();
  const double got = frechet_distance(feature_stats(*ref.find("a")), feature_stats(*ref.find("b")));
  EXPECT_NEAR(got, want, 1e-6 * want);
}

TEST(FidInception, WrongWeightFilesAreRefusedNamingTheTensor) {
  test::TempDir dir;
  auto refused = [](const std::string& path, const std::string& what) {
    try {
      FeatureExtractor fx(path);
      ADD_FAILURE() << path << " was accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  refused(write_weights(dir.str() + "/missing.pth", "Mixed_6c.branch7x7_2.bn.running_var"),
          "no tensor 'Mixed_6c.branch7x7_2.bn.running_var'");
  refused(write_weights(dir.str() + "/foreign.pth", "", "AuxLogits.conv0.conv.weight"),
          "'AuxLogits.conv0.conv.weight', which pytorch-fid's InceptionV3 has not");
  c10::Dict<std::string, torch::Tensor> small;
  small.insert("Conv2d_1a_3x3.conv.weight", torch::zeros({32, 3, 5, 5}));
  const auto bytes = torch::pickle_save(c10::IValue(small));
  const auto bad = dir.str() + "/shape.pth";
  std::ofstream(bad, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  refused(bad, "'Conv2d_1a_3x3.conv.weight' has shape [32, 3, 5, 5], expected [32, 3, 3, 3]");
}
