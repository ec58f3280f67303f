#!/usr/bin/python3
"""OpenAI's own UNetModel and GaussianDiffusion on small random models, for tests/test_openai_import.cpp.

For each case in CASES the script parses the case's flags with the upstream script's own
argparse defaults (improved-diffusion's or guided-diffusion's model_and_diffusion_defaults),
builds the upstream UNetModel and SpacedDiffusion from them, gives every parameter random values
(zero-initialised layers included, so that no block is a no-op), and writes to openai_unet/:
  <case>.pt      the state_dict, as torch.save writes it (the case says which format and dtype)
  <case>.flags   the flags, one line, as a user passes them to `diffuse import --flags`
  <case>.base.npz  super-resolution cases: their low_res as image_sample.py's np.savez writes samples
  <case>.io.pt   torch.save({"x", "t", "y" (class-conditional cases), "out": model(x, t, y) in
                 eval mode; "x_start", "mean", "log_variance", "pred_xstart": p_mean_variance at
                 (x, t) with clip_denoised; "noise", "sample": one reverse step with that noise
                 (p_sample's formula, its randn_like replaced by the stored noise); "vb": the
                 denoising-matching term _vb_terms_bpd(x_start, x, t) in bits/dim})
The models run in float32 from the stored weights (fp16 files: the rounded values).
published.json: for every model flag set in the two READMEs, what the upstream scripts build
from it (constructor settings of UNetModel, parameter count, the diffusion's settings and its
betas' first/last/sum), so that the C++ mapping of flags is checked against the scripts.

Super-resolution cases (their flags have --large_size and --small_size, parsed with
sr_model_and_diffusion_defaults) are SuperResModel; their io.pt also holds "low_res", the
low-resolution images the model is given (model_kwargs low_res, as super_res_sample.py passes).

improved-diffusion's create_model and both sr_create_model take no channel_mult, and
guided-diffusion's create_model takes integers only; a case that gives one the script does not
take (to keep the file small, or the 512x512 model's 0.5) builds its model with the rest of
that function's arguments unchanged.

  git clone https://github.com/openai/improved-diffusion /tmp/improved-diffusion  # commits in README.md
  git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
  /usr/bin/python3 tests/reference/make_openai_unet.py /tmp/improved-diffusion /tmp/guided-diffusion
(needs python3-torch and python3-numpy.)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from improved_diffusion import script_util as isu  # noqa: E402
from improved_diffusion import unet as iunet  # noqa: E402
from guided_diffusion import script_util as gsu  # noqa: E402
from guided_diffusion import unet as gunet  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_unet")
os.makedirs(HERE, exist_ok=True)

CASES = [
    # improved-diffusion: learned sigmas, 4000-step cosine schedule, rescale_timesteps (its
    # default), num_heads_upsample, no scale-shift norm, dropout (inactive in eval mode).
    dict(name="improved_cosine4000", family="improved", fmt="zip", dtype=torch.float32,
         flags="--image_size 16 --channel_mult 1,1 --num_channels 32 --num_res_blocks 1 --learn_sigma True "
               "--dropout 0.3 --attention_resolutions 16,8 --num_heads 2 --num_heads_upsample 1 "
               "--use_scale_shift_norm False --diffusion_steps 4000 --noise_schedule cosine",
         t=[17, 3001]),
    # guided-diffusion: 1000 classes, num_head_channels, the new attention order, resblock_updown,
    # fp16-stored weights in torch's legacy format.
    dict(name="guided_cond_newattn", family="guided", fmt="legacy", dtype=torch.float16,
         flags="--attention_resolutions 16,8 --class_cond True --diffusion_steps 1000 --image_size 16 "
               "--channel_mult 1,1 --learn_sigma True --noise_schedule linear --num_channels 32 "
               "--num_head_channels 16 --num_res_blocks 1 --resblock_updown True --use_new_attention_order True "
               "--use_fp16 True --use_scale_shift_norm True",
         t=[5, 911], y=[3, 999]),
    # guided-diffusion: x0 prediction, fixed large variance, legacy attention order with
    # num_heads / num_heads_upsample, plain (conv) resampling.
    dict(name="guided_xstart_heads", family="guided", fmt="zip", dtype=torch.float16,
         flags="--image_size 16 --channel_mult 1,1 --num_channels 32 --num_res_blocks 1 --attention_resolutions 8 "
               "--num_heads 4 --num_heads_upsample 2 --predict_xstart True --diffusion_steps 1000 "
               "--noise_schedule cosine",
         t=[0, 640]),
    # guided-diffusion: a fractional channel multiplier (the 512x512 model's first level is 0.5).
    dict(name="guided_half_mult", family="guided", fmt="zip", dtype=torch.float16,
         flags="--image_size 16 --channel_mult 0.5,1 --num_channels 64 --num_res_blocks 1 --attention_resolutions 8 "
               "--num_head_channels 32 --learn_sigma True --diffusion_steps 1000 --noise_schedule linear",
         t=[2, 500]),
    # guided-diffusion's SuperResModel, as its 64 -> 256 upsampler: class-conditional, learned sigmas,
    # resblock_updown, fp16 weights; 8x8 images upsampled to 16x16.
    dict(name="guided_superres", family="guided", fmt="zip", dtype=torch.float16,
         flags="--large_size 16 --small_size 8 --channel_mult 1,1 --num_channels 32 --num_res_blocks 1 "
               "--attention_resolutions 8 --num_heads 4 --class_cond True --learn_sigma True --resblock_updown True "
               "--use_fp16 True --use_scale_shift_norm True --diffusion_steps 1000 --noise_schedule linear",
         t=[9, 777], y=[1, 998]),
    # improved-diffusion's SuperResModel, with its rescaled timesteps.
    dict(name="improved_superres", family="improved", fmt="legacy", dtype=torch.float16,
         flags="--large_size 16 --small_size 4 --channel_mult 1,1 --num_channels 32 --num_res_blocks 1 "
               "--attention_resolutions 8 --num_heads 2 --diffusion_steps 4000 --noise_schedule cosine",
         t=[31, 3999]),
]

PUBLISHED = [
    ("improved", "--image_size 64 --num_channels 128 --num_res_blocks 3 --diffusion_steps 4000 --noise_schedule linear"),
    ("improved", "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"),
    ("improved", "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine"),
    ("improved", "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True --diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False"),
    ("improved", "--num_channels 192 --num_res_blocks 2 --learn_sigma True --class_cond True --diffusion_steps 4000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False"),
    ("improved", "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False"),
    ("improved", "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --use_kl True"),
    ("guided", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"),
    ("guided", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),
    ("guided", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),
    ("guided", "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),
    ("guided", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True"),
    ("guided", "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256  --small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),
    ("guided", "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 --learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"),
]


def is_sr(flags):
    return "--large_size" in flags


def defaults_of(su, sr):
    return su.sr_model_and_diffusion_defaults() if sr else su.model_and_diffusion_defaults()


def parse(family, flags):
    su = isu if family == "improved" else gsu
    defaults = defaults_of(su, is_sr(flags))
    defaults.setdefault("channel_mult", "")
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    return su, vars(parser.parse_args(flags.split()))


def build(family, flags):
    su, args = parse(family, flags)
    sr = is_sr(flags)
    keys = defaults_of(su, sr).keys()
    mult = args["channel_mult"]
    takes_mult = family == "guided" and not sr and "." not in mult
    if not mult or takes_mult:
        create = su.sr_create_model_and_diffusion if sr else su.create_model_and_diffusion
        model, diffusion = create(**{k: args[k] for k in keys})
        return model, diffusion, args
    # The upstream function's construction with that one value changed.
    mult = tuple(float(m) if "." in m else int(m) for m in mult.split(","))
    size = args["large_size"] if sr else args["image_size"]
    ds = tuple(size // int(r) for r in args["attention_resolutions"].split(","))
    kw = dict(
        in_channels=3, model_channels=args["num_channels"], out_channels=6 if args["learn_sigma"] else 3,
        num_res_blocks=args["num_res_blocks"], attention_resolutions=ds, dropout=args["dropout"],
        channel_mult=mult, num_classes=isu.NUM_CLASSES if args["class_cond"] else None,
        use_checkpoint=False, num_heads=args["num_heads"], num_heads_upsample=args["num_heads_upsample"],
        use_scale_shift_norm=args["use_scale_shift_norm"])
    if family == "guided":
        kw.update(num_head_channels=args["num_head_channels"], resblock_updown=args["resblock_updown"],
                  use_fp16=args["use_fp16"])
        if not sr:
            kw.update(use_new_attention_order=args["use_new_attention_order"])
        model = (gunet.SuperResModel if sr else gunet.UNetModel)(size, **kw)
    else:
        model = (iunet.SuperResModel if sr else iunet.UNetModel)(**kw)
    diffusion = su.create_gaussian_diffusion(
        steps=args["diffusion_steps"], learn_sigma=args["learn_sigma"], sigma_small=args.get("sigma_small", False),
        noise_schedule=args["noise_schedule"], use_kl=args["use_kl"], predict_xstart=args["predict_xstart"],
        rescale_timesteps=args["rescale_timesteps"], rescale_learned_sigmas=args["rescale_learned_sigmas"],
        timestep_respacing=args["timestep_respacing"])
    return model, diffusion, args


def randomise(model, dtype, gen):
    """Every parameter random (zero-initialised ones too), rounded through the stored dtype."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / np.sqrt(p[0].numel())
            elif "norm" in name or name.endswith("in_layers.0.weight") or name.endswith("out_layers.0.weight") \
                    or name.endswith("out.0.weight"):
                v = (1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)) if name.endswith("weight") \
                    else 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(v.to(dtype).to(torch.float32))


def make_case(case, seed):
    gen = torch.Generator().manual_seed(seed)
    model, diffusion, args = build(case["family"], case["flags"])
    model.float().eval()
    # use_fp16 runs guided-diffusion's blocks in float16, which CPU convolutions lack in torch 1.13:
    # the fixture runs them in float32 (its weights are the fp16-rounded values either way).
    if hasattr(model, "dtype"):
        model.dtype = torch.float32
    randomise(model, case["dtype"], gen)
    sd = {k: v.to(case["dtype"]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(HERE, case["name"] + ".pt"), _use_new_zipfile_serialization=case["fmt"] == "zip")
    with open(os.path.join(HERE, case["name"] + ".flags"), "w") as f:
        f.write(case["flags"] + "\n")

    size = args["large_size"] if is_sr(case["flags"]) else args["image_size"]
    x = torch.randn((2, 3, size, size), generator=gen)
    x_start = (torch.rand((2, 3, size, size), generator=gen) * 255).round() / 127.5 - 1
    t = torch.tensor(case["t"], dtype=torch.long)
    kwargs = {"y": torch.tensor(case["y"], dtype=torch.long)} if "y" in case else {}
    if is_sr(case["flags"]):
        small = args["small_size"]
        kwargs["low_res"] = (torch.rand((2, 3, small, small), generator=gen) * 255).round() / 127.5 - 1
    noise = torch.randn((2, 3, size, size), generator=gen)
    with torch.no_grad():
        # What the diffusion feeds the network: its SpacedDiffusion's wrapped model maps t and,
        # with rescale_timesteps, scales it by 1000 / T (its _scale_timesteps leaves t as it is).
        out = diffusion._wrap_model(model)(x, t, **kwargs)
        pmv = diffusion.p_mean_variance(model, x, t, clip_denoised=True, model_kwargs=kwargs)
        nonzero = (t != 0).float().view(-1, 1, 1, 1)
        sample = pmv["mean"] + nonzero * torch.exp(0.5 * pmv["log_variance"]) * noise
        vb = diffusion._vb_terms_bpd(model, x_start, x, t, clip_denoised=True, model_kwargs=kwargs)["output"]
    io = {"x": x, "t": t, "out": out, "x_start": x_start, "mean": pmv["mean"], "log_variance": pmv["log_variance"],
          "pred_xstart": pmv["pred_xstart"], "noise": noise, "sample": sample, "vb": vb}
    io.update(kwargs)
    torch.save({k: v.contiguous() for k, v in io.items()}, os.path.join(HERE, case["name"] + ".io.pt"))
    if "low_res" in kwargs:
        # The low-resolution images as image_sample.py saves samples (super_res_sample.py's
        # --base_samples): uint8 NHWC in arr_0, the labels in arr_1.
        arr = ((kwargs["low_res"] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        extra = [kwargs["y"].numpy()] if "y" in kwargs else []
        np.savez(os.path.join(HERE, case["name"] + ".base.npz"), arr, *extra)
    print(f"{case['name']}: {sum(p.numel() for p in model.parameters())} parameters, out |max| "
          f"{out.abs().max():.3f}, vb {vb.tolist()}")


def published_facts(family, flags):
    model, diffusion, args = build(family, flags)
    betas = np.asarray(diffusion.betas, dtype=np.float64)
    attn = sorted(model.attention_resolutions) if hasattr(model, "attention_resolutions") else None
    return {
        "family": family, "flags": flags,
        "model_channels": model.model_channels, "channel_mult": [float(m) for m in model.channel_mult],
        "in_channels": model.in_channels, "low_res_size": args["small_size"] if is_sr(flags) else 0,
        "num_res_blocks": model.num_res_blocks, "attention_downsample": [int(a) for a in attn],
        "num_heads": model.num_heads, "num_heads_upsample": model.num_heads_upsample,
        "num_head_channels": getattr(model, "num_head_channels", -1),
        "out_channels": model.out_channels, "num_classes": model.num_classes or 0, "dropout": model.dropout,
        "parameters": sum(p.numel() for p in model.parameters()),
        "use_new_attention_order": bool(args.get("use_new_attention_order", False)),
        "resblock_updown": bool(args.get("resblock_updown", False)),
        "use_scale_shift_norm": bool(args["use_scale_shift_norm"]),
        "num_timesteps": int(diffusion.num_timesteps), "mean_type": diffusion.model_mean_type.name,
        "var_type": diffusion.model_var_type.name, "loss_type": diffusion.loss_type.name,
        "rescale_timesteps": bool(diffusion.rescale_timesteps),
        "beta_first": betas[0], "beta_last": betas[-1], "beta_sum": float(betas.sum()),
    }


def main():
    torch.manual_seed(0)
    for i, case in enumerate(CASES):
        make_case(case, 1000 + i)
    facts = [published_facts(f, fl) for f, fl in PUBLISHED]
    with open(os.path.join(HERE, "published.json"), "w") as f:
        json.dump(facts, f, indent=1)
        f.write("\n")
    print(f"published.json: {len(facts)} flag sets")


if __name__ == "__main__":
    main()
