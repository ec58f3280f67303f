// Reading the tensors of files written by Python's torch.save (state_dicts and dicts of them, as
// OpenAI's improved-/guided-diffusion checkpoints and pytorch-fid's Inception weights are),
// without Python and without LibTorch's unpickler, which crashes on crafted files. Both formats:
//  - zip (torch >= 1.6): "<archive>/data.pkl" plus one stored entry per storage,
//    "<archive>/data/<key>";
//  - legacy (torch < 1.6, or _use_new_zipfile_serialization=False): five pickles in a row
//    (magic number, protocol version, system info, the object, its storage keys), then each
//    storage as an 8-byte element count and its bytes.
// The pickle is read by a restricted machine that knows the opcodes of protocols 2-4 and calls
// no code: the only callables honoured are collections.OrderedDict,
// torch._utils._rebuild_tensor_v2 and torch._utils._rebuild_parameter, as torch.load's
// weights_only mode allows, and torch.jit._pickle.restore_type_tag, an identity that LibTorch's
// torch::pickle_save writes around typed dicts. Anything else (a pickled class, a function) is
// refused naming it.
// Every size, offset and stride is checked against the storage it indexes.
#pragma once

#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace diffuse {

struct TorchSaveFile {
  // Every tensor reachable from the saved object through dicts, lists and tuples, named by its
  // path of keys joined with '.' (a state_dict's own names; {"model": sd} gives "model.<name>";
  // list and tuple items are numbered), in the order the pickle holds them. Contiguous CPU
  // copies in the stored dtype. Numbers, strings and None in the object are skipped.
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::string format;                                        // "zip" or "legacy"
  const torch::Tensor* find(const std::string& name) const;  // nullptr when absent
};

// True when `bytes` start like a torch.save file of either format (a zip archive holding a
// "data.pkl" entry is decided by decode_torch_save, since TorchScript archives hold one too).
bool looks_like_torch_save(const std::string& bytes);

// Parses the bytes of a torch.save file; `name` (the file) appears in every error (UsageError).
// A TorchScript archive is refused with a message saying so.
TorchSaveFile decode_torch_save(const std::string& bytes, const std::string& name);
TorchSaveFile load_torch_save(const std::string& path);

}  // namespace diffuse
