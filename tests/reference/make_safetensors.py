#!/usr/bin/python3
"""A safetensors file written by the reference implementation (Hugging Face's safetensors, as
Debian trixie's python3-safetensors ships it), for tests/test_safetensors.cpp to read. Every
value is a formula the C++ test recomputes:
  f64  [2, 3]    arange(6) / 8 - 0.25          f32 [4]      arange(4) * 1.5 - 2
  f16  [2, 2]    arange(4) / 4                 bf16 [3]     [1, -2, 0.5]
  i64  [3]       [-5, 0, 2**40]                i32 [2, 1]   [7, -7]
  i16  [2]       [-300, 300]                   i8  [3]      [-128, 0, 127]
  u8   [4]       [0, 1, 128, 255]              bool [3]     [True, False, True]
  scalar []      2.5 (F32)                     empty [0, 4] (F32)
with metadata {"source": "python safetensors", "n": "12"}.

  /usr/bin/python3 tests/reference/make_safetensors.py    (where python3-safetensors is installed,
  e.g. inside the trixie root of scripts/test-libtorch2.sh)
"""
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
tensors = {
    "f64": torch.arange(6, dtype=torch.float64).reshape(2, 3) / 8 - 0.25,
    "f32": torch.arange(4, dtype=torch.float32) * 1.5 - 2,
    "f16": (torch.arange(4, dtype=torch.float32) / 4).to(torch.float16).reshape(2, 2),
    "bf16": torch.tensor([1, -2, 0.5], dtype=torch.bfloat16),
    "i64": torch.tensor([-5, 0, 2**40], dtype=torch.int64),
    "i32": torch.tensor([[7], [-7]], dtype=torch.int32),
    "i16": torch.tensor([-300, 300], dtype=torch.int16),
    "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
    "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5, dtype=torch.float32),
    "empty": torch.zeros(0, 4, dtype=torch.float32),
}
path = os.path.join(HERE, "safetensors", "python.safetensors")
save_file(tensors, path, metadata={"source": "python safetensors", "n": "12"})
print(f"wrote {path} ({os.path.getsize(path)} bytes)")
