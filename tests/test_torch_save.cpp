// torch.save files read by our own reader against files Python's torch.save wrote
// (tests/reference/make_torch_save.py: torch 1.13 and 2.6, zip and legacy formats), every value
// recomputed here from the script's formulas; files LibTorch's own writer makes read back equal;
// crafted pickles and archives are refused naming the file (the fuzz target "torch_save" mutates
// the seeds further).
#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cmath>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/torch_save.h"
#include "diffuse/zip_archive.h"

using namespace diffuse;
using namespace std::string_literals;

namespace {

std::string reference(const std::string& name) {
  return std::string(DIFFUSE_SOURCE_DIR) + "/tests/reference/torch_save/" + name;
}

std::vector<std::pair<std::string, torch::Tensor>> expected() {
  auto base = torch::arange(12, torch::kFloat64).reshape({3, 4}) / 2;
  auto f32 = [](std::vector<float> v) { return torch::tensor(v, torch::kFloat32); };
  return {{"model.lin.weight", torch::arange(6, torch::kFloat32).reshape({2, 3}) / 4 - 0.5},
          {"model.lin.bias", f32({0.25f, -0.75f})},
          {"model.bn.weight", f32({1.5f, 2.f})},
          {"model.bn.bias", f32({-1.f, 1.f})},
          {"model.bn.running_mean", f32({0.125f, -0.125f})},
          {"model.bn.running_var", f32({2.f, 3.f})},
          {"model.bn.num_batches_tracked", torch::tensor(int64_t{5})},
          {"half", (torch::arange(4, torch::kFloat32) / 8).to(torch::kFloat16)},
          {"bf16", f32({1.f, -2.f, 0.5f}).to(torch::kBFloat16)},
          {"view_t", base.t().contiguous()},
          {"view_slice", base.slice(0, 1).slice(1, 1, 3).contiguous()},
          {"ints", torch::tensor(std::vector<int64_t>{-5, 0, int64_t{1} << 40})},
          {"i32", torch::tensor({7, -7}, torch::kInt32)},
          {"i16", torch::tensor({-300, 300}, torch::kInt16)},
          {"i8", torch::tensor({-128, 0, 127}, torch::kInt8)},
          {"u8", torch::tensor({0, 1, 128, 255}, torch::kUInt8)},
          {"flags", torch::tensor({true, false, true})},
          {"scalar", torch::tensor(2.5f)},
          {"empty", torch::zeros({0, 4})},
          {"list.0", torch::ones({2})},
          {"list.1.0", f32({3.f})},
          {"param", f32({0.5f, 1.5f})},
          {"7", f32({9.f})}};
}

std::string refusal(const std::string& bytes) {
  try {
    decode_torch_save(bytes, "crafted.pt");
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

// A legacy-format file around `object_pickle` (the object's pickle, protocol 2, ending in STOP)
// with storages `keys` of `data`: the framing torch.save writes.
std::string legacy_file(const std::string& object_pickle, const std::string& keys_pickle, const std::string& data) {
  const std::string magic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
  const std::string version("\x80\x02M\xe9\x03.", 6);  // BININT2 1001
  const std::string info("\x80\x02}.", 4);
  return magic + version + info + object_pickle + keys_pickle + data;
}

// The pickle of {'w': _rebuild_tensor_v2(storage('k', FloatStorage, numel), offset, size, stride)}.
std::string tensor_pickle(int numel, int offset, const std::string& size_and_stride) {
  return "\x80\x02}(X\x01\x00\x00\x00"
         "w"
         "ctorch._utils\n_rebuild_tensor_v2\n("
         "(X\x07\x00\x00\x00"
         "storage"
         "ctorch\nFloatStorage\n"
         "X\x01\x00\x00\x00"
         "k"
         "X\x03\x00\x00\x00"
         "cpu"
         "K"s +
         static_cast<char>(numel) + "NtQK" + static_cast<char>(offset) + size_and_stride + "\x89}tRu.";
}
std::string float_data(int numel) {
  std::string d(8, '\0');
  d[0] = static_cast<char>(numel);
  return d + std::string(static_cast<size_t>(numel) * 4, '\0');
}
const std::string kKeys("\x80\x02](X\x01\x00\x00\x00ke.", 12);

}  // namespace

TEST(TorchSave, FilesPythonWroteReadWithEveryValue) {
  for (const char* file :
       {"nested.torch1.zip.pt", "nested.torch1.legacy.pt", "nested.torch2.zip.pt", "nested.torch2.legacy.pt"}) {
    SCOPED_TRACE(file);
    const auto f = load_torch_save(reference(file));
    EXPECT_EQ(f.format, std::string(file).find("zip") != std::string::npos ? "zip" : "legacy");
    const auto want = expected();
    ASSERT_EQ(f.tensors.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const auto& [name, t] = f.tensors[i];
      SCOPED_TRACE(want[i].first);
      EXPECT_EQ(name, want[i].first);
      EXPECT_EQ(t.scalar_type(), want[i].second.scalar_type());
      EXPECT_EQ(t.sizes(), want[i].second.sizes());
      EXPECT_TRUE(t.is_contiguous());
      EXPECT_TRUE(torch::equal(t, want[i].second));
    }
  }
}

// LibTorch's own writer (torch::pickle_save writes the zip format torch.load reads): a second,
// independent producer of the format.
TEST(TorchSave, FilesLibTorchWritesReadBackEqual) {
  c10::Dict<std::string, torch::Tensor> d;
  torch::manual_seed(1);
  d.insert("a", torch::randn({3, 5}));
  d.insert("b", torch::randint(0, 100, {4}, torch::kInt64));
  d.insert("c", torch::randn({2, 2}, torch::kFloat64).t());
  const auto bytes = torch::pickle_save(c10::IValue(d));
  const std::string s(bytes.begin(), bytes.end());
  ASSERT_TRUE(looks_like_torch_save(s));
  const auto f = decode_torch_save(s, "pickle_save");
  ASSERT_EQ(f.tensors.size(), 3u);
  for (const auto& [name, t] : f.tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(d.contains(name));
    EXPECT_TRUE(torch::equal(t, d.at(name)));
  }
}

TEST(TorchSave, ClassesAndTorchScriptAreRefusedNamingTheFile) {
  auto refused_file = [](const std::string& file, const std::string& what) {
    try {
      load_torch_save(reference(file));
      ADD_FAILURE() << file << " was read";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(reference(file)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  refused_file("namespace.pt", "'argparse.Namespace', which is not read");
  refused_file("torchscript.pt", "TorchScript");
  EXPECT_FALSE(looks_like_torch_save(read_file_bytes(reference("torchscript.pt"))));
  EXPECT_TRUE(looks_like_torch_save(read_file_bytes(reference("nested.torch1.legacy.pt"))));
}

// Hand-made legacy files: the framing is accepted as torch.save writes it, and each crafted
// size, stride, offset or opcode is refused with what was wrong.
TEST(TorchSave, CraftedPicklesAreRefused) {
  const std::string ok = legacy_file(tensor_pickle(4, 0, "K\x02K\x02\x86K\x02K\x01\x86"s), kKeys, float_data(4));
  const auto f = decode_torch_save(ok, "ok.pt");
  ASSERT_EQ(f.tensors.size(), 1u);
  EXPECT_EQ(f.tensors[0].first, "w");
  EXPECT_EQ(f.tensors[0].second.sizes(), (std::vector<int64_t>{2, 2}));

  auto crafted = [](const std::string& pickle, int numel = 4) {
    return refusal(legacy_file(pickle, kKeys, float_data(numel)));
  };
  EXPECT_NE(crafted(tensor_pickle(4, 1, "K\x02K\x02\x86K\x02K\x01\x86")).find("reads past its storage 'k' of 4"),
            std::string::npos);  // offset 1 + 3 = element 4 of 4
  EXPECT_NE(crafted(tensor_pickle(4, 0, "K\x03K\x02\x86K\x02K\x01\x86")).find("reads past"), std::string::npos);
  // A stride of 2^62: the last index overflows int64.
  EXPECT_NE(
      crafted(tensor_pickle(4, 0, "K\x03\x85\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x85"s)).find("past any storage"),
      std::string::npos);
  // Stride 0 over 2^40 elements: four stored bytes would become 4 TiB.
  EXPECT_NE(crafted(tensor_pickle(4, 0, "\x8a\x06\x00\x00\x00\x00\x00\x01\x85K\x00\x85"s)).find("expands to more"),
            std::string::npos);
  EXPECT_NE(crafted(tensor_pickle(4, 0, "K\x02\x85J\xff\xff\xff\xff\x85")).find("negative stride"), std::string::npos);
  EXPECT_NE(crafted(tensor_pickle(4, 0, "K\x02K\x02\x86K\x01\x85")).find("different lengths"), std::string::npos);
  // The storage says 4 elements, the data 5.
  EXPECT_NE(crafted(tensor_pickle(4, 0, "K\x02\x85K\x01\x85"), 5).find("holds 5 elements, its tensors say 4"),
            std::string::npos);
  // Cut inside the data, inside a pickle, and a memo entry never stored.
  EXPECT_NE(refusal(ok.substr(0, ok.size() - 3)).find("ends inside the data"), std::string::npos);
  EXPECT_NE(refusal(ok.substr(0, 35)).find("needs 1 more bytes"), std::string::npos) << refusal(ok.substr(0, 35));
  EXPECT_NE(crafted("\x80\x02h\x05.").find("memo entry 5 was never stored"), std::string::npos);
  EXPECT_NE(crafted("\x80\x02"
                    "cos\nsystem\n.")
                .find("'os.system', which is not read"),
            std::string::npos);
  EXPECT_NE(crafted("\x80\x02\x81.").find("opcode 0x81"), std::string::npos);
  for (const std::string& msg : {crafted("\x80\x02h\x05."), refusal(ok.substr(0, 35))})
    EXPECT_NE(msg.find("crafted.pt"), std::string::npos) << msg;
  // A list that holds itself: the walk stops at the nesting limit.
  EXPECT_NE(refusal(legacy_file("\x80\x02]q\x00h\x00"
                                "a."s,
                                "\x80\x02]."s, ""))
                .find("nests or repeats too deeply"),
            std::string::npos);
  EXPECT_NE(refusal("not a torch file").find("is not a torch.save file"), std::string::npos);
}

TEST(TorchSave, CraftedZipDirectoriesAreRefused) {
  const auto good = read_file_bytes(reference("nested.torch1.zip.pt"));
  ASSERT_NO_THROW(ZipArchive(good, "z"));
  // The end-of-directory record's entry count raised past what the directory can hold.
  const auto eocd = good.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(eocd, std::string::npos);
  auto many = good;
  many[eocd + 8] = many[eocd + 10] = '\xff', many[eocd + 9] = many[eocd + 11] = '\x7f';
  EXPECT_NE(refusal(many).find("cannot fit"), std::string::npos) << refusal(many);
  // The directory's offset moved past the end of the file.
  auto far = good;
  far[eocd + 19] = '\x7f';
  EXPECT_NE(refusal(far).find("runs past the end of the file"), std::string::npos) << refusal(far);
  // One byte of a stored entry changed: its CRC no longer matches.
  auto flipped = good;
  flipped[good.find("data.pkl") + 100] ^= 1;
  EXPECT_NE(refusal(flipped).find("CRC mismatch"), std::string::npos) << refusal(flipped);
  EXPECT_NE(refusal(good.substr(0, good.size() / 2)).find("no end of central directory"), std::string::npos);
}
