#include "diffuse/torch_save.h"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <memory>
#include <unordered_map>

#include "diffuse/data/file_bytes.h"
#include "diffuse/error.h"
#include "diffuse/zip_archive.h"

namespace diffuse {

namespace {

// The legacy format's first pickle: LONG1 of torch.serialization's MAGIC_NUMBER.
const std::string kLegacyMagic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14);
constexpr int64_t kLegacyProtocolVersion = 1001;
constexpr int kMaxDepth = 100;                  // nesting of the saved object
constexpr int64_t kMaxNodeVisits = 10'000'000;  // a pickle can share one list many times over

// --- Values of the restricted pickle machine ---------------------------------------------------

enum class Kind { None, Bool, Int, BigInt, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor };

const char* kind_name(Kind k) {
  static const char* names[] = {"None",  "bool", "int",  "int",    "float",   "str",   "bytes",
                                "tuple", "list", "dict", "global", "storage", "tensor"};
  return names[static_cast<int>(k)];
}

struct Value {
  Kind kind = Kind::None;
  int64_t i = 0;
  double f = 0;
  std::string s;              // Str, Bytes, BigInt (its little-endian bytes), Global ("module.name")
  std::vector<Value*> items;  // Tuple, List; Dict: key, value, key, value, ...
  // Storage: what a persistent id names; the data is attached after unpickling.
  torch::ScalarType dtype = torch::kFloat;
  int64_t numel = 0;
  torch::Tensor data;  // Storage: [numel] once read
  // Tensor: a strided view of a storage, checked against it when materialised.
  Value* storage = nullptr;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

// Owns every value of one file, so shared and even cyclic references need no reference counts.
struct Arena {
  std::vector<std::unique_ptr<Value>> values;
  Value* make(Kind k) {
    values.push_back(std::make_unique<Value>());
    values.back()->kind = k;
    return values.back().get();
  }
};

const std::map<std::string, torch::ScalarType>& storage_types() {
  static const std::map<std::string, torch::ScalarType> types = {
      {"torch.FloatStorage", torch::kFloat}, {"torch.DoubleStorage", torch::kDouble},
      {"torch.HalfStorage", torch::kHalf},   {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kLong},   {"torch.IntStorage", torch::kInt},
      {"torch.ShortStorage", torch::kShort}, {"torch.CharStorage", torch::kChar},
      {"torch.ByteStorage", torch::kByte},   {"torch.BoolStorage", torch::kBool}};
  return types;
}

// One pickle, from `pos` to its STOP opcode. Storages named by persistent ids are collected in
// `storages` (shared across the pickles of a legacy file), keyed by their storage key.
class Unpickler {
 public:
  Unpickler(const std::string& b, size_t pos, std::string origin, Arena& arena, std::map<std::string, Value*>& storages)
      : b_(b), pos_(pos), origin_(std::move(origin)), arena_(arena), storages_(storages) {}

  Value* run() {
    for (;;) {
      op_at_ = pos_;
      const auto op = static_cast<uint8_t>(take(1)[0]);
      if (op == '.') break;
      step(op);
    }
    if (stack_.size() != 1 || !marks_.empty())
      fail("STOP with {} values and {} marks on the stack", stack_.size(), marks_.size());
    return stack_.back();
  }
  size_t position() const { return pos_; }

 private:
  template <typename... A>
  [[noreturn]] void fail(const char* f, A&&... a) const {
    throw UsageError(fmt::format("'{}': pickle opcode at byte {}: {}", origin_, op_at_,
                                 fmt::format(fmt::runtime(f), std::forward<A>(a)...)));
  }

  const char* take(size_t n) {
    if (n > b_.size() - pos_) fail("needs {} more bytes, the file ends after {}", n, b_.size() - pos_);
    const char* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint64_t le(size_t n) {
    const char* p = take(n);
    uint64_t v = 0;
    for (size_t k = n; k-- > 0;) v = v << 8 | static_cast<uint8_t>(p[k]);
    return v;
  }
  std::string line() {
    const auto nl = b_.find('\n', pos_);
    if (nl == std::string::npos || nl - pos_ > 256) fail("a GLOBAL name without its newline");
    std::string s = b_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return s;
  }

  Value* make(Kind k) { return arena_.make(k); }
  Value* make_int(int64_t v) {
    auto* x = make(Kind::Int);
    x->i = v;
    return x;
  }
  Value* make_str(Kind k, size_t n) {
    auto* x = make(k);
    x->s.assign(take(n), n);
    return x;
  }
  void push(Value* v) { stack_.push_back(v); }
  Value* pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("pops an empty stack");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top(Kind k) {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) fail("needs a {} on an empty stack", kind_name(k));
    if (stack_.back()->kind != k) fail("needs a {} below, found a {}", kind_name(k), kind_name(stack_.back()->kind));
    return stack_.back();
  }
  std::vector<Value*> pop_to_mark() {
    if (marks_.empty()) fail("needs a MARK");
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value* tuple(std::vector<Value*> items) {
    auto* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }
  void put(uint64_t index) {
    if (stack_.empty()) fail("memoizes an empty stack");
    memo_[index] = stack_.back();
  }
  void get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo entry {} was never stored", index);
    push(it->second);
  }
  void set_items(Value* dict, const std::vector<Value*>& kv) {
    if (kv.size() % 2) fail("SETITEMS with an odd number of values");
    dict->items.insert(dict->items.end(), kv.begin(), kv.end());
  }

  void step(uint8_t op);
  Value* global(const std::string& module, const std::string& name);
  Value* reduce(Value* callable, Value* args);
  Value* persistent(Value* pid);
  int64_t as_int(Value* v, const char* what) {
    if (v->kind != Kind::Int) fail("{} must be an int, found a {}", what, kind_name(v->kind));
    return v->i;
  }
  std::vector<int64_t> int_tuple(Value* v, const char* what) {
    if (v->kind != Kind::Tuple) fail("{} must be a tuple of ints, found a {}", what, kind_name(v->kind));
    if (v->items.size() > 64) fail("{} has {} dimensions", what, v->items.size());
    std::vector<int64_t> out;
    for (auto* x : v->items) out.push_back(as_int(x, what));
    return out;
  }

  const std::string& b_;
  size_t pos_, op_at_ = 0;
  std::string origin_;
  Arena& arena_;
  std::map<std::string, Value*>& storages_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

void Unpickler::step(uint8_t op) {
  switch (op) {
    case 0x80: {  // PROTO
      const int v = static_cast<uint8_t>(take(1)[0]);
      if (v < 2 || v > 5) fail("pickle protocol {} (expected 2 to 5)", v);
      return;
    }
    case 0x95: take(8); return;  // FRAME: a length hint only
    case '(': marks_.push_back(stack_.size()); return;
    case ')': push(tuple({})); return;
    case ']': push(make(Kind::List)); return;
    case '}': push(make(Kind::Dict)); return;
    case 't': push(tuple(pop_to_mark())); return;
    case 0x85:
    case 0x86:
    case 0x87: {  // TUPLE1..3
      std::vector<Value*> items(static_cast<size_t>(op - 0x84));
      for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
      push(tuple(std::move(items)));
      return;
    }
    case 'l': {
      auto* l = make(Kind::List);
      l->items = pop_to_mark();
      push(l);
      return;
    }
    case 'd': {
      auto* d = make(Kind::Dict);
      set_items(d, pop_to_mark());
      push(d);
      return;
    }
    case 'a': {
      Value* v = pop();
      top(Kind::List)->items.push_back(v);
      return;
    }
    case 'e': {
      auto items = pop_to_mark();
      auto& list = top(Kind::List)->items;
      list.insert(list.end(), items.begin(), items.end());
      return;
    }
    case 's': {
      Value* v = pop();
      Value* k = pop();
      set_items(top(Kind::Dict), {k, v});
      return;
    }
    case 'u': {
      auto kv = pop_to_mark();
      set_items(top(Kind::Dict), kv);
      return;
    }
    case 'q': put(le(1)); return;
    case 'r': put(le(4)); return;
    case 0x94: put(memo_.size()); return;  // MEMOIZE
    case 'h': get(le(1)); return;
    case 'j': get(le(4)); return;
    case 'X': push(make_str(Kind::Str, le(4))); return;
    case 0x8c: push(make_str(Kind::Str, le(1))); return;
    case 0x8d: push(make_str(Kind::Str, le(8))); return;
    case 'B': push(make_str(Kind::Bytes, le(4))); return;
    case 'C': push(make_str(Kind::Bytes, le(1))); return;
    case 0x8e: push(make_str(Kind::Bytes, le(8))); return;
    case 'J': push(make_int(static_cast<int32_t>(le(4)))); return;
    case 'K': push(make_int(static_cast<int64_t>(le(1)))); return;
    case 'M': push(make_int(static_cast<int64_t>(le(2)))); return;
    case 0x8a: {  // LONG1: n bytes, little-endian two's complement
      const size_t n = le(1);
      if (n > 8) {
        push(make_str(Kind::BigInt, n));
        return;
      }
      uint64_t v = n ? le(n) : 0;
      if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
      push(make_int(static_cast<int64_t>(v)));
      return;
    }
    case 'G': {  // BINFLOAT: big-endian IEEE double
      const char* p = take(8);
      uint64_t bits = 0;
      for (int k = 0; k < 8; ++k) bits = bits << 8 | static_cast<uint8_t>(p[k]);
      auto* x = make(Kind::Float);
      std::memcpy(&x->f, &bits, sizeof bits);
      push(x);
      return;
    }
    case 'N': push(make(Kind::None)); return;
    case 0x88:
    case 0x89: {
      auto* x = make(Kind::Bool);
      x->i = op == 0x88;
      push(x);
      return;
    }
    case 'c': {
      const std::string module = line();
      push(global(module, line()));
      return;
    }
    case 0x93: {  // STACK_GLOBAL
      Value* name = pop();
      Value* module = pop();
      if (name->kind != Kind::Str || module->kind != Kind::Str) fail("STACK_GLOBAL needs two strings");
      push(global(module->s, name->s));
      return;
    }
    case 'R': {
      Value* args = pop();
      push(reduce(pop(), args));
      return;
    }
    case 'Q': push(persistent(pop())); return;
    case 'b': {  // BUILD: the state of an OrderedDict (its _metadata) or a tensor is not needed
      pop();
      if (stack_.empty() || (stack_.back()->kind != Kind::Dict && stack_.back()->kind != Kind::Tensor))
        fail("BUILD on a {}: only dicts and tensors are read",
             stack_.empty() ? "nothing" : kind_name(stack_.back()->kind));
      return;
    }
    case '0': pop(); return;
    case '1': pop_to_mark(); return;
    case '2':
      if (stack_.empty()) fail("DUP on an empty stack");
      push(stack_.back());
      return;
    default:
      fail(
          "opcode 0x{:02x} is not read here (diffuse reads state_dicts: dicts, lists, tuples, numbers, strings and "
          "tensors)",
          op);
  }
}

Value* Unpickler::global(const std::string& module, const std::string& name) {
  const std::string full = module + "." + name;
  static const char* allowed[] = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                  "torch._utils._rebuild_parameter", "torch.jit._pickle.restore_type_tag"};
  bool ok = storage_types().count(full) > 0;
  for (const char* a : allowed) ok = ok || full == a;
  if (!ok)
    fail(
        "refers to '{}', which is not read: only tensors, OrderedDicts, dicts, lists and numbers are (a torch.save "
        "file can name any Python code; diffuse never runs it)",
        full);
  auto* g = make(Kind::Global);
  g->s = full;
  return g;
}

Value* Unpickler::reduce(Value* callable, Value* args) {
  if (callable->kind != Kind::Global || args->kind != Kind::Tuple) fail("REDUCE needs a global and a tuple");
  const auto& a = args->items;
  if (callable->s == "collections.OrderedDict") {
    if (!a.empty()) fail("OrderedDict with arguments");
    return make(Kind::Dict);
  }
  if (callable->s == "torch.jit._pickle.restore_type_tag") {  // LibTorch's writer tags typed dicts and lists
    if (a.size() != 2) fail("restore_type_tag needs (value, type)");
    return a[0];
  }
  if (callable->s == "torch._utils._rebuild_parameter") {
    if (a.empty() || a[0]->kind != Kind::Tensor) fail("_rebuild_parameter without a tensor");
    return a[0];
  }
  if (callable->s == "torch._utils._rebuild_tensor_v2") {
    if (a.size() < 4 || a[0]->kind != Kind::Storage)
      fail("_rebuild_tensor_v2 needs (storage, offset, size, stride, ...)");
    auto* t = make(Kind::Tensor);
    t->storage = a[0];
    t->offset = as_int(a[1], "storage offset");
    t->size = int_tuple(a[2], "tensor size");
    t->stride = int_tuple(a[3], "tensor stride");
    if (t->size.size() != t->stride.size()) fail("tensor size and stride have different lengths");
    return t;
  }
  fail("'{}' cannot be called", callable->s);
}

Value* Unpickler::persistent(Value* pid) {
  const auto& p = pid->items;
  if (pid->kind != Kind::Tuple || p.size() < 5 || p.size() > 6 || p[0]->kind != Kind::Str || p[0]->s != "storage")
    fail("a persistent id that is not ('storage', type, key, location, size)");
  if (p[1]->kind != Kind::Global || !storage_types().count(p[1]->s)) fail("a storage of unknown type");
  if (p[2]->kind != Kind::Str || p[2]->s.empty() || p[2]->s.size() > 64)
    fail("a storage key that is not a short string");
  if (p.size() == 6 && p[5]->kind != Kind::None) fail("a storage view (files of torch < 0.4) is not supported");
  const int64_t numel = as_int(p[4], "storage size");
  if (numel < 0) fail("storage size {} < 0", numel);
  const auto dtype = storage_types().at(p[1]->s);
  auto [it, fresh] = storages_.try_emplace(p[2]->s, nullptr);
  if (fresh) {
    it->second = make(Kind::Storage);
    it->second->s = p[2]->s;
    it->second->dtype = dtype;
    it->second->numel = numel;
  } else if (it->second->dtype != dtype || it->second->numel != numel) {
    fail("storage '{}' is named twice with different types or sizes", p[2]->s);
  }
  return it->second;
}

// --- From values to named tensors ---------------------------------------------------------------

// Storage bytes -> a [numel] tensor of the storage's dtype; `bytes` must hold exactly that much.
void attach(Value* storage, const char* data, size_t size, const std::string& what) {
  const auto item = static_cast<uint64_t>(c10::elementSize(storage->dtype));
  const auto numel = static_cast<uint64_t>(storage->numel);
  if (numel > size / item || numel * item != size)
    throw UsageError(fmt::format("{}: storage '{}' has {} bytes, not the {} elements of {} bytes its tensors say", what,
                                 storage->s, size, numel, item));
  storage->data = torch::empty({storage->numel}, torch::TensorOptions().dtype(storage->dtype));
  if (size) std::memcpy(storage->data.data_ptr(), data, size);
}

// The tensor's elements, copied out of its storage. `budget` is the bytes all tensors may still
// take: a stride of 0 lets a few stored bytes stand for any number of elements.
torch::Tensor materialise(const Value* t, const std::string& name, const std::string& origin, uint64_t& budget) {
  const Value* s = t->storage;
  if (!s->data.defined())
    throw UsageError(fmt::format("'{}': tensor '{}': its storage '{}' has no data", origin, name, s->s));
  auto bad = [&](const std::string& why) {
    return UsageError(fmt::format("'{}': tensor '{}' (size [{}], stride [{}], offset {}) {}", origin, name,
                                  fmt::join(t->size, ", "), fmt::join(t->stride, ", "), t->offset, why));
  };
  if (t->offset < 0) throw bad("has a negative offset");
  // The last element's index, computed without overflow, must lie inside the storage.
  bool empty = false;
  for (auto d : t->size) {
    if (d < 0) throw bad("has a negative size");
    empty = empty || d == 0;
  }
  if (!empty) {
    int64_t last = t->offset;
    for (size_t k = 0; k < t->size.size(); ++k) {
      int64_t span;
      if (t->stride[k] < 0) throw bad("has a negative stride");
      if (__builtin_mul_overflow(t->size[k] - 1, t->stride[k], &span) || __builtin_add_overflow(last, span, &last))
        throw bad("indexes past any storage");
    }
    if (last >= s->numel) throw bad(fmt::format("reads past its storage '{}' of {} elements", s->s, s->numel));
  } else if (t->offset > s->numel) {
    throw bad(fmt::format("starts past its storage '{}' of {} elements", s->s, s->numel));
  }
  uint64_t bytes = c10::elementSize(s->dtype);
  for (auto d : t->size)
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) bytes = UINT64_MAX;
  if (bytes > budget) throw bad("expands to more bytes than the file could hold (strides of 0?)");
  budget -= bytes;
  return s->data.as_strided(t->size, t->stride, t->offset).clone(at::MemoryFormat::Contiguous);
}

struct Flattener {
  const std::string& origin;
  std::vector<std::pair<std::string, Value*>> found;
  int64_t visits = 0;
  void walk(Value* v, const std::string& path, int depth) {
    if (++visits > kMaxNodeVisits || depth > kMaxDepth)
      throw UsageError(fmt::format("'{}': the saved object nests or repeats too deeply (at '{}')", origin, path));
    auto join = [&](const std::string& k) { return path.empty() ? k : path + "." + k; };
    switch (v->kind) {
      case Kind::Tensor: found.emplace_back(path, v); return;
      case Kind::Dict:
        for (size_t k = 0; k + 1 < v->items.size(); k += 2) {
          const Value* key = v->items[k];
          std::string name;
          if (key->kind == Kind::Str) name = key->s;
          else if (key->kind == Kind::Int) name = std::to_string(key->i);
          else
            throw UsageError(
                fmt::format("'{}': a dict key at '{}' is a {}, expected a string", origin, path, kind_name(key->kind)));
          walk(v->items[k + 1], join(name), depth + 1);
        }
        return;
      case Kind::List:
      case Kind::Tuple:
        for (size_t k = 0; k < v->items.size(); ++k) walk(v->items[k], join(std::to_string(k)), depth + 1);
        return;
      default: return;  // numbers, strings, None
    }
  }
};

TorchSaveFile collect(Value* root, const std::string& origin, std::string format, size_t file_size) {
  Flattener f{origin, {}, 0};
  f.walk(root, "", 0);
  TorchSaveFile out;
  out.format = std::move(format);
  std::map<std::string, int> seen;
  uint64_t budget = 2 * static_cast<uint64_t>(file_size) + (uint64_t{1} << 20);
  for (auto& [name, v] : f.found) {
    if (seen[name]++) throw UsageError(fmt::format("'{}': two tensors are named '{}'", origin, name));
    out.tensors.emplace_back(name, materialise(v, name, origin, budget));
  }
  return out;
}

// --- The two container formats -------------------------------------------------------------------

std::string zip_prefix(const ZipArchive& zip, const std::string& name) {
  std::string prefix;
  int pickles = 0;
  for (const auto& e : zip.entries()) {
    const auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0)
      prefix = e.name.substr(0, slash + 1), ++pickles;
  }
  if (pickles != 1)
    throw UsageError(
        fmt::format("'{}' is a zip archive but not a torch.save file ({} '<name>/data.pkl' entries, "
                    "expected one)",
                    name, pickles));
  if (zip.find(prefix + "constants.pkl") || zip.find(prefix + "code/"))
    throw UsageError(
        fmt::format("'{}' is a TorchScript module (torch.jit.save), not a torch.save file of tensors", name));
  return prefix;
}

TorchSaveFile decode_zip(const std::string& bytes, const std::string& name) {
  const ZipArchive zip(bytes, name);
  const std::string prefix = zip_prefix(zip, name);
  if (const auto* order = zip.find(prefix + "byteorder"); order && zip.read(*order) != "little")
    throw UsageError(fmt::format("'{}' was written on a big-endian machine, which is not supported", name));
  const std::string pickle = zip.read(*zip.find(prefix + "data.pkl"));
  Arena arena;
  std::map<std::string, Value*> storages;
  Unpickler u(pickle, 0, name + ": " + prefix + "data.pkl", arena, storages);
  Value* root = u.run();
  for (auto& [key, s] : storages) {
    const auto* e = zip.find(prefix + "data/" + key);
    if (!e) throw UsageError(fmt::format("'{}': storage '{}' has no entry '{}data/{}'", name, key, prefix, key));
    const std::string data = zip.read(*e);
    attach(s, data.data(), data.size(), fmt::format("'{}'", name));
  }
  return collect(root, name, "zip", bytes.size());
}

TorchSaveFile decode_legacy(const std::string& bytes, const std::string& name) {
  Arena arena;
  std::map<std::string, Value*> storages;
  size_t pos = 0;
  auto next = [&](const char* what) {
    Unpickler u(bytes, pos, fmt::format("{} ({} pickle)", name, what), arena, storages);
    Value* v = u.run();
    pos = u.position();
    return v;
  };
  const Value* magic = next("magic number");
  if (magic->kind != Kind::BigInt || magic->s != kLegacyMagic.substr(4))
    throw UsageError(fmt::format("'{}' does not start with torch.save's magic number", name));
  const Value* protocol = next("protocol version");
  if (protocol->kind != Kind::Int || protocol->i != kLegacyProtocolVersion)
    throw UsageError(fmt::format("'{}': torch.save protocol version {} (expected {})", name,
                                 protocol->kind == Kind::Int ? std::to_string(protocol->i) : "missing",
                                 kLegacyProtocolVersion));
  const Value* info = next("system info");
  for (size_t k = 0; info->kind == Kind::Dict && k + 1 < info->items.size(); k += 2)
    if (info->items[k]->kind == Kind::Str && info->items[k]->s == "little_endian" &&
        !(info->items[k + 1]->kind == Kind::Bool && info->items[k + 1]->i == 1))
      throw UsageError(fmt::format("'{}' was written on a big-endian machine, which is not supported", name));
  Value* root = next("object");
  const Value* keys = next("storage keys");
  if (keys->kind != Kind::List) throw UsageError(fmt::format("'{}': the storage key list is not a list", name));
  for (const Value* k : keys->items) {
    const auto it = k->kind == Kind::Str ? storages.find(k->s) : storages.end();
    if (it == storages.end())
      throw UsageError(fmt::format("'{}': the storage key list names a storage no tensor uses", name));
    if (it->second->data.defined()) throw UsageError(fmt::format("'{}': storage '{}' is listed twice", name, k->s));
    if (bytes.size() - pos < 8) throw UsageError(fmt::format("'{}' ends before the data of storage '{}'", name, k->s));
    uint64_t count = 0;
    for (int b = 7; b >= 0; --b) count = count << 8 | static_cast<uint8_t>(bytes[pos + static_cast<size_t>(b)]);
    pos += 8;
    if (count != static_cast<uint64_t>(it->second->numel))
      throw UsageError(fmt::format("'{}': storage '{}' holds {} elements, its tensors say {}", name, k->s, count,
                                   it->second->numel));
    const auto item = static_cast<uint64_t>(c10::elementSize(it->second->dtype));
    if (count > (bytes.size() - pos) / item)
      throw UsageError(fmt::format("'{}' ends inside the data of storage '{}'", name, k->s));
    attach(it->second, bytes.data() + pos, static_cast<size_t>(count * item), fmt::format("'{}'", name));
    pos += static_cast<size_t>(count * item);
  }
  if (pos != bytes.size())
    throw UsageError(fmt::format("'{}' has {} bytes after its last storage", name, bytes.size() - pos));
  return collect(root, name, "legacy", bytes.size());
}

}  // namespace

const torch::Tensor* TorchSaveFile::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

bool looks_like_torch_save(const std::string& bytes) {
  if (bytes.compare(0, kLegacyMagic.size(), kLegacyMagic) == 0) return true;
  if (!is_zip(bytes)) return false;
  try {
    const ZipArchive zip(bytes, "");
    zip_prefix(zip, "");
    return true;
  } catch (const UsageError&) {
    return false;
  }
}

TorchSaveFile decode_torch_save(const std::string& bytes, const std::string& name) {
  if (is_zip(bytes)) return decode_zip(bytes, name);
  if (bytes.compare(0, kLegacyMagic.size(), kLegacyMagic) == 0) return decode_legacy(bytes, name);
  throw UsageError(
      fmt::format("'{}' is not a torch.save file (neither a zip archive nor the legacy format's magic "
                  "number)",
                  name));
}

TorchSaveFile load_torch_save(const std::string& path) { return decode_torch_save(read_file_bytes(path), path); }

}  // namespace diffuse
