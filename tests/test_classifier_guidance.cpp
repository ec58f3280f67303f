// Classifier guidance against guided-diffusion's own code (tests/reference/make_openai_classifier.py
// ran its EncoderUNetModel, classifier_sample.py's cond_fn, p_sample and ddim_sample): the imported
// classifier reproduces upstream's logits and guidance gradient, and one guided ancestral step
// (condition_mean) and one guided DDIM step (condition_score) on an imported model match
// upstream's; the gradient of a classifier with linear logits matches its closed form.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "diffuse/config.h"
#include "diffuse/error.h"
#include "diffuse/factory.h"
#include "diffuse/image_io.h"
#include "diffuse/models/encoder_unet.h"
#include "diffuse/models/network.h"
#include "diffuse/openai_checkpoint.h"
#include "diffuse/samplers/classifier_guidance.h"
#include "diffuse/samplers/ddim.h"
#include "diffuse/samplers/ddpm.h"
#include "diffuse/samplers/denoiser.h"
#include "diffuse/schedule.h"
#include "diffuse/torch_save.h"
#include "openai_fixtures.h"
#include "test_util.h"

using namespace diffuse;
using diffuse::test::first_line;
using diffuse::test::get;
using diffuse::test::relative_error;
using diffuse::test::run_diffuse;
using diffuse::test::TempDir;

namespace {

std::string classifier_file(const std::string& name) {
  return diffuse::test::openai_fixture("openai_classifier", name);
}
std::string unet_file(const std::string& name) { return diffuse::test::openai_fixture("openai_unet", name); }

// classes: the fixture's class count (the spatial-pool fixtures have 10, not the import's 1000).
std::shared_ptr<Network> import_classifier(const std::string& name, int64_t classes = 1000) {
  Config cfg = openai_classifier_config({first_line(classifier_file(name + ".flags"))});
  cfg.model.num_classes = classes;
  auto net = make_model(cfg, DataShape{{3, cfg.data.image_size, cfg.data.image_size}, 0});
  const std::string file = classifier_file(name + ".pt");
  load_openai_weights(*net, load_torch_save(file), file);
  net->eval();
  for (auto& p : net->parameters()) p.requires_grad_(false);
  return net;
}

struct Model {
  Config cfg;
  std::shared_ptr<Network> net;
};

Model import_unet(const std::string& name) {
  Model m;
  m.cfg = openai_config({first_line(unet_file(name + ".flags"))}, OpenAiFamily::Guided);
  m.net = make_model(m.cfg, DataShape{{3, m.cfg.data.image_size, m.cfg.data.image_size}, m.cfg.model.num_classes});
  const std::string file = unet_file(name + ".pt");
  load_openai_weights(*m.net, load_torch_save(file), file);
  m.net->eval();
  return m;
}

LogitsFn logits_of(const std::shared_ptr<Network>& net) {
  return [net](const torch::Tensor& x, const torch::Tensor& t) { return net->forward(x, t); };
}

// classifier_sample.py's model_fn: labels only for a class-conditional model.
ModelFn model_fn(const Model& m, const torch::Tensor& y) {
  const bool cond = m.net->class_conditional();
  return [net = m.net, y, cond](const torch::Tensor& x, const torch::Tensor& t) {
    return net->forward(x, t, cond ? y : torch::Tensor());
  };
}

// `diffuse import` of a fixture with the flags it was made with (plus `more_flags`): a classifier
// of openai_classifier/, or a model of openai_unet/.
diffuse::test::CommandResult import_classifier_cli(const std::string& name, const std::string& out,
                                                   const std::string& more_flags = "") {
  return run_diffuse("import " + classifier_file(name + ".pt") + " --from guided-diffusion --classifier --flags '" +
                     first_line(classifier_file(name + ".flags")) + more_flags + "' --out " + out);
}
diffuse::test::CommandResult import_unet_cli(const std::string& name, const std::string& out) {
  return run_diffuse("import " + unet_file(name + ".pt") + " --from guided-diffusion --flags '" +
                     first_line(unet_file(name + ".flags")) + "' --out " + out);
}

}  // namespace

TEST(ClassifierGuidance, TheImportedClassifierReproducesUpstreamLogitsAndGradient) {
  const std::pair<const char*, int64_t> fixtures[] = {{"classifier_attention", 1000},
                                                      {"classifier_adaptive", 1000},
                                                      {"classifier_spatial", 10},
                                                      {"classifier_spatial_v2", 10}};
  for (const auto& [name, classes] : fixtures) {
    SCOPED_TRACE(name);
    const auto net = import_classifier(name, classes);
    const TorchSaveFile io = load_torch_save(classifier_file(std::string(name) + ".io.pt"));
    const auto x = get(io, "x"), t = get(io, "t"), y = get(io, "y");
    {
      torch::NoGradGuard no_grad;
      EXPECT_LT(relative_error(net->forward(x, t), get(io, "logits")), 1e-5);
    }
    const double scale = get(io, "scale").item<double>();
    const auto g = classifier_gradient(logits_of(net), y, scale)(x, t);
    EXPECT_LT(relative_error(g, get(io, "grad")), 1e-5);
  }
}

TEST(ClassifierGuidance, EveryOptionOfTheClassifierFixturesIsInUse) {
  const Config a = openai_classifier_config({first_line(classifier_file("classifier_attention.flags"))});
  EXPECT_EQ(a.model.type, ModelType::Classifier);
  EXPECT_EQ(a.model.pool, ClassifierPool::Attention);
  EXPECT_TRUE(a.model.resblock_updown);
  EXPECT_TRUE(a.model.use_scale_shift_norm);
  EXPECT_EQ(a.model.num_head_channels, 64);
  EXPECT_EQ(a.model.num_classes, 1000);
  EXPECT_EQ(a.model.attention_resolutions, (std::vector<int64_t>{16, 8}));
  const Config b = openai_classifier_config({first_line(classifier_file("classifier_adaptive.flags"))});
  EXPECT_EQ(b.model.pool, ClassifierPool::Adaptive);
  EXPECT_FALSE(b.model.resblock_updown);
  EXPECT_FALSE(b.model.use_scale_shift_norm);
  EXPECT_EQ(b.model.num_res_blocks, 0);
  EXPECT_EQ(openai_classifier_config({first_line(classifier_file("classifier_spatial.flags"))}).model.pool,
            ClassifierPool::Spatial);
  EXPECT_EQ(openai_classifier_config({first_line(classifier_file("classifier_spatial_v2.flags"))}).model.pool,
            ClassifierPool::SpatialV2);
  // create_classifier's levels for the published sizes.
  EXPECT_EQ(openai_classifier_config({"--image_size 64 --classifier_depth 4"}).model.channel_mult,
            (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(openai_classifier_config({"--image_size 256"}).model.channel_mult, (std::vector<double>{1, 1, 2, 2, 4, 4}));
  EXPECT_EQ(openai_classifier_config({"--image_size 512"}).model.channel_mult,
            (std::vector<double>{0.5, 1, 1, 2, 2, 4, 4}));
}

TEST(ClassifierGuidance, GuidedAncestralAndDdimStepsMatchUpstream) {
  struct Case {
    const char* name;
    const char* unet;
    const char* classifier;
    bool ddpm;
    const char* respacing;
  };
  const Case cases[] = {{"guided_ddpm_cond", "guided_cond_newattn", "classifier_attention", true, ""},
                        {"guided_ddpm_cond_t0", "guided_cond_newattn", "classifier_attention", true, ""},
                        {"guided_ddim_uncond", "guided_xstart_heads", "classifier_adaptive", false, "ddim10"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const Model m = import_unet(c.unet);
    const auto classifier = import_classifier(c.classifier);
    const TorchSaveFile io = load_torch_save(classifier_file(std::string(c.name) + ".io.pt"));
    const auto x = get(io, "x"), y = get(io, "y");
    const int64_t i = get(io, "t")[0].item<int64_t>();
    const double scale = get(io, "scale").item<double>();
    const GaussianDiffusion trained = make_diffusion(m.cfg);
    const auto kept = [&] { return space_timesteps(trained.num_timesteps(), c.respacing); };
    const GaussianDiffusion process = *c.respacing ? GaussianDiffusion(trained.schedule().respace(kept()),
                                                                       trained.prediction(), trained.variance_type())
                                                   : trained;
    const Denoiser guided(model_fn(m, y), process, classifier_gradient(logits_of(classifier), y, scale));
    const Denoiser plain(model_fn(m, y), process);
    ReverseOptions clip;
    clip.clip_x0 = true;
    torch::NoGradGuard no_grad;  // as a sampler runs; the guidance turns autograd back on itself
    torch::Tensor step, unguided, x0;
    if (c.ddpm) {
      const auto s = ddpm_step(guided, process, x, i, get(io, "noise"), clip);
      step = s.x_prev;
      x0 = s.x0_pred;
      unguided = ddpm_step(plain, process, x, i, get(io, "noise"), clip).x_prev;
    } else {
      const double abar_prev = i > 0 ? process.schedule().alpha_bar()[static_cast<size_t>(i - 1)] : 1.0;
      step = ddim_step(guided, x, i, abar_prev, /*eta=*/0.0, {}, clip);
      x0 = guided.at_step(x, i, clip).pred.x0;
      unguided = ddim_step(plain, x, i, abar_prev, 0.0, {}, clip);
    }
    EXPECT_LT(relative_error(step, get(io, "sample")), 1e-5);
    // x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies an eps error by sqrt(1 / abar - 1)
    // (about 60 at t = 911 of the linear schedule): the bound scales with it.
    const double abar = process.schedule().alpha_bar()[static_cast<size_t>(i)];
    const double gain = process.prediction() == Prediction::Epsilon ? std::max(1.0, std::sqrt(1 / abar - 1)) : 1.0;
    EXPECT_LT(relative_error(x0, get(io, "pred_xstart")), 1e-5 * gain);
    // The guidance moves the step 50 times that tolerance or more, so the comparison can fail.
    EXPECT_GT(relative_error(unguided, get(io, "sample")), 5e-4);
  }
}

TEST(ClassifierGuidance, TheGradientOfLinearLogitsIsItsClosedForm) {
  // logits_k = <w_k, x>: grad_x log softmax_y = w_y - sum_k p_k w_k.
  torch::manual_seed(3);
  const auto w = torch::randn({5, 12}, torch::kDouble);
  const auto x = torch::randn({4, 3, 2, 2}, torch::kDouble);
  const auto y = torch::tensor({0, 4, 2, 2}, torch::kLong);
  LogitsFn logits = [w](const torch::Tensor& x_t, const torch::Tensor&) {
    return torch::matmul(x_t.flatten(1), w.t());
  };
  torch::Tensor g;
  {
    c10::InferenceMode inference;  // where the samplers call it
    g = classifier_gradient(logits, y, 2.5)(x, torch::zeros({4}));
  }
  const auto p = torch::softmax(torch::matmul(x.flatten(1), w.t()), -1);
  const auto expected = (w.index_select(0, y) - torch::matmul(p, w)).view_as(x) * 2.5;
  EXPECT_LT(relative_error(g, expected), 1e-12);
}

TEST(ClassifierGuidance, TheCliImportsAClassifierAndSamplesWithIt) {
  TempDir dir;
  const auto path = [&](const std::string& n) { return (dir.path() / n).string(); };
  auto r = import_classifier_cli("classifier_attention", path("cls.pt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_HAS(r.out, "attention pooling, 1000 classes");
  r = import_unet_cli("guided_cond_newattn", path("model.pt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string common = " --num 2 --steps 3 --label 7 --seed 1 --save-tensor --no-images --sampler ";
  for (const char* sampler : {"ddpm", "ddim"}) {
    SCOPED_TRACE(sampler);
    r = run_diffuse("sample --checkpoint " + path("model.pt") + common + sampler + " --out " + path("plain"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run_diffuse("sample --checkpoint " + path("model.pt") + common + sampler + " --classifier " + path("cls.pt") +
                    " --classifier-scale 30 --out " + path("guided"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    torch::Tensor a, b;
    torch::load(a, path("plain/samples.pt"));
    torch::load(b, path("guided/samples.pt"));
    EXPECT_GT((a - b).abs().max().item<double>(), 1e-3) << "the classifier changed nothing";
  }

  // Misuse is named.
  r = run_diffuse("sample --checkpoint " + path("cls.pt") + " --num 1 --out " + path("x"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "noisy-image classifier");
  r = run_diffuse("sample --checkpoint " + path("model.pt") + " --num 1 --classifier " + path("model.pt") + " --out " +
                  path("x"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "not a noisy-image classifier");
  r = run_diffuse("sample --checkpoint " + path("model.pt") + " --num 1 --classifier-scale 2 --out " + path("x"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "--classifier-scale needs a classifier");
  // A classifier trained on another schedule reads t as other noise levels.
  r = import_classifier_cli("classifier_attention", path("cls_cosine.pt"), " --noise_schedule cosine");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("sample --checkpoint " + path("model.pt") + " --num 1 --classifier " + path("cls_cosine.pt") +
                  " --out " + path("x"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "cosine schedule");
  r = run_diffuse("import " + classifier_file("classifier_attention.pt") +
                  " --from improved-diffusion --classifier "
                  "--flags '--image_size 16' --out " +
                  path("y.pt"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "guided-diffusion");
  r = run_diffuse("import " + classifier_file("classifier_attention.pt") +
                  " --from guided-diffusion --classifier "
                  "--flags '--image_size 16 --channel_mult 1,1 --classifier_width 64 --classifier_pool max' "
                  "--out " +
                  path("y.pt"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "--classifier_pool max: expected one of attention, adaptive, spatial, spatial_v2");
}

TEST(ClassifierGuidance, AnUnconditionalModelTakesLabelsOnlyWithAClassifier) {
  TempDir dir;
  const auto path = [&](const std::string& n) { return (dir.path() / n).string(); };
  auto r = import_classifier_cli("classifier_adaptive", path("cls.pt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = import_unet_cli("guided_xstart_heads", path("model.pt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("sample --checkpoint " + path("model.pt") + " --num 2 --steps 2 --label 5 --out " + path("a"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "no classifier guides it");
  r = run_diffuse("sample --checkpoint " + path("model.pt") + " --num 2 --steps 2 --label 5 --sampler euler " +
                  "--classifier " + path("cls.pt") + " --out " + path("b"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("sample --checkpoint " + path("model.pt") + " --num 2 --steps 2 --label 1000 --classifier " +
                  path("cls.pt") + " --out " + path("c"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_HAS(r.err, "outside [0, 999]");
}

TEST(ClassifierGuidance, ClassifierConfigsAreValidated) {
  Config c;
  c.model.type = ModelType::Classifier;
  c.model.num_classes = 10;
  c.model.num_head_channels = -1;
  c.data.path = "x";
  try {
    validate(c);
    ADD_FAILURE() << "accepted attention pooling without num_head_channels";
  } catch (const UsageError& e) {
    EXPECT_HAS(e.what(), "model.pool attention needs model.num_head_channels");
  }
  c.model.num_head_channels = 32;
  c.model.num_classes = 0;
  try {
    validate(c);
    ADD_FAILURE() << "accepted a classifier without classes";
  } catch (const UsageError& e) {
    EXPECT_HAS(e.what(), "model.num_classes >= 1");
  }
  c.model.num_classes = 10;
  EXPECT_NO_THROW(validate(c));
  try {
    require_denoiser(c, "run.yaml");
    ADD_FAILURE() << "a classifier passed as a denoiser";
  } catch (const UsageError& e) {
    EXPECT_HAS(e.what(), "run.yaml: model.type classifier");
  }
}

// Training a noisy-image classifier with classifier_train.py's objective: cross-entropy at x_t,
// t uniform. The adaptive head's zero-initialised convolution gives all-zero logits at first,
// so the first step's loss is ln 10 exactly. After training, the least noisy quarter of t is
// classified better than the noisiest, where little of the image is left. The trained
// classifier then guides a model trained on the same schedule.
TEST(ClassifierGuidance, ANoisyClassifierTrainsOnFashionMnistAndGuidesSampling) {
  REQUIRE_FASHION_MNIST();
  TempDir dir;
  const auto path = [&](const std::string& n) { return (dir.path() / n).string(); };
  const std::string tiny = std::string(DIFFUSE_SOURCE_DIR) + "/configs/tiny.yaml";
  auto r = run_diffuse("train --config " + tiny + " --run-dir " + path("cls") +
                       " --set model.type=classifier --set model.num_classes=10 --set model.pool=adaptive"
                       " --set train.steps=120 --set train.batch_size=32 --set train.lr=2e-3 --set train.log_every=1"
                       " --set train.checkpoint_every=120");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ifstream metrics(path("cls") + "/metrics.jsonl");
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(metrics, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 120u);
  EXPECT_NEAR(lines.front()["loss"].get<double>(), std::log(10.0), 1e-5);
  EXPECT_FALSE(lines.front().contains("mse"));
  double low = 0, high = 0, accuracy = 0;
  int n_low = 0, n_high = 0;
  // The last 40 steps: about 320 examples per quarter of t (measured here: 2.12 vs 2.32, and an
  // accuracy of 0.15; the noisiest quarter stays near ln 10 = 2.30, chance is 0.1).
  for (size_t i = 80; i < lines.size(); ++i) {
    const auto& j = lines[i];
    if (!j["loss_q0"].is_null()) low += j["loss_q0"].get<double>(), ++n_low;
    if (!j["loss_q3"].is_null()) high += j["loss_q3"].get<double>(), ++n_high;
    accuracy += j["accuracy"].get<double>() / 40;
  }
  ASSERT_GT(n_low, 20);
  ASSERT_GT(n_high, 20);
  EXPECT_LT(low / n_low, high / n_high - 0.08) << "loss at the least noisy quarter of t vs the noisiest";
  EXPECT_GT(accuracy, 0.12);

  r = run_diffuse("train --config " + tiny + " --run-dir " + path("model") + " --set train.steps=2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_diffuse("sample --checkpoint " + path("model") + " --classifier " + path("cls") +
                  "/checkpoints/latest.pt --label 3 7 --num 2 --steps 3 --out " + path("guided"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_png_text(path("guided") + "/000001.png").at("label"), "7");
}
