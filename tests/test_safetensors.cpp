// safetensors against the reference implementation: a file Hugging Face's safetensors wrote
// (tests/reference/make_safetensors.py) reads here with every value as written; files we write
// read back bit for bit and, where python3-safetensors is installed (the LibTorch 2.6 root sets
// DIFFUSE_REQUIRE_PY_SAFETENSORS), read in Python with the same values. Hostile headers are
// refused naming the file (the fuzz target "safetensors" mutates the seeds further).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "diffuse/error.h"
#include "diffuse/config.h"
#include "diffuse/factory.h"
#include "diffuse/models/network.h"
#include "diffuse/safetensors.h"
#include "diffuse/train/checkpoint.h"
#include "diffuse/train/checkpoint_info.h"
#include "diffuse/train/weights_export.h"
#include "test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

std::string refused(const std::string& bytes) {
  try {
    decode_safetensors(bytes, "x.safetensors");
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

// The 8-byte length, then `header` as given, then `data`.
std::string raw_file(const std::string& header, const std::string& data = "") {
  std::string s;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s += static_cast<char>((n >> (8 * i)) & 0xff);
  return s + header + data;
}

std::vector<std::pair<std::string, torch::Tensor>> every_dtype() {
  torch::manual_seed(4);
  return {{"f64", torch::randn({2, 3}, torch::kFloat64)},
          {"f32", torch::randn({4}, torch::kFloat32)},
          {"f16", torch::randn({2, 2}).to(torch::kFloat16)},
          {"bf16", torch::randn({3}).to(torch::kBFloat16)},
          {"i64", torch::tensor(std::vector<int64_t>{-5, 0, int64_t{1} << 40}, torch::kInt64)},
          {"i32", torch::tensor({7, -7}, torch::kInt32).reshape({2, 1})},
          {"i16", torch::tensor({-300, 300}, torch::kInt16)},
          {"i8", torch::tensor({-128, 0, 127}, torch::kInt8)},
          {"u8", torch::tensor({0, 1, 128, 255}, torch::kUInt8)},
          {"bool", torch::tensor({true, false, true})},
          {"scalar", torch::tensor(2.5, torch::kFloat32)},
          {"empty", torch::zeros({0, 4})},
          {"strided", torch::arange(12, torch::kFloat32).reshape({3, 4}).t()}};
}

}  // namespace

TEST(Safetensors, ReadsTheReferenceWritersFile) {
  const auto st = load_safetensors(std::string(DIFFUSE_SOURCE_DIR) + "/tests/reference/safetensors/python.safetensors");
  EXPECT_EQ(st.metadata, (std::map<std::string, std::string>{{"source", "python safetensors"}, {"n", "12"}}));
  ASSERT_EQ(st.tensors.size(), 12u);
  auto get = [&](const char* n) {
    const auto* t = st.find(n);
    EXPECT_NE(t, nullptr) << n;
    return t ? *t : torch::Tensor();
  };
  EXPECT_TRUE(torch::equal(get("f64"), torch::arange(6, torch::kFloat64).reshape({2, 3}) / 8 - 0.25));
  EXPECT_TRUE(torch::equal(get("f32"), torch::arange(4, torch::kFloat32) * 1.5 - 2));
  EXPECT_TRUE(torch::equal(get("f16"), (torch::arange(4, torch::kFloat32) / 4).to(torch::kFloat16).reshape({2, 2})));
  EXPECT_TRUE(torch::equal(get("bf16"), torch::tensor({1.0, -2.0, 0.5}).to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(get("i64"), torch::tensor(std::vector<int64_t>{-5, 0, int64_t{1} << 40}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(get("i32"), torch::tensor({7, -7}, torch::kInt32).reshape({2, 1})));
  EXPECT_TRUE(torch::equal(get("i16"), torch::tensor({-300, 300}, torch::kInt16)));
  EXPECT_TRUE(torch::equal(get("i8"), torch::tensor({-128, 0, 127}, torch::kInt8)));
  EXPECT_TRUE(torch::equal(get("u8"), torch::tensor({0, 1, 128, 255}, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(get("bool"), torch::tensor({true, false, true})));
  EXPECT_EQ(get("scalar").dim(), 0);
  EXPECT_EQ(get("scalar").item<float>(), 2.5f);
  EXPECT_EQ(get("empty").sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(Safetensors, RoundTripIsBitExactForEveryDtype) {
  const auto tensors = every_dtype();
  const auto bytes = encode_safetensors(tensors, {{"config", "model:\n  type: unet\n"}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);  // the header is padded to 8 bytes, as the reference writer does
  const auto back = decode_safetensors(bytes, "mem");
  EXPECT_EQ(back.metadata.at("config"), "model:\n  type: unet\n");
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].first, tensors[i].first);
    EXPECT_EQ(back.tensors[i].second.scalar_type(), tensors[i].second.scalar_type()) << tensors[i].first;
    EXPECT_TRUE(torch::equal(back.tensors[i].second, tensors[i].second)) << tensors[i].first;
  }
  EXPECT_THROW(encode_safetensors({{"a", torch::ones(1)}, {"a", torch::ones(1)}}), std::invalid_argument);
  EXPECT_THROW(encode_safetensors({{"__metadata__", torch::ones(1)}}), std::invalid_argument);
  EXPECT_THROW(encode_safetensors({{"c", torch::ones(1, torch::kComplexFloat)}}), std::invalid_argument);
}

TEST(Safetensors, TheReferenceReaderReadsOurFile) {
  DIFFUSE_SKIP_OR_FAIL_IF(std::system("/usr/bin/python3 -c 'import safetensors' >/dev/null 2>&1") != 0,
                          "DIFFUSE_REQUIRE_PY_SAFETENSORS", "python3-safetensors");
  test::TempDir dir;
  const auto path = dir.str() + "/ours.safetensors";
  auto tensors = every_dtype();
  save_safetensors(path, tensors, {{"k", "v"}});
  // Python prints name, dtype, shape and the float64 sum of each tensor, and the metadata.
  const std::string script = dir.str() + "/check.py";
  std::ofstream(script) << "import sys, torch\n"
                           "from safetensors import safe_open\n"
                           "with safe_open(sys.argv[1], 'pt') as f:\n"
                           "    print('meta', f.metadata()['k'])\n"
                           "    for k in f.keys():\n"
                           "        t = f.get_tensor(k)\n"
                           "        print(k, str(t.dtype), list(t.shape), repr(float(t.to(torch.float64).sum())))\n";
  const std::string out_path = dir.str() + "/out.txt";
  ASSERT_EQ(std::system(("/usr/bin/python3 " + script + " " + path + " > " + out_path).c_str()), 0);
  const auto out = test::Background::slurp(out_path);
  EXPECT_NE(out.find("meta v"), std::string::npos) << out;
  for (const auto& [name, t] : tensors) {
    const auto line_at = out.find("\n" + name + " ");
    ASSERT_NE(line_at, std::string::npos) << name << "\n" << out;
    const auto line = out.substr(line_at + 1, out.find('\n', line_at + 1) - line_at - 1);
    const double sum = std::stod(line.substr(line.rfind(' ') + 1));
    const double ours = t.to(torch::kFloat64).sum().item<double>();
    EXPECT_NEAR(sum, ours, 1e-12 * std::abs(ours)) << line;  // summation order may differ in the last bit
  }
}

TEST(Safetensors, HostileHeadersAreRefusedNamingTheFile) {
  const auto good = encode_safetensors({{"w", torch::arange(4, torch::kFloat32)}});
  EXPECT_NE(refused(good.substr(0, 5)).find("too short"), std::string::npos);
  EXPECT_NE(refused(good.substr(0, good.size() - 1)).find("outside the 15-byte data buffer"), std::string::npos);
  EXPECT_NE(refused(good + "x").find("1 bytes of the data buffer belong to no tensor"), std::string::npos);
  std::string huge = good;
  huge[7] = '\x7f';  // header length near 2^63
  EXPECT_NE(refused(huge).find("header length"), std::string::npos);
  EXPECT_NE(refused(raw_file("[1, 2]")).find("not a JSON object"), std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": ")).find("not JSON"), std::string::npos);
  const std::string f4 = "\"dtype\": \"F32\", \"shape\": [4], ";
  EXPECT_NE(refused(raw_file("{\"w\": {" + f4 + "\"data_offsets\": [0, 16]}}", std::string(8, '\0'))).find("outside"),
            std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": {" + f4 + "\"data_offsets\": [0, 12]}}", std::string(12, '\0'))).find("needs 16"),
            std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": {\"dtype\": \"F8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", "x"))
                .find("dtype 'F8'"),
            std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4], \"data_offsets\": "
                             "[0, 0]}}"))
                .find("overflows"),
            std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 0]}}"))
                .find("non-negative"),
            std::string::npos);
  // Two tensors over the same bytes, and a hole before the second.
  const std::string two = "{\"a\": {" + f4 + "\"data_offsets\": [0, 16]}, \"b\": {" + f4 + "\"data_offsets\": [";
  EXPECT_NE(refused(raw_file(two + "0, 16]}}", std::string(16, '\0'))).find("overlapping"), std::string::npos);
  EXPECT_NE(refused(raw_file(two + "20, 36]}}", std::string(36, '\0'))).find("overlapping or missing"),
            std::string::npos);
  EXPECT_NE(refused(raw_file("{\"m\": {\"dtype\": \"BOOL\", \"shape\": [1], \"data_offsets\": [0, 1]}}", "\x02"))
                .find("BOOL byte is 2"),
            std::string::npos);
  EXPECT_NE(refused(raw_file("{\"__metadata__\": {\"k\": 3}}")).find("not a string"), std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": 3}")).find("not an object"), std::string::npos);
  EXPECT_NE(refused(raw_file("{\"w\": 3}")).find("x.safetensors"), std::string::npos);
}

// export then import gives a checkpoint with the same weights and EMA bit for bit, the same
// config and data shape; its file is plain safetensors with the config in the metadata.
TEST(Safetensors, ExportImportRoundTripsACheckpoint) {
  test::TempDir dir;
  Config cfg;
  cfg.model.type = ModelType::Mlp;
  cfg.data.dataset = DatasetKind::Toy2d;
  const DataShape shape{{2}, 0};
  torch::manual_seed(8);
  auto net = make_model(cfg, shape), ema = make_model(cfg, shape);
  {
    torch::NoGradGuard ng;
    for (auto& p : ema->parameters()) p.add_(0.01);
  }
  CheckpointMeta m;
  m.step = 42;
  m.config_yaml = to_yaml(cfg);
  m.data = shape;
  const auto ckpt = dir.str() + "/c.pt", st = dir.str() + "/c.safetensors", back = dir.str() + "/back.pt";
  save_checkpoint(ckpt, m, *net, ema.get(), nullptr);
  const auto summary = export_safetensors(ckpt, st);
  EXPECT_TRUE(summary.ema);
  const auto file = load_safetensors(st);
  EXPECT_EQ(file.metadata.at("format"), "diffuse");
  EXPECT_EQ(file.metadata.at("step"), "42");
  EXPECT_EQ(file.metadata.at("data_shape"), "2");
  ASSERT_NE(file.find("model." + net->named_parameters().begin()->key()), nullptr);
  import_safetensors(st, back);
  const auto a = inspect_checkpoint(ckpt), b = inspect_checkpoint(back);
  EXPECT_EQ(a.weights_fingerprint, b.weights_fingerprint);
  EXPECT_EQ(a.ema_fingerprint, b.ema_fingerprint);
  EXPECT_NE(a.weights_fingerprint, a.ema_fingerprint);
  EXPECT_EQ(b.meta.step, 42);
  EXPECT_EQ(b.meta.config_yaml, m.config_yaml);
  EXPECT_EQ(b.meta.data.shape, shape.shape);
  // A file without our metadata, and one missing a tensor, are refused naming the file.
  save_safetensors(dir.str() + "/foreign.safetensors", {{"w", torch::ones(2)}});
  try {
    import_safetensors(dir.str() + "/foreign.safetensors", dir.str() + "/x.pt");
    ADD_FAILURE() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("foreign.safetensors"), std::string::npos) << e.what();
  }
  auto partial = file.tensors;
  partial.erase(partial.begin());
  save_safetensors(dir.str() + "/partial.safetensors", partial, file.metadata);
  try {
    import_safetensors(dir.str() + "/partial.safetensors", dir.str() + "/x.pt");
    ADD_FAILURE() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("has no tensor 'model."), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.str() + "/x.pt"));
}
