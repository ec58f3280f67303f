#!/usr/bin/python3
"""Numbers from the field's own code, for tests/test_reference.cpp.

Runs OpenAI's improved-diffusion (schedules, respacing, q_sample, q_posterior, p_mean_variance
for all four variance types, _vb_terms_bpd, training_losses, calc_bpd_loop, DDPM and DDIM sampling, reverse DDIM)
and Katherine Crowson's k-diffusion (Karras sigmas, euler, euler_ancestral, heun, dpmpp_2m) on
fixed inputs, in float64 (improved-diffusion's float32 cast of the schedule's coefficients is
replaced by a float64 gather), and writes what they return to improved_diffusion.json and
k_diffusion.json beside this script. Nothing of either project is copied here: this script
imports their modules from the checkouts given on the command line. Where they draw noise
(torch.randn_like), the draw is replaced by the next tensor of a list that goes into the JSON
too, so the C++ side can feed the same noise. Modules they import but these functions never
call (scipy, torchdiffeq, torchsde, tqdm) are stubbed.

  /usr/bin/python3 tests/reference/make_reference.py IMPROVED_DIFFUSION_DIR K_DIFFUSION_DIR

Debian's python3-torch (1.13) and python3-numpy run it; README.md names the upstream commits.
"""
import importlib.util
import json
import math
import os
import sys
import types

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20261202)


def arr(t):
    return np.asarray(t, dtype=np.float64).reshape(-1).tolist()


def tensor(shape, scale=1.0):
    return torch.tensor(rng.standard_normal(shape) * scale)


class FedNoise:
    """torch.randn_like that returns the next tensor of a recorded list."""

    def __init__(self, shape, count):
        self.draws = [tensor(shape) for _ in range(count)]
        self.taken = 0

    def __call__(self, x, *args, **kwargs):
        d = self.draws[self.taken]
        assert d.shape == x.shape, (d.shape, x.shape)
        self.taken += 1
        return d.clone()


def with_fed_noise(noise, fn, *args, **kwargs):
    saved = torch.randn_like
    torch.randn_like = noise
    try:
        return fn(*args, **kwargs)
    finally:
        torch.randn_like = saved


# --- improved-diffusion -----------------------------------------------------------------------

class FakeModel(torch.nn.Module):
    """A fixed smooth function of (x, t): the C++ test computes the same (its fake_output). The
    sampling loops ask a model for its parameters' device, hence the module."""

    def __init__(self, learned):
        super().__init__()
        self.learned = learned
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, **kwargs):
        tt = t.to(torch.float64).view(-1, *([1] * (x.dim() - 1)))
        out = 0.8 * torch.tanh(x * torch.cos(tt / 300.0)) + 0.05 * torch.sin(3.0 * x + tt / 100.0)
        if self.learned:
            out = torch.cat([out, torch.tanh(0.5 * x + tt / 700.0 - 0.5)], dim=1)
        return out


def fake_model(c, learned):
    return FakeModel(learned)


def improved_diffusion(root):
    sys.path.insert(0, root)
    from improved_diffusion import gaussian_diffusion as gd
    from improved_diffusion.respace import SpacedDiffusion, space_timesteps

    # Its gather of the schedule's coefficients casts them to float32 (.float()); this keeps
    # them in float64, so that the comparison is of the formulas, at 1e-9.
    def gather_float64(table, t, shape):
        v = torch.from_numpy(np.asarray(table, dtype=np.float64))[t]
        return v.view(-1, *([1] * (len(shape) - 1))).expand(shape)

    gd._extract_into_tensor = gather_float64

    out = {"schedules": {}, "respacing": {}, "process": {}, "reverse": [], "vb_terms": [], "bpd_loop": [],
           "ddpm": [], "ddim": [], "ddim_reverse": []}
    idx = [0, 1, 2, 10, 100, 250, 500, 750, 998, 999]
    for name in ["linear", "cosine"]:
        for T in [1000, 4000]:
            b = gd.get_named_beta_schedule(name, T)
            d = gd.GaussianDiffusion(betas=b, model_mean_type=gd.ModelMeanType.EPSILON,
                                     model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
            at = [i * T // 1000 for i in idx]
            out["schedules"][f"{name}_{T}"] = {
                "T": T, "at": at, "betas": arr(d.betas[at]), "alphas_cumprod": arr(d.alphas_cumprod[at]),
                "alphas_cumprod_prev": arr(d.alphas_cumprod_prev[at]),
                "posterior_variance": arr(d.posterior_variance[at]),
                "posterior_log_variance_clipped": arr(d.posterior_log_variance_clipped[at]),
                "posterior_mean_coef1": arr(d.posterior_mean_coef1[at]),
                "posterior_mean_coef2": arr(d.posterior_mean_coef2[at]),
                "sum_betas": float(np.sum(d.betas)), "sum_log_alphas_cumprod": float(np.sum(np.log(d.alphas_cumprod)))}
    for T, spec in [(1000, "ddim50"), (1000, "ddim10"), (1000, "10,15,20"), (4000, "250"), (1000, "7"), (4000, "25,50")]:
        kept = sorted(space_timesteps(T, spec))
        sd = SpacedDiffusion(use_timesteps=kept, betas=gd.get_named_beta_schedule("cosine", T),
                             model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.FIXED_SMALL,
                             loss_type=gd.LossType.MSE)
        out["respacing"][f"{T}:{spec}"] = {"T": T, "spec": spec, "kept": kept, "cosine_betas": arr(sd.betas)}

    T = 1000
    betas = gd.get_named_beta_schedule("linear", T)
    shape = (4, 2, 3, 3)
    x0 = tensor(shape, 0.6).clamp(-1, 1)
    noise = tensor(shape)
    t = torch.tensor([0, 1, 500, 999])
    base = gd.GaussianDiffusion(betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                                model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
    x_t = base.q_sample(x0, t, noise=noise)
    qm, qv, qlv = base.q_mean_variance(x0, t)
    pm, pv, plv = base.q_posterior_mean_variance(x0, x_t, t)
    out["process"] = {"shape": list(shape), "t": t.tolist(), "x0": arr(x0), "noise": arr(noise), "x_t": arr(x_t),
                      "q_mean": arr(qm), "q_variance": arr(qv), "q_log_variance": arr(qlv),
                      "posterior_mean": arr(pm), "posterior_variance": arr(pv), "posterior_log_variance": arr(plv)}

    var_types = {"fixed_small": gd.ModelVarType.FIXED_SMALL, "fixed_large": gd.ModelVarType.FIXED_LARGE,
                 "learned": gd.ModelVarType.LEARNED, "learned_range": gd.ModelVarType.LEARNED_RANGE}
    mean_types = {"epsilon": gd.ModelMeanType.EPSILON, "x0": gd.ModelMeanType.START_X}
    # x_t scaled up so that some x0 predictions leave [-1, 1] and clipping matters.
    x_big = x_t * 1.7
    # On the 8-bit grid, as the decoder term expects.
    x0_grid = ((x0 + 1) * 127.5).round() / 127.5 - 1
    x_t_grid = base.q_sample(x0_grid, t, noise=noise)
    for vname, vt in var_types.items():
        learned = vt in (gd.ModelVarType.LEARNED, gd.ModelVarType.LEARNED_RANGE)
        model = fake_model(shape[1], learned)
        for mname, mt in mean_types.items():
            d = gd.GaussianDiffusion(betas=betas, model_mean_type=mt, model_var_type=vt, loss_type=gd.LossType.MSE)
            for clip in [True, False]:
                r = d.p_mean_variance(model, x_big, t, clip_denoised=clip)
                out["reverse"].append({"variance": vname, "prediction": mname, "clip": clip, "x_t": arr(x_big),
                                       "mean": arr(r["mean"]), "variance_out": arr(r["variance"]),
                                       "log_variance": arr(r["log_variance"]), "pred_xstart": arr(r["pred_xstart"])})
            vb = d._vb_terms_bpd(model, x0_grid, x_t_grid, t, clip_denoised=True)
            out["vb_terms"].append({"variance": vname, "prediction": mname, "x0": arr(x0_grid), "x_t": arr(x_t_grid),
                                    "bpd": arr(vb["output"]), "pred_xstart": arr(vb["pred_xstart"])})

    # Training losses on the cosine schedule with T = 4000, where RESCALED_MSE's vb scale
    # (T / 1000) and MSE's (1) differ.
    T4 = 4000
    t4 = torch.tensor([0, 1, 2000, 3999])
    out["training_losses"] = []
    for lname, lt, vname in [("mse", gd.LossType.MSE, "fixed_small"), ("mse", gd.LossType.MSE, "learned_range"),
                             ("rescaled_mse", gd.LossType.RESCALED_MSE, "learned_range"),
                             ("kl", gd.LossType.KL, "learned_range"), ("rescaled_kl", gd.LossType.RESCALED_KL, "learned_range")]:
        d = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule("cosine", T4), model_mean_type=gd.ModelMeanType.EPSILON,
                                 model_var_type=var_types[vname], loss_type=lt)
        r = d.training_losses(fake_model(shape[1], vname == "learned_range"), x0_grid, t4, noise=noise)
        out["training_losses"].append({"loss_type": lname, "variance": vname, "T": T4, "t": t4.tolist(),
                                       "x0": arr(x0_grid), "noise": arr(noise), "loss": arr(r["loss"]),
                                       "mse": arr(r["mse"]) if "mse" in r else None,
                                       "vb": arr(r["vb"]) if "vb" in r else None})

    # The whole bound on a 10-step respacing of the linear schedule, the model seeing original steps.
    bshape = (2, 1, 4, 4)
    xb = ((tensor(bshape, 0.5).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    for vname in ["fixed_small", "fixed_large", "learned_range"]:
        vt = var_types[vname]
        sd = SpacedDiffusion(use_timesteps=space_timesteps(T, "10"), betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                             model_var_type=vt, loss_type=gd.LossType.MSE)
        fed = FedNoise(bshape, 10)
        r = with_fed_noise(fed, sd.calc_bpd_loop, fake_model(1, vt == gd.ModelVarType.LEARNED_RANGE), xb, clip_denoised=True)
        out["bpd_loop"].append({"variance": vname, "spec": "10", "x0": arr(xb), "noise_t_desc": [arr(n) for n in fed.draws],
                                "total_bpd": arr(r["total_bpd"]), "prior_bpd": arr(r["prior_bpd"]),
                                "vb": arr(r["vb"]), "xstart_mse": arr(r["xstart_mse"]), "mse": arr(r["mse"])})

    # Sampling loops on a respacing, noise fed, the trajectory recorded (x before each step).
    sshape = (3, 1, 2, 2)
    for vname in ["fixed_small", "fixed_large"]:
        sd = SpacedDiffusion(use_timesteps=space_timesteps(T, "8"), betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                             model_var_type=var_types[vname], loss_type=gd.LossType.MSE)
        fed = FedNoise(sshape, 9)
        xT = fed.draws[0]
        fed.taken = 1
        traj = with_fed_noise(fed, lambda: [s["sample"] for s in sd.p_sample_loop_progressive(
            fake_model(1, False), sshape, noise=xT, clip_denoised=True)])
        out["ddpm"].append({"variance": vname, "spec": "8", "noise": [arr(n) for n in fed.draws],
                            "trajectory": [arr(s) for s in traj]})
    for eta in [0.0, 0.5, 1.0]:
        sd = SpacedDiffusion(use_timesteps=space_timesteps(T, "ddim10"), betas=betas,
                             model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.FIXED_SMALL,
                             loss_type=gd.LossType.MSE)
        fed = FedNoise(sshape, 11)
        xT = fed.draws[0]
        fed.taken = 1
        traj = with_fed_noise(fed, lambda: [s["sample"] for s in sd.ddim_sample_loop_progressive(
            fake_model(1, False), sshape, noise=xT, clip_denoised=True, eta=eta)])
        out["ddim"].append({"eta": eta, "spec": "ddim10", "noise": [arr(n) for n in fed.draws],
                            "trajectory": [arr(s) for s in traj]})
    sd = SpacedDiffusion(use_timesteps=space_timesteps(T, "ddim10"), betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                         model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
    xr = tensor(sshape, 0.5)
    for i in [0, 4, 8]:
        r = sd.ddim_reverse_sample(fake_model(1, False), xr, torch.tensor([i] * sshape[0]), clip_denoised=True)
        out["ddim_reverse"].append({"spec": "ddim10", "t": i, "x": arr(xr), "sample": arr(r["sample"]),
                                    "pred_xstart": arr(r["pred_xstart"])})
    out["sampling_shape"] = list(sshape)
    out["bpd_shape"] = list(bshape)
    return out


# --- k-diffusion ------------------------------------------------------------------------------

def load_k_sampling(root):
    stubs = {"scipy": {}, "scipy.integrate": {}, "torchdiffeq": {"odeint": None}, "torchsde": {},
             "tqdm": {}, "tqdm.auto": {"trange": lambda n, disable=None: range(n), "tqdm": None}}
    for name, attrs in stubs.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules.setdefault(name, m)
    sys.modules["scipy"].integrate = sys.modules["scipy.integrate"]
    pkg = types.ModuleType("kdiff")
    pkg.__path__ = []
    utils = types.ModuleType("kdiff.utils")
    # Broadcasts a [B] tensor against x's trailing dimensions.
    utils.append_dims = lambda v, n: v.reshape(v.shape + (1,) * (n - v.dim()))
    pkg.utils = utils
    sys.modules["kdiff"], sys.modules["kdiff.utils"] = pkg, utils
    spec = importlib.util.spec_from_file_location("kdiff.sampling", os.path.join(root, "k_diffusion", "sampling.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def k_diffusion(root, id_root):
    from improved_diffusion import gaussian_diffusion as gd
    ks = load_k_sampling(root)
    betas = gd.get_named_beta_schedule("linear", 1000)
    abar = np.cumprod(1.0 - betas)
    sigma_min, sigma_max = math.sqrt((1 - abar[0]) / abar[0]), math.sqrt((1 - abar[-1]) / abar[-1])
    mu = torch.tensor([0.5, -0.3, 0.1])
    s = torch.tensor([0.4, 0.7, 0.2])

    def denoiser(x, sigma, **kwargs):  # the exact D(x; sigma) of N(mu, diag(s^2)) data
        sg = sigma.view(-1, 1)
        return mu + (x - mu) * s * s / (s * s + sg * sg)

    out = {"mu": arr(mu), "s": arr(s), "sigma_min": sigma_min, "sigma_max": sigma_max, "runs": []}
    n = 10
    sigmas = ks.get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0)
    out["karras_sigmas"] = arr(sigmas)
    out["exponential_sigmas"] = arr(ks.get_sigmas_exponential(n, sigma_min, sigma_max))
    for name, kwargs in [("euler", {}), ("euler-ancestral", {"eta": 1.0}), ("euler-ancestral", {"eta": 0.5}),
                         ("heun", {}), ("dpmpp-2m", {})]:
        x_start = tensor((2, 3)) * sigma_max
        fed = FedNoise((2, 3), n)
        steps = []
        cb = lambda d: steps.append({"x": arr(d["x"]), "denoised": arr(d["denoised"]), "sigma": float(d["sigma"])})
        fn = {"euler": ks.sample_euler, "euler-ancestral": ks.sample_euler_ancestral, "heun": ks.sample_heun,
              "dpmpp-2m": ks.sample_dpmpp_2m}[name]
        if name == "euler-ancestral":
            kwargs = dict(kwargs, noise_sampler=lambda a, b: fed(x_start))
        result = with_fed_noise(lambda x, *a, **k: torch.zeros_like(x), fn, denoiser, x_start.clone(), sigmas,
                                callback=cb, disable=True, **kwargs)
        out["runs"].append({"sampler": name, "eta": kwargs.get("eta"), "x_start": arr(x_start),
                            "noise": [arr(d) for d in fed.draws[:fed.taken]], "steps": steps, "result": arr(result)})
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    id_root, kd_root = sys.argv[1], sys.argv[2]
    for name, data in [("improved_diffusion.json", improved_diffusion(id_root)),
                       ("k_diffusion.json", k_diffusion(kd_root, id_root))]:
        with open(os.path.join(HERE, name), "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {name} ({os.path.getsize(os.path.join(HERE, name))} bytes)")


if __name__ == "__main__":
    main()
