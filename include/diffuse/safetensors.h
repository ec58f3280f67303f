// safetensors, the weight format of the Hugging Face ecosystem: an 8-byte little-endian header
// length N, N bytes of JSON {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [b, e]},
// ..., "__metadata__": {"<key>": "<string>"}}, then the data buffer, each tensor little-endian in
// C order at [b, e) of it. Read with every size and offset checked against the file, so a
// crafted file gets an error naming it (UsageError), never an out-of-bounds read.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace diffuse {

struct SafeTensors {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // in the file's data order
  std::map<std::string, std::string> metadata;                 // "__metadata__"
  const torch::Tensor* find(const std::string& name) const;    // nullptr when absent
};

// The dtypes both ways: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
std::vector<std::string> safetensors_dtype_names();

// Bytes of a safetensors file: tensors in the order given (moved to the CPU, made contiguous),
// the header padded with spaces to a multiple of 8 bytes as the reference writer does.
// std::invalid_argument for a dtype the format lacks or a repeated or reserved name.
std::string encode_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata = {});
// encode_safetensors written atomically.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Parses bytes of a safetensors file; `name` is the file named in errors. The tensors are
// copies (they do not alias `bytes`). Refused: a header longer than the file or than 100 MB,
// JSON that does not parse or is not an object of objects, unknown dtypes, shapes whose element
// count overflows, offsets outside the buffer or not matching the shape, tensors that overlap or
// leave bytes of the buffer unused, and metadata that is not strings.
SafeTensors decode_safetensors(const std::string& bytes, const std::string& name);
SafeTensors load_safetensors(const std::string& path);

}  // namespace diffuse
