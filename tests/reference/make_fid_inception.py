#!/usr/bin/python3
"""pytorch-fid's own InceptionV3 and Frechet distance on fixed inputs, for tests/test_fid_inception.cpp.

pytorch-fid's weight file cannot be downloaded here, so the network gets weights from a formula
that the C++ test computes too: element i of the tensor named N (in the weight file's names) is
u = 2 * (splitmix64(fnv1a64(N) + i) >> 11) / 2^53 - 1, in [-1, 1), and
  *.conv.weight     u * sqrt(6 / fan_in)       *.bn.weight   1 + 0.2 u     *.bn.bias  0.2 u
  *.bn.running_mean 0.1 u                      *.bn.running_var 1 + 0.25 (u + 1)
  fc.*              0.01 u (not used by FID)   num_batches_tracked: left as constructed
computed in float64 and rounded to float32. Written to fid_inception/:
  names.txt       every tensor of the weight file: "<name> <d0>x<d1>..." (the layout our loader expects)
  reference.pt    torch.save({"images": [3, 3, 37, 41] in [0, 1], "features": [3, 2048] that
                  InceptionV3([3]) (resize to 299, scale to [-1, 1]) returns for them,
                  "a": [40, 16], "b": [50, 16] feature sets, "fid": their calculate_frechet_distance
                  (float64, from np.mean / np.cov statistics as calculate_activation_statistics does)})

  git clone https://github.com/mseitzer/pytorch-fid /tmp/pytorch-fid     # at the commit in README.md
  /usr/bin/python3 tests/reference/make_fid_inception.py /tmp/pytorch-fid
(needs python3-torch, python3-torchvision, python3-scipy.)
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(sys.argv[1], "src"))
import pytorch_fid.inception as pi  # noqa: E402
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid_inception")
os.makedirs(HERE, exist_ok=True)
M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for c in s.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return h


def uniform(name, n):
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(fnv1a64(name))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return 2.0 * (z >> np.uint64(11)).astype(np.float64) / 2.0**53 - 1.0


def formula(name, t):
    u = uniform(name, t.numel()).reshape(tuple(t.shape))
    if name.endswith("conv.weight"):
        v = u * math.sqrt(6.0 / (t.shape[1] * t.shape[2] * t.shape[3]))
    elif name.endswith("bn.weight"):
        v = 1 + 0.2 * u
    elif name.endswith("bn.bias"):
        v = 0.2 * u
    elif name.endswith("running_mean"):
        v = 0.1 * u
    elif name.endswith("running_var"):
        v = 1 + 0.25 * (u + 1)
    elif name.startswith("fc."):
        v = 0.01 * u
    else:
        raise ValueError(name)
    return torch.from_numpy(v).to(torch.float32)


# fid_inception_v3() downloads the weights and loads them; here it builds the same network and
# the formula fills it instead.
pi.load_state_dict_from_url = lambda *a, **k: None
real_load = torch.nn.Module.load_state_dict
torch.nn.Module.load_state_dict = lambda self, sd, *a, **k: None
inception = pi.fid_inception_v3()
torch.nn.Module.load_state_dict = real_load
with open(os.path.join(HERE, "names.txt"), "w") as out:
    with torch.no_grad():
        for name, t in inception.state_dict().items():
            out.write(f"{name} {'x'.join(map(str, t.shape))}\n")
            if not name.endswith("num_batches_tracked"):
                t.copy_(formula(name, t))
pi.fid_inception_v3 = lambda: inception
model = pi.InceptionV3([pi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

rng = np.random.default_rng(20261203)
images = torch.from_numpy(rng.random((3, 3, 37, 41))).to(torch.float32)
with torch.no_grad():
    features = model(images)[0].reshape(3, 2048)
a = rng.normal(size=(40, 16))
b = rng.normal(loc=0.3, scale=1.2, size=(50, 16))
fid = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
torch.save({"images": images, "features": features, "a": torch.from_numpy(a), "b": torch.from_numpy(b),
            "fid": torch.tensor(float(fid), dtype=torch.float64)}, os.path.join(HERE, "reference.pt"))
print("features: mean %.4g, std %.4g, min %.4g, max %.4g; fid(a, b) = %.12g" %
      (features.mean(), features.std(), features.min(), features.max(), fid))
