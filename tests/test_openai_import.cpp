// OpenAI checkpoints against OpenAI's own code (tests/reference/make_openai_unet.py ran
// improved-diffusion's and guided-diffusion's UNetModel and GaussianDiffusion): the state_dicts
// it wrote import through the flags it was given, and the imported network reproduces upstream's
// outputs, one reverse step and the bound's term on them; the flags of every published model map
// to what the upstream scripts build.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/generate.h"
#include "diffuse/image_io.h"
#include "diffuse/losses.h"
#include "diffuse/models/network.h"
#include "diffuse/models/super_res.h"
#include "diffuse/models/unet.h"
#include "diffuse/openai_checkpoint.h"
#include "diffuse/safetensors.h"
#include "diffuse/schedule.h"
#include "diffuse/torch_save.h"
#include "diffuse/train/checkpoint.h"
#include "openai_fixtures.h"
#include "test_util.h"

using namespace diffuse;
using diffuse::test::first_line;
using diffuse::test::get;
using diffuse::test::relative_error;
using diffuse::test::run_diffuse;
using diffuse::test::TempDir;

namespace {

std::string reference(const std::string& name) { return diffuse::test::openai_fixture("openai_unet", name); }

struct Fixture {
  const char* name;
  OpenAiFamily family;
};
const Fixture kFixtures[] = {
    {"improved_cosine4000", OpenAiFamily::Improved}, {"guided_cond_newattn", OpenAiFamily::Guided},
    {"guided_xstart_heads", OpenAiFamily::Guided},   {"guided_half_mult", OpenAiFamily::Guided},
    {"guided_superres", OpenAiFamily::Guided},       {"improved_superres", OpenAiFamily::Improved}};

struct Imported {
  Config cfg;
  std::shared_ptr<Network> net;
};

Imported import_fixture(const Fixture& f) {
  Imported r;
  r.cfg = openai_config({first_line(reference(std::string(f.name) + ".flags"))}, f.family);
  const DataShape shape{{3, r.cfg.data.image_size, r.cfg.data.image_size}, r.cfg.model.num_classes};
  r.net = make_model(r.cfg, shape);
  const std::string file = reference(std::string(f.name) + ".pt");
  load_openai_weights(*r.net, load_torch_save(file), file);
  r.net->eval();
  return r;
}

}  // namespace

TEST(OpenAiImport, TheImportedNetworkReproducesUpstreamOutputsAndReverseStep) {
  torch::NoGradGuard no_grad;
  for (const auto& f : kFixtures) {
    SCOPED_TRACE(f.name);
    const Imported m = import_fixture(f);
    const TorchSaveFile io = load_torch_save(reference(std::string(f.name) + ".io.pt"));
    const auto x = get(io, "x"), t = get(io, "t");
    const torch::Tensor y = io.find("y") ? get(io, "y") : torch::Tensor();
    const torch::Tensor low_res = io.find("low_res") ? get(io, "low_res") : torch::Tensor();
    // The network rescales t itself (rescale_timesteps in the first fixture); the fixture's out
    // is upstream's model at the timesteps its diffusion feeds it.
    const auto out = m.net->forward(network_input(*m.net, x, low_res), t, y);
    EXPECT_LT(relative_error(out, get(io, "out")), 1e-5);

    const GaussianDiffusion diffusion = make_diffusion(m.cfg);
    ReverseOptions clip;
    clip.clip_x0 = true;
    const ReverseStats stats = diffusion.p_mean_variance(out, x, t, clip);
    EXPECT_LT(relative_error(stats.mean, get(io, "mean")), 1e-5);
    EXPECT_LT(relative_error(stats.log_variance, get(io, "log_variance")), 1e-5);
    // x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies an eps error by sqrt(1 / abar - 1)
    // (about 60 at t = 911 of the linear schedule): the bound scales with it, not a looser test.
    double gain = 1;
    for (int64_t i = 0; i < t.size(0) && diffusion.prediction() == Prediction::Epsilon; ++i)
      gain = std::max(gain, std::sqrt(1 / diffusion.schedule().alpha_bar()[t[i].item<int64_t>()] - 1));
    EXPECT_LT(relative_error(stats.x0_pred, get(io, "pred_xstart")), 1e-5 * gain);
    EXPECT_LT(relative_error(diffusion.p_sample(stats, t, get(io, "noise")), get(io, "sample")), 1e-5);
    // The denoising-matching term (and at t = 0 the decoder), with upstream's tanh CDF.
    const auto vb = vlb_term_bpd(diffusion, out, get(io, "x_start"), x, t, clip, DecoderCdf::Tanh).bpd;
    const auto vb_ref = get(io, "vb");
    for (int64_t i = 0; i < vb_ref.size(0); ++i)
      EXPECT_NEAR(vb[i].item<double>(), vb_ref[i].item<double>(), 1e-5 * std::abs(vb_ref[i].item<double>()) + 1e-7)
          << "t = " << t[i].item<int64_t>();
  }
}

TEST(OpenAiImport, EveryOptionOfTheFixturesIsInUse) {
  // The fixtures are only worth what they cover: check that their flags reach the options.
  const Config a = import_fixture(kFixtures[0]).cfg, b = import_fixture(kFixtures[1]).cfg,
               c = import_fixture(kFixtures[2]).cfg;
  EXPECT_TRUE(a.diffusion.rescale_timesteps);
  EXPECT_EQ(a.diffusion.timesteps, 4000);
  EXPECT_EQ(a.model.num_heads_upsample, 1);
  EXPECT_FALSE(a.model.use_scale_shift_norm);
  EXPECT_EQ(a.diffusion.variance, VarianceType::LearnedRange);
  EXPECT_TRUE(b.model.use_new_attention_order);
  EXPECT_TRUE(b.model.resblock_updown);
  EXPECT_EQ(b.model.num_head_channels, 16);
  EXPECT_EQ(b.model.num_classes, 1000);
  EXPECT_FALSE(b.diffusion.rescale_timesteps);
  EXPECT_EQ(c.diffusion.prediction, Prediction::X0);
  EXPECT_EQ(c.diffusion.variance, VarianceType::FixedLarge);
  EXPECT_EQ(c.model.num_heads_upsample, 2);
  const Config h = import_fixture(kFixtures[3]).cfg, g = import_fixture(kFixtures[4]).cfg,
               i = import_fixture(kFixtures[5]).cfg;
  EXPECT_EQ(h.model.channel_mult, (std::vector<double>{0.5, 1}));
  EXPECT_EQ(g.model.low_res_size, 8);
  EXPECT_EQ(g.data.image_size, 16);
  EXPECT_EQ(g.model.num_classes, 1000);
  EXPECT_TRUE(g.model.resblock_updown);
  EXPECT_EQ(i.model.low_res_size, 4);
  EXPECT_TRUE(i.diffusion.rescale_timesteps);
  EXPECT_EQ(make_model(g, DataShape{{3, 16, 16}, 1000})->in_channels(), 6);
  {
    // improved_superres's output depends on t (scale-shift norm), so its fixture checks
    // rescale_timesteps; improved_cosine4000's cannot (one channel per GroupNorm group removes
    // an added time embedding).
    torch::NoGradGuard no_grad;
    const Imported sr = import_fixture(kFixtures[5]);
    const TorchSaveFile io = load_torch_save(reference("improved_superres.io.pt"));
    sr.net->set_timestep_scale(1.0);
    const auto unscaled = sr.net->forward(network_input(*sr.net, get(io, "x"), get(io, "low_res")), get(io, "t"));
    EXPECT_GT(relative_error(unscaled, get(io, "out")), 1e-3);
  }
  EXPECT_EQ(load_torch_save(reference("improved_cosine4000.pt")).format, "zip");
  const auto legacy = load_torch_save(reference("guided_cond_newattn.pt"));
  EXPECT_EQ(legacy.format, "legacy");
  EXPECT_EQ(get(legacy, "input_blocks.0.0.weight").scalar_type(), torch::kHalf);
}

TEST(OpenAiImport, LegacyAndNewAttentionOrdersDifferOnlyInLayout) {
  // New order [3, heads, ch] is the legacy [heads, 3, ch] with the channel blocks permuted.
  torch::manual_seed(3);
  const int64_t heads = 2, ch = 4, b = 2, t = 5;
  const auto legacy = torch::randn({b, heads * 3 * ch, t});
  const auto as_new = legacy.view({b, heads, 3, ch, t}).transpose(1, 2).reshape({b, 3 * heads * ch, t});
  EXPECT_LT(relative_error(qkv_attention(as_new, heads, QkvOrder::New), qkv_attention(legacy, heads)), 1e-6);
  EXPECT_GT(relative_error(qkv_attention(legacy, heads, QkvOrder::New), qkv_attention(legacy, heads)), 1e-2);
}

TEST(OpenAiImport, PublishedFlagsMapToWhatTheUpstreamScriptsBuild) {
  std::ifstream in(reference("published.json"));
  const auto facts = nlohmann::json::parse(in);
  ASSERT_GE(facts.size(), 14u);
  int built = 0;
  for (const auto& e : facts) {
    const std::string flags = e["flags"];
    SCOPED_TRACE(flags);
    const auto family = e["family"] == "improved" ? OpenAiFamily::Improved : OpenAiFamily::Guided;
    const Config cfg = openai_config({flags}, family);
    const ModelConfig& m = cfg.model;
    EXPECT_EQ(m.model_channels, e["model_channels"].get<int64_t>());
    EXPECT_EQ(m.channel_mult, e["channel_mult"].get<std::vector<double>>());
    EXPECT_EQ(m.low_res_size, e["low_res_size"].get<int64_t>());
    EXPECT_EQ(m.low_res_size > 0 ? 6 : 3, e["in_channels"].get<int64_t>());
    EXPECT_EQ(m.num_res_blocks, e["num_res_blocks"].get<int64_t>());
    std::set<int64_t> ours(m.attention_resolutions.begin(), m.attention_resolutions.end()), theirs;
    for (int64_t ds : e["attention_downsample"].get<std::vector<int64_t>>())
      if (ds <= (int64_t{1} << (m.channel_mult.size() - 1))) theirs.insert(cfg.data.image_size / ds);
    EXPECT_EQ(ours, theirs);
    EXPECT_EQ(m.num_heads, e["num_heads"].get<int64_t>());
    EXPECT_EQ(m.num_heads_upsample == -1 ? m.num_heads : m.num_heads_upsample, e["num_heads_upsample"].get<int64_t>());
    EXPECT_EQ(m.num_head_channels, e["num_head_channels"].get<int64_t>());
    EXPECT_EQ(m.learn_sigma ? 6 : 3, e["out_channels"].get<int64_t>());
    EXPECT_EQ(m.num_classes, e["num_classes"].get<int64_t>());
    EXPECT_DOUBLE_EQ(m.dropout, e["dropout"].get<double>());
    EXPECT_EQ(m.use_new_attention_order, e["use_new_attention_order"].get<bool>());
    EXPECT_EQ(m.resblock_updown, e["resblock_updown"].get<bool>());
    EXPECT_EQ(m.use_scale_shift_norm, e["use_scale_shift_norm"].get<bool>());

    const DiffusionConfig& d = cfg.diffusion;
    EXPECT_EQ(d.timesteps, e["num_timesteps"].get<int64_t>());
    EXPECT_EQ(d.prediction == Prediction::X0 ? "START_X" : "EPSILON", e["mean_type"].get<std::string>());
    const std::string var = e["var_type"];
    EXPECT_EQ(d.variance, var == "LEARNED_RANGE" ? VarianceType::LearnedRange
                          : var == "FIXED_SMALL" ? VarianceType::FixedSmall
                                                 : VarianceType::FixedLarge);
    // RESCALED_MSE adds vb * T / 1000 (hybrid, lambda 1e-3), MSE adds vb (lambda 1 / T); either
    // is plain MSE when the variance is fixed. RESCALED_KL is the bound.
    const std::string loss = e["loss_type"];
    if (loss == "RESCALED_KL") {
      EXPECT_EQ(d.loss, LossType::Kl);
    } else if (!m.learn_sigma) {
      EXPECT_EQ(d.loss, LossType::Simple);
    } else {
      EXPECT_EQ(d.loss, LossType::Hybrid);
      EXPECT_DOUBLE_EQ(d.hybrid_lambda, loss == "RESCALED_MSE" ? 1e-3 : 1.0 / static_cast<double>(d.timesteps));
    }
    EXPECT_EQ(d.rescale_timesteps, e["rescale_timesteps"].get<bool>());
    const auto betas = make_schedule(d).betas();
    EXPECT_NEAR(betas.front(), e["beta_first"].get<double>(), 1e-15);
    EXPECT_NEAR(betas.back(), e["beta_last"].get<double>(), 1e-12);
    double sum = 0;
    for (double v : betas) sum += v;
    EXPECT_NEAR(sum, e["beta_sum"].get<double>(), 1e-10 * sum);

    // The architecture itself, for the models small enough to build here: the parameter count
    // equals upstream's, plus the null-label row of a class-conditional network.
    const int64_t params = e["parameters"];
    if (params < 60'000'000) {
      const auto net = make_model(cfg, DataShape{{3, cfg.data.image_size, cfg.data.image_size}, m.num_classes});
      EXPECT_EQ(count_parameters(*net), params + (m.class_cond ? 4 * m.model_channels : 0));
      ++built;
    }
  }
  EXPECT_GE(built, 2);
}

TEST(OpenAiImport, BadFlagsAndMismatchedFilesAreNamed) {
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_HAS(message([] { openai_config({"--image_size 32 --lr 1e-4"}, OpenAiFamily::Improved); }),
             ("--lr is not one of improved-diffusion's model, diffusion or sampling flags"));
  EXPECT_HAS(message([] { openai_config({"--image_size 32 --resblock_updown True"}, OpenAiFamily::Improved); }),
             ("--resblock_updown"));
  EXPECT_HAS(message([] {
               openai_config({"--learn_sigma", "maybe"}, OpenAiFamily::Guided);
             }),
             ("--learn_sigma maybe: expected a boolean"));
  EXPECT_HAS(message([] { openai_config({"--image_size 16 --channel_mult 1,0"}, OpenAiFamily::Guided); }),
             ("--channel_mult 1,0: 0 is not a positive multiplier"));
  EXPECT_HAS(message([] { openai_config({"--large_size 64"}, OpenAiFamily::Guided); }),
             ("needs both --large_size and --small_size"));
  EXPECT_HAS(message([] { openai_config({"--large_size 64 --small_size 64"}, OpenAiFamily::Guided); }),
             ("--small_size 64: must be >= 1 and below --large_size 64"));
  EXPECT_HAS(message([] { openai_config({"--large_size 128 --small_size 32"}, OpenAiFamily::Improved); }),
             ("--large_size 128"));
  EXPECT_HAS(message([] { openai_config({"--image_size 48"}, OpenAiFamily::Improved); }), ("--image_size 48"));
  EXPECT_HAS(message([] { openai_config({"--noise_schedule sigmoid --image_size 32"}, OpenAiFamily::Improved); }),
             ("--noise_schedule sigmoid"));
  EXPECT_HAS(message([] { openai_config({"--num_channels=abc --image_size 32"}, OpenAiFamily::Improved); }),
             ("--num_channels abc: expected an integer"));

  // The improved fixture's file with other flags: the first misshapen tensor is named.
  const std::string file = reference("improved_cosine4000.pt");
  const std::string flags = first_line(reference("improved_cosine4000.flags"));
  const auto wrong = [&](const std::string& extra) {
    return message([&] {
      const Config cfg = openai_config({flags, extra}, OpenAiFamily::Improved);
      const auto net = make_model(cfg, DataShape{{3, 16, 16}, cfg.model.num_classes});
      load_openai_weights(*net, load_torch_save(file), file);
    });
  };
  EXPECT_HAS(wrong("--num_channels 64"), ("tensor 'time_embed.0.weight' is [128, 32], but the flags build [256, 64]"));
  EXPECT_HAS(wrong("--learn_sigma False"), ("'out.2.weight'"));
  EXPECT_HAS(wrong("--num_res_blocks 2"), ("has no tensor 'input_blocks"));
  EXPECT_HAS(wrong("--attention_resolutions 8"), ("the flags build no tensor for"));
}

TEST(OpenAiImport, TheCliImportsAndTheCheckpointSamples) {
  TempDir dir;
  const std::string ckpt = (dir.path() / "guided.pt").string();
  const std::string flags = first_line(reference("guided_cond_newattn.flags"));
  auto r = run_diffuse("import " + reference("guided_cond_newattn.pt") + " --from guided-diffusion --flags '" + flags +
                       "' --out " + ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_HAS(r.out, ("legacy torch.save state_dict"));
  EXPECT_HAS(r.out, ("wrote: " + ckpt));
  // The checkpoint holds the same weights: its network gives upstream's output.
  {
    torch::NoGradGuard no_grad;
    const CheckpointReader reader(ckpt);
    const Config cfg = parse_config(reader.meta().config_yaml);
    const auto net = load_network(reader, cfg, /*prefer_ema=*/true, torch::kCPU).net;
    const TorchSaveFile io = load_torch_save(reference("guided_cond_newattn.io.pt"));
    EXPECT_LT(relative_error(net->forward(get(io, "x"), get(io, "t"), get(io, "y")), get(io, "out")), 1e-5);
  }
  r = run_diffuse("sample --checkpoint " + ckpt + " --num 2 --steps 3 --label 7 --seed 1 --out " +
                  (dir.path() / "samples").string());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "samples" / "grid.png")) << r.out;

  r = run_diffuse("sample --checkpoint " + ckpt + " --num 2 --steps 3 --guidance-scale 3 --out " +
                  (dir.path() / "guided").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "trained without the null label");

  r = run_diffuse("import " + reference("guided_cond_newattn.pt") + " --flags '--image_size 16' --out " + ckpt);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, ("--from"));
}

TEST(OpenAiImport, TheSameStateDictAsSafetensorsImportsAlike) {
  TempDir dir;
  const std::string st = (dir.path() / "improved.safetensors").string(), ckpt = (dir.path() / "improved.pt").string();
  save_safetensors(st, load_torch_save(reference("improved_cosine4000.pt")).tensors);
  const auto r =
      import_openai_checkpoint(st, {first_line(reference("improved_cosine4000.flags"))}, OpenAiFamily::Improved, ckpt);
  EXPECT_EQ(r.format, "safetensors");
  torch::NoGradGuard no_grad;
  const CheckpointReader reader(ckpt);
  const auto net = load_network(reader, parse_config(reader.meta().config_yaml), false, torch::kCPU).net;
  const TorchSaveFile io = load_torch_save(reference("improved_cosine4000.io.pt"));
  EXPECT_LT(relative_error(net->forward(get(io, "x"), get(io, "t")), get(io, "out")), 1e-5);
}

TEST(OpenAiImport, TheBoundOfAConditionalModelIsGivenTheImagesLabels) {
  // OpenAI's class-conditional models never learned the null label, so their bound is of
  // p(x | y): eval gives each held-out image its own label. Two folders with the same images in
  // the same order differ only in the second image's class (a/2.png vs b/2.png), so equal
  // totals would mean the labels were not used.
  TempDir dir;
  const std::string ckpt = (dir.path() / "guided.pt").string();
  auto r = run_diffuse("import " + reference("guided_cond_newattn.pt") + " --from guided-diffusion --flags '" +
                       first_line(reference("guided_cond_newattn.flags")) + "' --out " + ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  torch::manual_seed(5);
  const auto one = torch::randint(0, 256, {3, 16, 16}, torch::kUInt8);
  const auto two = torch::randint(0, 256, {3, 16, 16}, torch::kUInt8);
  for (const char* second : {"a", "b"}) {
    std::filesystem::create_directories(dir.path() / second / "a");
    std::filesystem::create_directories(dir.path() / second / second);
    save_png((dir.path() / second / "a" / "1.png").string(), one);
    save_png((dir.path() / second / second / "2.png").string(), two);
  }
  double totals[2] = {0, 0};
  int k = 0;
  for (const char* second : {"a", "b"}) {
    const auto out = (dir.path() / ("eval_" + std::string(second))).string();
    r = run_diffuse("eval --checkpoint " + ckpt + " --metrics bpd --batch-size 2 --format json --set data.path=" +
                    (dir.path() / second).string() + " --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_HAS(r.out, "p(x | y)");
    const auto j = nlohmann::json::parse(r.out);
    totals[k++] = j["total_bpd"].get<double>();
    EXPECT_EQ(j["num_images"].get<double>(), 2);
  }
  EXPECT_TRUE(std::isfinite(totals[0]) && std::isfinite(totals[1]));
  EXPECT_GT(std::abs(totals[0] - totals[1]), 1e-6) << totals[0];
}

TEST(OpenAiImport, TheUpsamplerSamplesFromAnNpzOrAFolderOfLowResolutionImages) {
  // guided_superres.base.npz is the fixture's low_res as image_sample.py saves samples (uint8
  // NHWC arr_0, labels arr_1), the --base_samples of super_res_sample.py.
  TempDir dir;
  const std::string ckpt = (dir.path() / "up.pt").string(), npz = reference("guided_superres.base.npz");
  auto r = run_diffuse("import " + reference("guided_superres.pt") + " --from guided-diffusion --flags '" +
                       first_line(reference("guided_superres.flags")) + "' --out " + ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const TorchSaveFile io = load_torch_save(reference("guided_superres.io.pt"));
  const LowResImages base = load_low_res_images(npz, 3, 8);
  EXPECT_LT(relative_error(base.images, get(io, "low_res")), 1e-7);
  EXPECT_EQ(base.labels, (std::vector<int64_t>{1, 998}));
  EXPECT_THROW(load_low_res_images(npz, 3, 4), UsageError);  // the images are 8x8

  const auto sample = [&](const std::string& name, const std::string& extra) {
    const auto out = (dir.path() / name).string();
    const auto res =
        run_diffuse("sample --checkpoint " + ckpt + " --steps 2 --seed 3 --save-tensor --out " + out + " " + extra);
    EXPECT_EQ(res.exit_code, 0) << res.err;
    torch::Tensor t;
    if (res.exit_code == 0) torch::load(t, out + "/samples.pt");
    return t;
  };
  // --num defaults to the images' count and the labels come from arr_1.
  const auto from_npz = sample("npz", "--low-res " + npz);
  ASSERT_EQ(from_npz.size(0), 2);
  EXPECT_EQ(read_png_text((dir.path() / "npz" / "000001.png").string()).at("label"), "998");
  // The same images as a folder of PNGs (as a base model's `diffuse sample` writes them), with
  // the labels given: the same samples, bit for bit.
  const auto u8 = ((base.images + 1) * 127.5).round().to(torch::kUInt8);
  std::filesystem::create_directories(dir.path() / "low");
  std::filesystem::create_directories(dir.path() / "swapped");
  for (int i = 0; i < 2; ++i) {
    save_png((dir.path() / "low" / fmt::format("{:06d}.png", i)).string(), u8[i]);
    save_png((dir.path() / "swapped" / fmt::format("{:06d}.png", 1 - i)).string(), u8[i]);
  }
  save_grid((dir.path() / "low" / "grid.png").string(), base.images);  // left out, as diffuse sample's own
  const auto from_folder = sample("folder", "--low-res " + (dir.path() / "low").string() + " --label 1 998");
  ASSERT_TRUE(from_folder.defined());
  EXPECT_TRUE(torch::equal(from_folder, from_npz));
  // Each sample is conditioned on its own image: swapping the images changes sample 0.
  const auto swapped = sample("swapped_out", "--low-res " + (dir.path() / "swapped").string() + " --label 1 998");
  ASSERT_TRUE(swapped.defined());
  EXPECT_GT((swapped[0] - from_npz[0]).abs().max().item<double>(), 1e-3);

  r = run_diffuse("sample --checkpoint " + ckpt + " --steps 2 --out " + (dir.path() / "none").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "--low-res");
  r = run_diffuse("sample --checkpoint " + ckpt + " --steps 2 --low-res " + npz + " --out " +
                  (dir.path() / "x").string() + " --set model.low_res_size=4");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_HAS(r.err, "arr_0");
}
