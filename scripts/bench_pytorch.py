#!/usr/bin/env python3
"""The floor to beat: the same ADM-style UNet trained by PyTorch from Python, on the same
LibTorch build (Debian's python3-torch wraps the same libtorch 1.13) and thread count.

Prints one JSON line like `diffuse bench train`, or with --sample like `diffuse bench sample`
(DDIM, one network evaluation per step, under inference mode; --bf16 runs the network in
bf16). The network mirrors diffuse's UNet (and improved-diffusion's UNetModel): the parameter count is printed so the two can be compared.

  /usr/bin/python3 scripts/bench_pytorch.py --image-size 28 --channels 1 --model-channels 32 \
      --channel-mult 1,2,2 --num-res-blocks 1 --attention-resolutions 7 --batch 64 --threads 2
"""
import argparse
import json
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(ch):
    return nn.GroupNorm(32, ch)


def zeroed(module):
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, dropout, scale_shift):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_norm = norm(out_ch)
        self.out_rest = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zeroed(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
            h = self.out_rest(h)
        else:
            h = self.out_rest(self.out_norm(h + e))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch, heads):
        super().__init__()
        self.heads = heads
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = zeroed(nn.Conv1d(ch, ch, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1)).reshape(b * self.heads, 3 * c // self.heads, -1)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c // self.heads))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return x + self.proj(a).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, in_ch, mc, mult, nres, attn_res, image_size, heads, dropout, scale_shift):
        super().__init__()
        emb = 4 * mc
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.ModuleList([nn.ModuleList([nn.Conv2d(in_ch, mc, 3, padding=1)])])
        chans, ch, res = [mc], mc, image_size
        for level, m in enumerate(mult):
            for _ in range(nres):
                layers = [ResBlock(ch, emb, m * mc, dropout, scale_shift)]
                ch = m * mc
                if res in attn_res:
                    layers.append(Attention(ch, heads))
                self.inp.append(nn.ModuleList(layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.inp.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                chans.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, emb, ch, dropout, scale_shift), Attention(ch, heads),
                                  ResBlock(ch, emb, ch, dropout, scale_shift)])
        self.out_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nres + 1):
                layers = [ResBlock(ch + chans.pop(), emb, m * mc, dropout, scale_shift)]
                ch = m * mc
                if res in attn_res:
                    layers.append(Attention(ch, heads))
                if level and i == nres:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.out_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zeroed(nn.Conv2d(mc, in_ch, 3, padding=1)))

    @staticmethod
    def run(layers, h, emb):
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.mc).to(x.dtype))
        hs, h = [], x
        for layers in self.inp:
            h = self.run(layers, h, emb)
            hs.append(h)
        h = self.run(self.mid, h, emb)
        for layers in self.out_blocks:
            h = self.run(layers, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_sample(a, net, abar):
    """DDIM (eta 0) over `steps` evenly spaced timesteps: the arithmetic of every deterministic
    first-order sampler, so the time is the network's."""
    net.eval()
    # LibTorch 1.13's CPU autocast leaves GroupNorm's weights in float32 and fails on bf16 input,
    # so a bf16 run casts the whole network, as a PyTorch user does for inference.
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    net.to(dtype)
    ts = torch.linspace(999, 0, a.steps).round().long()
    g = torch.Generator().manual_seed(0)

    def run():
        x = torch.randn(a.batch, a.channels, a.image_size, a.image_size, generator=g)
        for i, t in enumerate(ts):
            ab = abar[t]
            ab_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            eps = net(x.to(dtype), t.repeat(a.batch)).float()
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x

    with torch.inference_mode():
        run()  # warm-up pass
        t0 = time.perf_counter()
        run()
        sec = time.perf_counter() - t0
    print(json.dumps({"bench": "sample-pytorch", "name": a.name, "batch": a.batch, "threads": a.threads,
                      "torch": torch.__version__, "precision": "bf16" if a.bf16 else "fp32",
                      "parameters": sum(p.numel() for p in net.parameters()), "steps": a.steps,
                      "images_per_sec": round(a.batch / sec, 3),
                      "nfe_images_per_sec": round(a.batch * a.steps / sec, 2), "peak_rss_mib": peak_rss_mib()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="pytorch")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--model-channels", type=int, default=32)
    ap.add_argument("--channel-mult", default="1,2,2")
    ap.add_argument("--num-res-blocks", type=int, default=1)
    ap.add_argument("--attention-resolutions", default="7")
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--no-scale-shift", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sample", action="store_true", help="time DDIM sampling instead of training")
    ap.add_argument("--bf16", action="store_true", help="the network in bf16 (sampling)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    attn = {int(r) for r in a.attention_resolutions.split(",") if r}
    net = UNet(a.channels, a.model_channels, [int(m) for m in a.channel_mult.split(",")], a.num_res_blocks, attn,
               a.image_size, a.num_heads, a.dropout, not a.no_scale_shift)
    if a.sample:
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
        return bench_sample(a, net, abar)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    ema = [p.detach().clone() for p in net.parameters()]
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    x0 = torch.rand(a.batch, a.channels, a.image_size, a.image_size) * 2 - 1

    def step():
        t = torch.randint(0, 1000, (a.batch,))
        eps = torch.randn_like(x0)
        ab = abar[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = F.mse_loss(net(x_t, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # EMA, as diffuse's step does
            for e, p in zip(ema, net.parameters()):
                e.lerp_(p, 1 - 0.999)

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sec = time.perf_counter() - t0
    print(json.dumps({"bench": "train-pytorch", "name": a.name, "batch": a.batch, "threads": a.threads,
                      "torch": torch.__version__, "parameters": sum(p.numel() for p in net.parameters()),
                      "steps": a.steps, "images_per_sec": round(a.batch * a.steps / sec, 3),
                      "step_ms": round(1000 * sec / a.steps, 3), "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()
