// libFuzzer driver: DIFFUSE_FUZZ_TARGET names the target (targets.h). With
// DIFFUSE_FUZZ_WRITE_SEEDS=DIR it writes that target's seed corpus into DIR and exits.
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "fuzz/targets.h"

namespace {
const diffuse::fuzz::Target* target = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("DIFFUSE_FUZZ_TARGET");
  target = name ? diffuse::fuzz::find_target(name) : nullptr;
  if (!target) {
    std::fprintf(stderr, "DIFFUSE_FUZZ_TARGET must name one of:");
    for (const auto& t : diffuse::fuzz::targets()) std::fprintf(stderr, " %s", t.name);
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  torch::set_num_threads(1);
  if (const char* dir = std::getenv("DIFFUSE_FUZZ_WRITE_SEEDS")) {
    std::filesystem::create_directories(dir);
    int i = 0;
    for (const auto& s : target->seeds()) {
      std::ofstream(std::string(dir) + "/seed-" + std::to_string(i++), std::ios::binary) << s;
    }
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  target->run(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
