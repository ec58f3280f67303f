#!/usr/bin/python3
"""guided-diffusion's noisy-image classifier and classifier guidance, for tests/test_classifier_guidance.cpp.

For each classifier in CLASSIFIERS the script builds guided-diffusion's EncoderUNetModel as its
create_classifier does (num_head_channels 64, 1000 classes, attention at the listed resolutions),
with a channel_mult given by the case (create_classifier derives it from image_size, which it
allows only from 64 up; the fixtures are 16x16 to stay small) and, for the spatial pools, 10
classes (diffuse's import takes 1000; the test sets model.num_classes), gives every parameter random
values (zero-initialised layers included) and writes to openai_classifier/:
  <case>.pt      the state_dict, as torch.save writes it (the case says which format and dtype)
  <case>.flags   the flags, one line, as a user passes them to `diffuse import --classifier --flags`
                 (--channel_mult is diffuse's addition for sizes create_classifier does not know)
  <case>.io.pt   torch.save({"x", "t", "y", "logits": classifier(x, t), "grad": classifier_sample.py's
                 cond_fn(x, t, y) at classifier_scale SCALE, "scale"})
Then one guided reverse step per GUIDED case, on a diffusion model of tests/reference/openai_unet/
(its flags and state_dict) with one of these classifiers, as classifier_sample.py runs them:
  <case>.io.pt   torch.save({"x", "t" (the step index of the respaced process), "y", "noise",
                 "sample", "pred_xstart", "scale": the case's classifier_scale}): p_sample
                 (condition_mean, Sohl-Dickstein et al. 2015) or ddim_sample with eta 0
                 (condition_score, Song et al. 2021) on
                 create_gaussian_diffusion with the case's timestep_respacing; the noise that
                 p_sample draws is the stored one (same generator seed).
The models run in float32 from the stored weights (fp16 files: the rounded values).

  git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion  # commit in README.md
  /usr/bin/python3 tests/reference/make_openai_classifier.py /tmp/guided-diffusion
(needs python3-torch and python3-numpy; run after make_openai_unet.py, whose models it uses.)
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, sys.argv[1])
from guided_diffusion import script_util as gsu  # noqa: E402
from guided_diffusion import unet as gunet  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
HERE = os.path.join(ROOT, "openai_classifier")
UNETS = os.path.join(ROOT, "openai_unet")
os.makedirs(HERE, exist_ok=True)

SCALE = 3.0

CLASSIFIERS = [
    # The published classifiers' layout: attention pooling, scale-shift norm, resblock_updown,
    # fp16-stored weights, torch's legacy format.
    dict(name="classifier_attention", fmt="legacy", dtype=torch.float16, mult=(1, 1),
         flags="--image_size 16 --channel_mult 1,1 --classifier_width 64 --classifier_depth 1 "
               "--classifier_attention_resolutions 16,8 --classifier_use_scale_shift_norm True "
               "--classifier_resblock_updown True --classifier_pool attention --classifier_use_fp16 True",
         t=[911, 5], y=[3, 999]),
    # Adaptive pooling, plain additive time conditioning, strided-conv downsampling, no
    # residual blocks per level (the middle block alone), float32 zip file.
    dict(name="classifier_adaptive", fmt="zip", dtype=torch.float32, mult=(1, 1),
         flags="--image_size 16 --channel_mult 1,1 --classifier_width 64 --classifier_depth 0 "
               "--classifier_attention_resolutions 8 --classifier_use_scale_shift_norm False "
               "--classifier_resblock_updown False --classifier_pool adaptive --noise_schedule cosine",
         t=[0, 640], y=[0, 517]),
    # The spatial pools (every block's spatial mean into an MLP of width 2048; v2 adds GroupNorm
    # and SiLU), one level; 10 classes rather than create_classifier's 1000 to keep the 2048-wide
    # head's file small.
    dict(name="classifier_spatial", fmt="zip", dtype=torch.float16, mult=(1,), classes=10,
         flags="--image_size 16 --channel_mult 1 --classifier_width 64 --classifier_depth 0 "
               "--classifier_attention_resolutions 16 --classifier_pool spatial",
         t=[100, 3], y=[2, 9]),
    dict(name="classifier_spatial_v2", fmt="zip", dtype=torch.float16, mult=(1,), classes=10,
         flags="--image_size 16 --channel_mult 1 --classifier_width 64 --classifier_depth 1 "
               "--classifier_attention_resolutions 16 --classifier_use_scale_shift_norm False "
               "--classifier_pool spatial_v2",
         t=[999, 50], y=[0, 7]),
]

GUIDED = [
    # Class-conditional model with learned sigmas, DDPM on all 1000 steps.
    dict(name="guided_ddpm_cond", unet="guided_cond_newattn", classifier="classifier_attention", sampler="ddpm",
         respacing="", t=911, y=[3, 999], scale=30.0),
    dict(name="guided_ddpm_cond_t0", unet="guided_cond_newattn", classifier="classifier_attention", sampler="ddpm",
         respacing="", t=0, y=[41, 7], scale=1000.0),  # the mean moves by Sigma g at t = 0 too, Sigma ~ 1e-5
    # Unconditional x0-predicting model, DDIM on a respaced process (the classifier sees the
    # original timesteps).
    dict(name="guided_ddim_uncond", unet="guided_xstart_heads", classifier="classifier_adaptive", sampler="ddim",
         respacing="ddim10", t=7, y=[12, 600], scale=SCALE),
]


def randomise(model, dtype, gen):
    """Every parameter random (zero-initialised ones too), rounded through the stored dtype."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / np.sqrt(p[0].numel())
            elif name.endswith("weight") and ("norm" in name or "layers.0" in name or name == "out.0.weight"):
                v = 1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(v.to(dtype).to(torch.float32))


def parse_classifier(flags):
    defaults = gsu.classifier_and_diffusion_defaults()
    defaults["channel_mult"] = ""
    parser = argparse.ArgumentParser()
    gsu.add_dict_to_argparser(parser, defaults)
    return vars(parser.parse_args(flags.split()))


def build_classifier(case):
    a = parse_classifier(case["flags"])
    size = a["image_size"]
    ds = tuple(size // int(r) for r in a["classifier_attention_resolutions"].split(","))
    # create_classifier's construction with the case's channel_mult.
    model = gunet.EncoderUNetModel(
        image_size=size, in_channels=3, model_channels=a["classifier_width"], out_channels=case.get("classes", 1000),
        num_res_blocks=a["classifier_depth"], attention_resolutions=ds, channel_mult=case["mult"],
        use_fp16=False, num_head_channels=64, use_scale_shift_norm=a["classifier_use_scale_shift_norm"],
        resblock_updown=a["classifier_resblock_updown"], pool=a["classifier_pool"])
    return model.float().eval(), size


def cond_fn(classifier, scale):
    # classifier_sample.py's cond_fn.
    def fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits, dim=-1)
            selected = log_probs[range(len(logits)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale
    return fn


def make_classifier(case, seed):
    gen = torch.Generator().manual_seed(seed)
    model, size = build_classifier(case)
    randomise(model, case["dtype"], gen)
    sd = {k: v.to(case["dtype"]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(HERE, case["name"] + ".pt"), _use_new_zipfile_serialization=case["fmt"] == "zip")
    with open(os.path.join(HERE, case["name"] + ".flags"), "w") as f:
        f.write(case["flags"] + "\n")
    x = torch.randn((2, 3, size, size), generator=gen)
    t = torch.tensor(case["t"], dtype=torch.long)
    y = torch.tensor(case["y"], dtype=torch.long)
    with torch.no_grad():
        logits = model(x, t)
    grad = cond_fn(model, SCALE)(x, t, y)
    io = {"x": x, "t": t, "y": y, "logits": logits, "grad": grad, "scale": torch.tensor(SCALE, dtype=torch.float64)}
    torch.save({k: v.contiguous() for k, v in io.items()}, os.path.join(HERE, case["name"] + ".io.pt"))
    print(f"{case['name']}: {sum(p.numel() for p in model.parameters())} parameters, logits |max| "
          f"{logits.abs().max():.3f}, grad |max| {grad.abs().max():.4f}")
    return model


def load_unet(name, respacing):
    with open(os.path.join(UNETS, name + ".flags")) as f:
        flags = f.readline().split()
    defaults = gsu.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    gsu.add_dict_to_argparser(parser, defaults)
    args = vars(parser.parse_args(flags))
    args["timestep_respacing"] = respacing
    model, diffusion = gsu.create_model_and_diffusion(**{k: args[k] for k in defaults.keys()})
    sd = torch.load(os.path.join(UNETS, name + ".pt"), map_location="cpu")
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.float().eval()
    model.dtype = torch.float32  # as make_openai_unet.py: fp16 blocks run in float32 on the CPU
    return model, diffusion, args


def make_guided(case, classifiers, seed):
    gen = torch.Generator().manual_seed(seed)
    model, diffusion, args = load_unet(case["unet"], case["respacing"])
    classifier = classifiers[case["classifier"]]
    size = args["image_size"]
    y = torch.tensor(case["y"], dtype=torch.long)
    x = torch.randn((2, 3, size, size), generator=gen)
    t = torch.full((2,), case["t"], dtype=torch.long)

    def model_fn(x, t, y=None):
        return model(x, t, y if args["class_cond"] else None)

    kwargs = {"y": y}
    cond = cond_fn(classifier, case["scale"])
    torch.manual_seed(seed)
    noise = torch.randn_like(x)
    torch.manual_seed(seed)  # the same draw inside p_sample / ddim_sample
    with torch.no_grad():
        if case["sampler"] == "ddpm":
            out = diffusion.p_sample(model_fn, x, t, clip_denoised=True, cond_fn=cond, model_kwargs=kwargs)
        else:
            out = diffusion.ddim_sample(model_fn, x, t, clip_denoised=True, cond_fn=cond, model_kwargs=kwargs, eta=0.0)
    io = {"x": x, "t": t, "y": y, "noise": noise, "sample": out["sample"], "pred_xstart": out["pred_xstart"],
          "scale": torch.tensor(case["scale"], dtype=torch.float64)}
    torch.save({k: v.contiguous() for k, v in io.items()}, os.path.join(HERE, case["name"] + ".io.pt"))
    print(f"{case['name']}: {case['sampler']} step at t {case['t']} of '{case['respacing'] or 'all'}', "
          f"sample |max| {out['sample'].abs().max():.3f}")


def main():
    torch.manual_seed(0)
    classifiers = {c["name"]: make_classifier(c, 2000 + i) for i, c in enumerate(CLASSIFIERS)}
    for i, case in enumerate(GUIDED):
        make_guided(case, classifiers, 3000 + i)


if __name__ == "__main__":
    main()
