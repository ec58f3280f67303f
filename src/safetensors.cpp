#include "diffuse/safetensors.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "json_text.h"

namespace diffuse {

namespace {

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  size_t bytes;
};
constexpr DtypeInfo kDtypes[] = {{"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4},
                                 {"F16", torch::kFloat16, 2}, {"BF16", torch::kBFloat16, 2},
                                 {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
                                 {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},
                                 {"U8", torch::kUInt8, 1},    {"BOOL", torch::kBool, 1}};

const DtypeInfo* dtype_by_name(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}
const DtypeInfo* dtype_by_type(torch::ScalarType t) {
  for (const auto& d : kDtypes)
    if (t == d.type) return &d;
  return nullptr;
}

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference reader's limit
constexpr const char* kMetadataKey = "__metadata__";

uint64_t read_le64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// One header entry, checked: the element count cannot overflow and the offsets lie in the buffer.
struct Entry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

Entry parse_entry(const std::string& key, const nlohmann::json& v, uint64_t buffer_bytes, const std::string& file) {
  auto bad = [&](const std::string& what) {
    return UsageError(fmt::format("safetensors file '{}': tensor '{}': {}", file, key, what));
  };
  if (!v.is_object()) throw bad("its header entry is not an object");
  Entry e;
  e.name = key;
  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) throw bad("no dtype string");
  e.dtype = dtype_by_name(dt->get<std::string>());
  if (!e.dtype)
    throw bad(fmt::format("dtype '{}' is not one of {}", dt->get<std::string>(), join(safetensors_dtype_names())));
  const auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array() || sh->size() > 16) throw bad("no shape of at most 16 dimensions");
  uint64_t numel = 1;
  const uint64_t max_numel = (uint64_t{1} << 62) / e.dtype->bytes;
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
      throw bad("a shape entry that is not a non-negative integer");
    const uint64_t n = d.get<uint64_t>();
    if (n > max_numel || (n > 0 && numel > max_numel / n)) throw bad("a shape whose element count overflows");
    numel *= n;
    e.shape.push_back(static_cast<int64_t>(n));
  }
  const auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned())
    throw bad("data_offsets is not a pair of non-negative integers");
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  if (e.begin > e.end || e.end > buffer_bytes)
    throw bad(fmt::format("data_offsets [{}, {}] lie outside the {}-byte data buffer", e.begin, e.end, buffer_bytes));
  if (e.end - e.begin != numel * e.dtype->bytes)
    throw bad(fmt::format("data_offsets span {} bytes, but shape [{}] of {} needs {}", e.end - e.begin,
                          fmt::join(e.shape, ", "), e.dtype->name, numel * e.dtype->bytes));
  return e;
}

}  // namespace

const torch::Tensor* SafeTensors::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

std::vector<std::string> safetensors_dtype_names() {
  std::vector<std::string> v;
  for (const auto& d : kDtypes) v.emplace_back(d.name);
  return v;
}

std::string encode_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::vector<torch::Tensor> data;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == kMetadataKey || !names.insert(name).second)
      throw std::invalid_argument("safetensors: tensor name '" + name + "' is repeated or reserved");
    const auto* d = dtype_by_type(t.scalar_type());
    if (!d) throw std::invalid_argument("safetensors: tensor '" + name + "' has a dtype the format lacks");
    auto c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t n = static_cast<uint64_t>(c.numel()) * d->bytes;
    header[name] = {{"dtype", d->name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(std::move(c));
  }
  std::string json = json_line(header);
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + json.size() + offset);
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  out += json;
  for (const auto& c : data) out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, encode_safetensors(tensors, metadata));
}

SafeTensors decode_safetensors(const std::string& bytes, const std::string& file) {
  auto bad = [&](const std::string& what) { return UsageError(fmt::format("safetensors file '{}': {}", file, what)); };
  if (bytes.size() < 8) throw bad(fmt::format("{} bytes is too short for the 8-byte header length", bytes.size()));
  const uint64_t n = read_le64(bytes.data());
  if (n > kMaxHeaderBytes || n > bytes.size() - 8)
    throw bad(
        fmt::format("header length {} exceeds the file ({} bytes after the length) or 100 MB (not a "
                    "safetensors file?)",
                    n, bytes.size() - 8));
  const uint64_t buffer_bytes = bytes.size() - 8 - n;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("the header is not JSON: ") + e.what());
  }
  if (!header.is_object()) throw bad("the header is not a JSON object");
  SafeTensors out;
  std::vector<Entry> entries;
  for (const auto& [key, v] : header.items()) {
    if (key == kMetadataKey) {
      if (!v.is_object()) throw bad("__metadata__ is not an object");
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) throw bad("__metadata__ entry '" + mk + "' is not a string");
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(key, v, buffer_bytes, file));
  }
  // The tensors tile the buffer: no overlap, no unused bytes (as the reference reader requires).
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t at = 0;
  for (const auto& e : entries) {
    if (e.begin != at)
      throw bad(
          fmt::format("tensor '{}' starts at byte {} of the data, where {} was expected (overlapping or "
                      "missing data)",
                      e.name, e.begin, at));
    at = e.end;
  }
  if (at != buffer_bytes) throw bad(fmt::format("{} bytes of the data buffer belong to no tensor", buffer_bytes - at));
  const char* data = bytes.data() + 8 + n;
  for (const auto& e : entries) {
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    if (e.dtype->type == torch::kBool)
      for (uint64_t i = e.begin; i < e.end; ++i)
        if (static_cast<unsigned char>(data[i]) > 1)
          throw bad(fmt::format("tensor '{}': a BOOL byte is {}, not 0 or 1", e.name,
                                static_cast<int>(static_cast<unsigned char>(data[i]))));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

SafeTensors load_safetensors(const std::string& path) { return decode_safetensors(read_file_bytes(path), path); }

}  // namespace diffuse
