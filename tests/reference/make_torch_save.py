#!/usr/bin/python3
"""Files written by Python's torch.save, for tests/test_torch_save.cpp to read with our own reader.
Every tensor is a formula the C++ test recomputes (see `expected` there):

  model.*          a Linear(3, 2) + BatchNorm1d(2) state_dict (an OrderedDict carrying _metadata,
                   which torch.save writes with a BUILD opcode): weight arange(6)/4 - 0.5, bias
                   [0.25, -0.75], bn weight [1.5, 2], bias [-1, 1], running_mean [0.125, -0.125],
                   running_var [2, 3], num_batches_tracked 5
  half             float16 arange(4) / 8            bf16     bfloat16 [1, -2, 0.5]
  view_t           base.t(), base = float64 arange(12).reshape(3, 4) / 2  (a transposed view)
  view_slice       base[1:, 1:3]  (offset 5, strides (4, 1): the same storage as view_t)
  ints             int64 [-5, 0, 2**40]             i32 int32 [7, -7]      i16 int16 [-300, 300]
  i8               int8 [-128, 0, 127]              u8 uint8 [0, 1, 128, 255]
  flags            bool [True, False, True]
  scalar           float32 2.5 (0-dim)              empty    float32 zeros(0, 4)
  list.0           ones(2)                          list.1.0 full((1,), 3.0)  (a tuple in a list)
  param            nn.Parameter([0.5, 1.5])         7        [9.0] (an int dict key)
and numbers, strings, None and a bool beside them, which the reader skips.

Also: namespace.pt, a dict holding an argparse.Namespace (a class the reader must refuse), and
torchscript.pt, a torch.jit.save file (refused as not a torch.save file).

  /usr/bin/python3 tests/reference/make_torch_save.py    (Debian 12's python3-torch 1.13 writes
  nested.torch1.{zip,legacy}.pt; run inside the trixie root of scripts/test-libtorch2.sh, its
  python3-torch 2.6 writes nested.torch2.{zip,legacy}.pt)
"""
import argparse
import os

import torch
from torch import nn

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_save")
os.makedirs(HERE, exist_ok=True)
major = torch.__version__.split(".")[0]


def nested():
    net = nn.Sequential()
    net.add_module("lin", nn.Linear(3, 2))
    net.add_module("bn", nn.BatchNorm1d(2))
    with torch.no_grad():
        net.lin.weight.copy_(torch.arange(6.0).reshape(2, 3) / 4 - 0.5)
        net.lin.bias.copy_(torch.tensor([0.25, -0.75]))
        net.bn.weight.copy_(torch.tensor([1.5, 2.0]))
        net.bn.bias.copy_(torch.tensor([-1.0, 1.0]))
        net.bn.running_mean.copy_(torch.tensor([0.125, -0.125]))
        net.bn.running_var.copy_(torch.tensor([2.0, 3.0]))
        net.bn.num_batches_tracked.fill_(5)
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 2
    return {
        "model": net.state_dict(),
        "step": 7, "lr": 1e-4, "name": "run", "none": None, "ok": True,
        "half": torch.arange(4, dtype=torch.float16) / 8,
        "bf16": torch.tensor([1, -2, 0.5], dtype=torch.bfloat16),
        "view_t": base.t(),
        "view_slice": base[1:, 1:3],
        "ints": torch.tensor([-5, 0, 2**40]),
        "i32": torch.tensor([7, -7], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "list": [torch.ones(2), (torch.full((1,), 3.0),)],
        "param": nn.Parameter(torch.tensor([0.5, 1.5])),
        7: torch.tensor([9.0]),
    }


obj = nested()
assert obj["view_slice"].storage_offset() == 5 and not obj["view_t"].is_contiguous()
torch.save(obj, os.path.join(HERE, f"nested.torch{major}.zip.pt"))
torch.save(obj, os.path.join(HERE, f"nested.torch{major}.legacy.pt"), _use_new_zipfile_serialization=False)
if major == "1":
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=1)}, os.path.join(HERE, "namespace.pt"))
    torch.jit.script(nn.Linear(2, 2)).save(os.path.join(HERE, "torchscript.pt"))
for f in sorted(os.listdir(HERE)):
    print(f, os.path.getsize(os.path.join(HERE, f)), "bytes")
