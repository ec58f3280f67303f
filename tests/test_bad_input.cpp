// Bad input, end to end (docs/bad-input.md): each row is a command line that must be refused
// with its exit code and a message naming what is wrong, and must leave the trained run
// directory it points at exactly as it was (and create no directory it names).
// DIFFUSE_BAD_INPUT_TABLE=DIR writes each group's rows, with the messages seen, as markdown
// into DIR/<group>.md (how docs/bad-input.md was made).
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <fmt/format.h>

#include "byte_writers.h"
#include "diffuse/eval/fid.h"
#include "diffuse/hash.h"
#include "diffuse/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using diffuse::test::run_diffuse;
namespace tb = diffuse::test_bytes;

namespace {

struct Row {
  const char* id;                    // the row's name in docs/bad-input.md
  const char* what;                  // what is wrong, in words
  std::string args;                  // after `diffuse`; {run} {new} {tmp} {tiny} {fx} are filled in
  std::vector<std::string> needles;  // each must appear in stderr (placeholders filled in)
  int exit_code = 2;
};

std::string be32(uint32_t v) { return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)}; }
std::string idx_file(uint8_t ndim, const std::vector<uint32_t>& dims, size_t payload) {
  std::string s{'\0', '\0', '\x08', char(ndim)};
  for (auto d : dims) s += be32(d);
  return s + std::string(payload, '\x07');
}
std::string slurp(const fs::path& p) { return diffuse::test::Background::slurp(p); }

// One trained run and the hostile files, made once per test process.
class Fixture {
 public:
  static Fixture& get() {
    static Fixture f;
    return f;
  }
  std::string tmp() const { return dir_.str(); }
  std::string run() const { return dir_.str() + "/run"; }

  std::string fill(std::string s) const {
    const std::map<std::string, std::string> subs{{"{run}", run()},
                                                  {"{new}", tmp() + "/new-run"},
                                                  {"{tmp}", tmp()},
                                                  {"{tiny}", std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml"},
                                                  {"{fx}", tmp() + "/features.pt"}};
    for (const auto& [k, v] : subs)
      for (size_t at = s.find(k); at != std::string::npos; at = s.find(k, at + v.size())) s.replace(at, k.size(), v);
    return s;
  }

  // Every file under `dir` with its size and a hash of its bytes and mode.
  static std::string snapshot(const fs::path& dir) {
    std::string s;
    std::vector<fs::path> files;
    for (const auto& e : fs::recursive_directory_iterator(dir)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& p : files) {
      s += p.string();
      if (fs::is_symlink(p)) s += " -> " + fs::read_symlink(p).string();
      else if (fs::is_regular_file(p)) {
        const auto bytes = slurp(p);
        s += fmt::format(" {} {:x}", bytes.size(), diffuse::fnv1a64(bytes.data(), bytes.size()));
      }
      s += "\n";
    }
    return s;
  }

 private:
  Fixture() {
    const auto r =
        run_diffuse(fill("train --config {tiny} --run-dir {run} --set train.steps=2 --set "
                         "train.checkpoint_every=2 --set data.limit=64 --set train.threads=1"));
    if (r.exit_code != 0) throw std::runtime_error("fixture run failed: " + r.err);
    write_configs();
    write_idx_dirs();
    write_cifar_and_images();
    write_checkpoints_and_caches();
  }
  void put(const std::string& rel, const std::string& bytes) const {
    const fs::path p = fs::path(tmp()) / rel;
    fs::create_directories(p.parent_path());
    tb::write_file(p.string(), bytes);
  }
  void write_configs() const {
    put("syntax.yaml", "model:\n  type: unet\n  channel_mult: [1, 2\n");
    put("unknown-key.yaml", "train:\n  stepz: 5\n");
    put("wrong-type.yaml", "train:\n  steps: many\n");
    put("list.yaml", "- model\n- train\n");
    put("a-file", "not a directory\n");
  }
  void write_idx_dirs() const {
    const std::string labels = idx_file(1, {10}, 10);
    const std::string good = idx_file(3, {10, 28, 28}, 10 * 28 * 28);
    put("idx-truncated/train-images-idx3-ubyte", idx_file(3, {10, 28, 28}, 100));
    put("idx-truncated/train-labels-idx1-ubyte", labels);
    put("idx-wraps/train-images-idx3-ubyte", idx_file(3, {65536, 1u << 24, 1u << 24}, 0));
    put("idx-wraps/train-labels-idx1-ubyte", labels);
    put("idx-magic/train-images-idx3-ubyte", "GIF89a" + std::string(100, '\0'));
    put("idx-magic/train-labels-idx1-ubyte", labels);
    put("idx-gzip/train-images-idx3-ubyte.gz", std::string("\x1f\x8b\x08\x00", 4) + std::string(64, 'x'));
    put("idx-gzip/train-labels-idx1-ubyte", labels);
    put("idx-labels/train-images-idx3-ubyte", good);
    put("idx-labels/train-labels-idx1-ubyte", idx_file(1, {9}, 9));
    std::string big_label = labels;
    big_label.back() = 42;
    put("idx-label-range/train-images-idx3-ubyte", good);
    put("idx-label-range/train-labels-idx1-ubyte", big_label);
    fs::create_directories(fs::path(tmp()) / "idx-missing");
  }
  void write_cifar_and_images() const {
    put("cifar-size.bin", std::string(3073 * 2 + 5, '\0'));
    put("cifar-label.bin", std::string(1, '\x0c') + std::string(3072, '\0'));
    put("images-empty/readme.txt", "no images here\n");
    put("images-text/a.png", "hello, I am not a PNG\n");
    std::string huge("\x89PNG\r\n\x1a\n", 8);
    std::string ihdr = "IHDR" + be32(20000) + be32(20000) + std::string("\x08\x00\x00\x00\x00", 5);
    huge += be32(13) + ihdr + be32(crc32(0, reinterpret_cast<const Bytef*>(ihdr.data()), ihdr.size()));
    put("images-huge/big.png", huge);
    const auto png = diffuse::encode_png(torch::zeros({1, 8, 8}, torch::kUInt8));
    put("images-mixed/root.png", png);
    put("images-mixed/shirts/a.png", png);
  }
  void write_checkpoints_and_caches() const {
    const auto ckpt = slurp(fs::path(run()) / "checkpoints" / "ckpt_00000002.pt");
    put("truncated.pt", ckpt.substr(0, ckpt.size() / 2));
    std::mt19937 gen(7);
    std::string noise(4096, '\0');
    for (auto& c : noise) c = static_cast<char>(gen());
    put("noise.pt", noise);
    {
      torch::jit::Module m("NotACheckpoint");
      m.register_buffer("w", torch::ones({3}));
      m.save(tmp() + "/module.pt");
    }
    {
      torch::jit::Module m("Features");
      m.define(R"(
        def forward(self, x):
            return torch.cat([x.mean([2, 3]), torch.amax(x, [2, 3])], 1)
      )");
      m.save(tmp() + "/features.pt");
    }
    fs::create_directories(fs::path(tmp()) / "empty-dir");
    put("stats-garbage.pt", "nope");
    diffuse::FeatureStats other;
    other.mu = torch::zeros({6}, torch::kFloat64);
    other.sigma = torch::eye(6, torch::kFloat64);
    other.n = 10;
    other.extractor = "fnv1a64:0000000000000000";
    diffuse::save_feature_stats(other, tmp() + "/stats-other.pt");
    const double mu[2] = {0, 0}, sigma[4] = {1, 0, 0, 1};
    const auto npz = tb::zip({{"mu.npy", tb::npy("<f8", false, {2}, mu, sizeof mu)},
                              {"sigma.npy", tb::npy("<f8", false, {2, 2}, sigma, sizeof sigma)}},
                             false);
    put("stats-truncated.npz", npz.substr(0, npz.size() / 2));
    const double wide[6] = {1, 0, 0, 0, 1, 0};
    put("stats-shape.npz", tb::zip({{"mu.npy", tb::npy("<f8", false, {2}, mu, sizeof mu)},
                                    {"sigma.npy", tb::npy("<f8", false, {2, 3}, wide, sizeof wide)}},
                                   false));
  }

  diffuse::test::TempDir dir_;
};

void check_rows(const char* group, const std::vector<Row>& rows) {
  auto& f = Fixture::get();
  const std::string before = Fixture::snapshot(f.run());
  std::string table;
  for (const auto& row : rows) {
    SCOPED_TRACE(row.id);
    const std::string args = f.fill(row.args);
    const auto r = run_diffuse(args);
    EXPECT_EQ(r.exit_code, row.exit_code) << args << "\n" << r.err;
    for (const auto& n : row.needles) {
      const auto needle = f.fill(n);
      EXPECT_NE(r.err.find(needle), std::string::npos) << "'" << needle << "' not in stderr of " << args << "\n"
                                                       << r.err;
    }
    EXPECT_EQ(Fixture::snapshot(f.run()), before) << args << " changed the run directory";
    EXPECT_FALSE(fs::exists(f.tmp() + "/new-run")) << args << " left the run directory it was refused for";
    std::error_code ec;
    fs::remove_all(f.tmp() + "/new-run", ec);
    const auto at_error = r.err.find("error:");
    auto message = r.err.substr(at_error == std::string::npos ? 0 : r.err.rfind('\n', at_error) + 1);
    message = message.substr(0, message.find('\n'));
    for (size_t at; (at = message.find(f.tmp())) != std::string::npos;) message.replace(at, f.tmp().size(), "<tmp>");
    for (size_t at; (at = message.find('|')) != std::string::npos;) message.replace(at, 1, "\\|");
    std::string shown = row.args;
    table += fmt::format("| `{}` | {} | `diffuse {}` | {} | {} |\n", row.id, row.what, shown, r.exit_code, message);
  }
  if (const char* dir = std::getenv("DIFFUSE_BAD_INPUT_TABLE"))
    std::ofstream(fs::path(dir) / (std::string(group) + ".md")) << table;
}

// The rows read as a table: one input a line.
// clang-format off
const std::string kTrainNew = "train --config {tiny} --run-dir {new} --set train.steps=1 ";

std::vector<Row> option_rows() {
  return {
      {"num-zero", "a sample count of 0", "sample --checkpoint {run} --num 0", {"--num: must be >= 1, got 0"}},
      {"steps-zero", "0 sampling steps", "sample --checkpoint {run} --steps 0", {"--steps: must be >= 1, got 0"}},
      {"unknown-sampler", "a sampler that does not exist", "sample --checkpoint {run} --sampler dpm", {"dpm", "ddim"}},
      {"negative-eta", "a negative eta", "sample --checkpoint {run} --eta -0.5", {"--eta: must be >= 0, got -0.5"}},
      {"unknown-option", "an option no command has", "sample --checkpoint {run} --colour red", {"--colour"}},
      {"bad-format", "an output format that does not exist", "eval --checkpoint {run} --format xml",
       {"--format", "xml"}},
      {"unknown-metric", "a metric that does not exist", "eval --checkpoint {run} --metrics fidd", {"fidd"}},
      {"bad-respace", "a respacing that is not a spacing", "schedule --respace ddim0", {"--respace 'ddim0'"}},
      {"negative-threads", "a negative thread count", "sample --checkpoint {run} --threads -1", {"--threads"}},
      {"label-unconditional", "a class label for an unconditional model", "sample --checkpoint {run} --label 3",
       {"--label", "class-conditional"}},
      {"run-dir-file", "a run directory that is a file", "train --config {tiny} --run-dir {tmp}/a-file",
       {"'{tmp}/a-file'", "not a directory"}},
      {"resume-missing", "--resume of a run that does not exist", "train --resume {tmp}/no-such-run",
       {"'{tmp}/no-such-run'", "does not exist"}},
      {"fresh-over-run", "a fresh run in a directory that holds one", "train --config {tiny} --run-dir {run}",
       {"'{run}'", "--resume", "--overwrite"}},
      {"sample-out-file", "a sample output directory that is a file",
       "sample --checkpoint {run} --num 1 --steps 1 --out {tmp}/a-file",
       {"'{tmp}/a-file'"}},
  };
}

std::vector<Row> config_rows() {
  return {
      {"config-missing", "a config file that does not exist", "train --config {tmp}/none.yaml --run-dir {new}",
       {"'{tmp}/none.yaml'"}},
      {"config-syntax", "YAML that does not parse", "train --config {tmp}/syntax.yaml --run-dir {new}",
       {"{tmp}/syntax.yaml:4"}},
      {"config-unknown-key", "a key the section does not have", "train --config {tmp}/unknown-key.yaml --run-dir {new}",
       {"train.stepz"}},
      {"config-wrong-type", "a word where a number belongs", "train --config {tmp}/wrong-type.yaml --run-dir {new}",
       {"train.steps", "many"}},
      {"config-not-a-map", "a YAML list instead of a map", "train --config {tmp}/list.yaml --run-dir {new}",
       {"{tmp}/list.yaml"}},
      {"set-no-equals", "--set without '='", kTrainNew + "--set train.steps", {"train.steps", "section.key=VALUE"}},
      {"set-unknown-section", "--set of a section that does not exist", kTrainNew + "--set trian.steps=3", {"trian"}},
      {"set-out-of-range", "a learning rate below zero", kTrainNew + "--set train.lr=-1", {"train.lr"}},
      {"set-bad-enum", "a schedule name that does not exist", kTrainNew + "--set diffusion.schedule=cosin",
       {"diffusion.schedule", "cosine"}},
      {"betas-file-missing", "a betas_file that does not exist",
       kTrainNew + "--set diffusion.schedule=custom --set diffusion.betas_file={tmp}/no-betas.txt",
       {"{tmp}/no-betas.txt"}},
      {"learn-sigma-fixed", "learned sigmas with a fixed variance", kTrainNew + "--set model.learn_sigma=true",
       {"learn_sigma"}},
      {"resume-other-model", "--resume with a model of another width",
       "train --resume {run} --set model.model_channels=64",
       {"another model configuration"}},
  };
}

std::vector<Row> data_rows() {
  const std::string fm = kTrainNew + "--set data.path=";
  const std::string folder = kTrainNew + "--set data.dataset=folder --set data.path=";
  const std::string cifar = kTrainNew + "--set data.dataset=cifar10 --set data.path=";
  return {
      {"data-missing", "a data.path that does not exist", fm + "{tmp}/no-data", {"data.path '{tmp}/no-data'"}},
      {"idx-no-files", "a directory without the IDX files", fm + "{tmp}/idx-missing", {"{tmp}/idx-missing", "tried"}},
      {"idx-truncated", "an IDX file shorter than its header says", fm + "{tmp}/idx-truncated",
       {"{tmp}/idx-truncated/train-images-idx3-ubyte", "truncated"}},
      {"idx-wrapping-dims", "IDX dimensions whose product wraps 64 bits", fm + "{tmp}/idx-wraps",
       {"{tmp}/idx-wraps/train-images-idx3-ubyte"}},
      {"idx-bad-magic", "a file that is not IDX", fm + "{tmp}/idx-magic", {"{tmp}/idx-magic/train-images-idx3-ubyte"}},
      {"idx-bad-gzip", "a corrupt gzip stream", fm + "{tmp}/idx-gzip", {"{tmp}/idx-gzip/train-images-idx3-ubyte.gz"}},
      {"idx-label-count", "fewer labels than images", fm + "{tmp}/idx-labels", {"9 labels", "10 images"}},
      {"idx-label-range", "a label outside 0..9", fm + "{tmp}/idx-label-range", {"label 42", "outside 0..9"}},
      {"cifar-size", "a CIFAR-10 batch that is not whole records", cifar + "{tmp}/cifar-size.bin",
       {"{tmp}/cifar-size.bin", "3073"}},
      {"cifar-label", "a CIFAR-10 record with label 12", cifar + "{tmp}/cifar-label.bin", {"label 12", "outside 0..9"}},
      {"folder-no-images", "an image folder without images", folder + "{tmp}/images-empty",
       {"no images", "{tmp}/images-empty"}},
      {"folder-not-png", "a .png that is text", folder + "{tmp}/images-text", {"{tmp}/images-text/a.png"}},
      {"folder-huge-image", "a PNG header of 20000 x 20000 pixels", folder + "{tmp}/images-huge",
       // 1.13's stb reads the header and our 16384 cap refuses it; newer stb refuses it itself
       {"{tmp}/images-huge/big.png"}},
      {"folder-mixed-layout", "images beside class subfolders", folder + "{tmp}/images-mixed",
       {"root.png", "class subfolder"}},
      {"resume-bad-data", "--resume onto a truncated dataset",
       "train --resume {run} --set data.path={tmp}/idx-truncated",
       {"truncated"}},
  };
}

std::vector<Row> checkpoint_rows() {
  const std::string fid =
      "eval --checkpoint {run} --metrics fid --num-samples 2 --feature-extractor {fx} --reference-stats ";
  return {
      {"ckpt-missing", "a checkpoint that does not exist", "sample --checkpoint {tmp}/none.pt", {"'{tmp}/none.pt'"}},
      {"ckpt-truncated", "half a checkpoint", "sample --checkpoint {tmp}/truncated.pt", {"'{tmp}/truncated.pt'"}},
      {"ckpt-noise", "random bytes named .pt", "sample --checkpoint {tmp}/noise.pt", {"'{tmp}/noise.pt'"}},
      {"ckpt-foreign", "a TorchScript module, not a checkpoint", "sample --checkpoint {tmp}/module.pt",
       {"'{tmp}/module.pt'", "is a zip archive", "diffuse import"}},
      {"ckpt-empty-dir", "a directory without checkpoints", "sample --checkpoint {tmp}/empty-dir",
       {"'{tmp}/empty-dir'", "latest.pt"}},
      {"ckpt-config-file", "a YAML config given as a checkpoint", "eval --checkpoint {tmp}/syntax.yaml",
       {"'{tmp}/syntax.yaml'"}},
      {"ckpt-other-model", "weights of another model width", "sample --checkpoint {run} --set model.model_channels=64",
       {"another model configuration"}},
      {"extractor-missing", "a feature network that does not exist",
       "eval --checkpoint {run} --metrics fid --num-samples 2 --feature-extractor {tmp}/inception.pt",
       {"{tmp}/inception.pt"}},
      {"stats-garbage", "a reference-statistics file of garbage", fid + "{tmp}/stats-garbage.pt",
       {"{tmp}/stats-garbage.pt"}},
      {"stats-other-network", "statistics of another feature network", fid + "{tmp}/stats-other.pt",
       {"{tmp}/stats-other.pt", "another feature network"}},
      {"stats-truncated-npz", "a truncated .npz", fid + "{tmp}/stats-truncated.npz", {"{tmp}/stats-truncated.npz"}},
      {"stats-shape-npz", "an .npz whose sigma is 2 x 3", fid + "{tmp}/stats-shape.npz",
       {"{tmp}/stats-shape.npz", "sigma"}},
  };
}
// clang-format on

}  // namespace

TEST(BadInput, Options) { check_rows("options", option_rows()); }
TEST(BadInput, Configs) { check_rows("configs", config_rows()); }
TEST(BadInput, DataAndImageFolders) { check_rows("data", data_rows()); }
TEST(BadInput, CheckpointsAndCaches) { check_rows("checkpoints", checkpoint_rows()); }

// docs/bad-input.md names every row, so the table there is the whole list.
TEST(BadInput, EveryRowIsInTheDocs) {
  const auto doc = slurp(fs::path(DIFFUSE_SOURCE_DIR) / "docs" / "bad-input.md");
  ASSERT_FALSE(doc.empty());
  size_t n = 0;
  for (const auto& rows : {option_rows(), config_rows(), data_rows(), checkpoint_rows()})
    for (const auto& row : rows) {
      ++n;
      EXPECT_NE(doc.find(fmt::format("| `{}` |", row.id)), std::string::npos)
          << row.id << " is not in docs/bad-input.md";
    }
  EXPECT_GE(n, 30u);
}
