// Helpers of the tests that read the fixtures tests/reference/make_openai_*.py wrote.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <stdexcept>
#include <string>

#include "diffuse/torch_save.h"

namespace diffuse::test {

// tests/reference/<dir>/<name>
inline std::string openai_fixture(const std::string& dir, const std::string& name) {
  return std::string(DIFFUSE_SOURCE_DIR) + "/tests/reference/" + dir + "/" + name;
}

inline std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

inline torch::Tensor get(const TorchSaveFile& f, const std::string& name) {
  const torch::Tensor* t = f.find(name);
  if (!t) throw std::runtime_error("fixture without '" + name + "'");
  return *t;
}

// max |a - b| / max |b|: the error relative to the tensor's scale.
inline double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const auto bd = b.to(torch::kDouble);
  return (a.to(torch::kDouble) - bd).abs().max().item<double>() / std::max(bd.abs().max().item<double>(), 1e-30);
}

inline bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace diffuse::test

#define EXPECT_HAS(text, part)                                                                     \
  do {                                                                                             \
    const std::string text_ = (text);                                                              \
    EXPECT_TRUE(diffuse::test::has(text_, part)) << "expected \"" << (part) << "\" in: " << text_; \
  } while (0)
