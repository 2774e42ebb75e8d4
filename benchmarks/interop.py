r"""Bring your own model, end to end: a diffusers UNet2DModel trained by scorelab's trainer on digits, saved as a
diffusers folder, sampled by diffusers' own schedulers and by scorelab (its defaults, and a grid fitted to the
model's own ODE run *inside diffusers* through ``interop.ScorelabScheduler``) at NFE 5 / 10 / 20 (issue 22).

    python benchmarks/interop.py [--train-steps 1500] [--n-fid 1000] [--n-path 500] [--seeds 3]
                                 [--fit-evals 120] [--fit-samples 128] [--ref-steps 200] [--nfes 5 10 20]
                                 [--fit-samplers unipc unipc_bh2 dpm_solver_pp_3m]
                                 [--fit-inits ddpm_linspace uniform_log_snr uniform_t karras]
                                 [--unet DIR] [--name interop_digits]

Protocol.
- Model: ``UNet2DModel`` (8x8, 1 channel, channels 16/32, one ResNet block per level, 0.16M parameters) with a
  ``DDPMScheduler`` (linear betas, N = 1000, eps prediction), imported by ``interop.from_diffusers`` and trained by
  ``training.train`` (DSM with the ``discrete`` proposal = diffusers' training objective, batch 128, AdamW 2e-3 cosine,
  EMA 0.999) on the 1797 scikit-learn digits; the EMA is saved with ``interop.to_diffusers`` and everything below
  reloads it from that folder (``--unet DIR`` reuses such a folder instead, for iterating; headline runs train).
- Sampling: every configuration runs the loop of ``DDPMPipeline`` (x_T ~ N(0, I) at timestep 999; ``set_timesteps``;
  ``x = scheduler.step(unet(x, t).sample, t, x).prev_sample``) without the final clamp, from the same x_T per seed
  (held-out seeds 1..S; seed 0 is the dev seed on which "diffusers' best" is chosen per NFE and metric, and the fit
  never sees any of them: it draws its own x_T).  diffusers configurations: DDIM (trailing spacing, so that it starts
  at timestep 999 like the others), DPM-Solver++ 2M / 3M (default linspace, and 2M with Karras sigmas), UniPC (bh2,
  p = 2; and with Karras sigmas), DEIS-2.  scorelab: UniPC-3 (bh1) and DPM-Solver++(2M) on their default grids
  (ending with a step into t = 0, as diffusers), and a grid fitted by ``samplers.grid_opt.optimize_grid`` run inside
  diffusers by ``ScorelabScheduler`` (checked equal to DDPMPipeline's output).  The fit, per NFE and for each of
  ``--fit-samplers``: NFE - 1 steps then the step into t = 0, the last time before it fitted too (``free_end``)
  against the model's full ODE solution (the same teacher as the pathwise metric below), pathwise objective, Powell
  with ``--fit-evals`` objective evaluations on ``--fit-samples`` x_T of its own, started from the best of the
  ``--fit-inits`` grids on those x_T (``ddpm_linspace`` = diffusers' own timesteps); the sampler whose fitted grid
  has the lowest error on the fit's own held-out ``--fit-samples`` x_T is the one run inside diffusers.
- Metrics: FID-digits (``evaluation.metrics.fid_digits``: features of scorelab's digits CNN, not Inception) of
  ``--n-fid`` samples vs all 1797 digits; the pathwise error RMS_i ||x_0^i - Phi(x_T^i)|| / sqrt(D) on the first
  ``--n-path`` x_T, Phi = the model's own probability-flow ODE solved by UniPC-3 on ``--ref-steps`` log-SNR steps (its
  floor: the gap to the same solver on half the steps, reported).  Paired differences over the held-out seeds.  The
  ODE solution itself (on all ``--n-fid`` x_T) is a row too: its FID-digits is what a solver exact on the model's ODE
  scores, so a lower FID at some NFE comes from a solver's error, not from following the model more closely.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import torch

NAME = "interop_digits"
FIT_SAMPLERS = ("unipc", "unipc_bh2", "dpm_solver_pp_3m")
FIT_INITS = ("ddpm_linspace", "uniform_log_snr", "uniform_t", "karras")


def diffusers_configs() -> dict:
    """name -> (scheduler class name, overrides of the model's scheduler config)."""
    return {
        "diffusers DDIM (trailing)": ("DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": True}),
        "diffusers DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", {}),
        "diffusers DPM-Solver++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        "diffusers DPM-Solver++ 3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
        "diffusers UniPC (bh2, p=2)": ("UniPCMultistepScheduler", {}),
        "diffusers UniPC Karras": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
        "diffusers DEIS-2": ("DEISMultistepScheduler", {}),
    }


def train_to_folder(args, folder: Path) -> dict:
    import diffusers

    from scorelab.data import load_dataset
    from scorelab.interop import from_diffusers, to_diffusers
    from scorelab.training.loop import TrainConfig, train

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    model = from_diffusers(unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False))
    x, _ = load_dataset("digits")
    t0, c0 = time.time(), time.process_time()
    res = train(model, x, TrainConfig(steps=args.train_steps, batch_size=128, lr=2e-3, ema_decay=0.999,
                                      log_every=max(1, args.train_steps // 10)), progress=False)
    to_diffusers(res.ema_model, folder)
    return {"train_steps": args.train_steps, "final_loss_mean_last100": float(np.mean(res.history[-100:])),
            "params": sum(p.numel() for p in unet.parameters()), "train_wall_s": time.time() - t0,
            "train_cpu_s": time.process_time() - c0}


def run_scheduler(sched, unet, x_T: torch.Tensor, nfe: int, batch: int = 500) -> torch.Tensor:
    """DDPMPipeline's loop without the final clamp, in batches (the scheduler is reset per batch)."""
    out = []
    with torch.no_grad():
        for i in range(0, x_T.shape[0], batch):
            sched.set_timesteps(nfe)
            x = x_T[i:i + batch].clone()
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
            out.append(x)
    return torch.cat(out)


def metrics(x: torch.Tensor, ref: torch.Tensor, n_path: int) -> dict:
    from scorelab.evaluation.metrics import fid_digits

    err = (x[:n_path] - ref).reshape(n_path, -1).pow(2).mean(1).mean().sqrt()
    return {"fid_digits": fid_digits(x.clamp(-1, 1)), "pathwise": float(err)}


def fit_grids(model, args) -> dict:
    """Per NFE: a grid fitted for each of ``--fit-samplers`` (free last time, full-ODE teacher, best of ``--fit-inits``
    as the start), on x_T of the fit's own; the sampler whose fitted grid has the lowest error on the fit's own
    held-out x_T is the one run inside diffusers."""
    from scorelab.samplers.grid_opt import optimize_grid

    fits = {}
    for nfe in args.nfes:
        c0, cands = time.process_time(), {}
        for s in args.fit_samplers:
            fit = optimize_grid(model, s, nfe - 1, init=list(args.fit_inits), final_zero=True, free_end=True,
                                objective="pathwise", n_samples=args.fit_samples, n_heldout=args.fit_samples,
                                max_objective=args.fit_evals, sample_shape=(1, 8, 8), reference="unipc",
                                ref_steps=args.ref_steps, generator=torch.Generator().manual_seed(7))
            cands[s] = {"ts": fit.ts.tolist(), "init": fit.init, "init_losses": fit.init_losses,
                        "heldout_init": fit.heldout_init, "heldout_fit": fit.heldout_fit,
                        "model_evals": fit.model_evals}
            print(f"fit NFE {nfe} {s}: start {fit.init}, held-out pathwise {fit.heldout_init:.4f} -> "
                  f"{fit.heldout_fit:.4f}, t_min {float(fit.ts[-2]):.4f}", flush=True)
        best = min(cands, key=lambda k: cands[k]["heldout_fit"])
        fits[nfe] = {"sampler": best, "ts": torch.tensor(cands[best]["ts"], dtype=torch.float64),
                     "candidates": cands, "cpu_s": time.process_time() - c0}
    return fits


def fit_table(fits: dict) -> list[str]:
    """The fits: per NFE and candidate sampler, the chosen start, the fitted last time and the held-out errors."""
    rows = []
    for nfe, f in fits.items():
        for s, c in f["candidates"].items():
            rows.append([nfe, s + (" (chosen)" if s == f["sampler"] else ""), c["init"], f"{c['ts'][-2]:.4f}",
                         f"{c['heldout_init']:.5f}", f"{c['heldout_fit']:.5f}"])
    return harness.table(["NFE", "sampler", "best start", "fitted t_min", "held-out MSE start", "held-out MSE fit"],
                         rows)


def check_pipeline(unet, sched, x_T_seed: int, nfe: int, own: torch.Tensor) -> float:
    """The adapter inside an unchanged DDPMPipeline gives the loop's output (clamped as the pipeline clamps)."""
    import diffusers

    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(batch_size=own.shape[0], generator=torch.Generator().manual_seed(x_T_seed), num_inference_steps=nfe,
               output_type="pt").images
    return float((torch.as_tensor(img) - (own / 2 + 0.5).clamp(0, 1)).abs().max())


def evaluate(model, folder: Path, fits: dict, args) -> tuple[list[dict], dict]:
    import diffusers

    from scorelab.interop import ScorelabScheduler
    from scorelab.samplers import SAMPLERS
    from scorelab.samplers.budget import grid_for_nfe
    from scorelab.samplers.grid_opt import ode_reference

    unet, p = model.net.unet, model.process
    cfg = diffusers.DDPMScheduler.load_config(folder / "scheduler")
    rows, floors = [], {}
    for seed in [harness.DEV_SEED] + harness.heldout_seeds(1, args.seeds):
        x_T = torch.randn(args.n_fid, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x_p = x_T[:args.n_path]
            ode = torch.cat([ode_reference(model, x_T[i:i + 500], 1.0, p.t_min, True, method="unipc",
                                           steps=args.ref_steps) for i in range(0, args.n_fid, 500)])
            ref = ode[:args.n_path]
            half = ode_reference(model, x_p, 1.0, p.t_min, True, method="unipc", steps=args.ref_steps // 2)
        floors[seed] = float((half - ref).reshape(args.n_path, -1).pow(2).mean(1).mean().sqrt())
        ode_row = metrics(ode, ref, args.n_path)  # what a solver exactly on the model's ODE scores (any NFE)
        for nfe in args.nfes:
            rows.append({"config": REFERENCE.format(args.ref_steps), "nfe": nfe, "seed": seed, **ode_row})
            for name, (cls, over) in diffusers_configs().items():
                sched = getattr(diffusers, cls).from_config({**cfg, **over})
                rows.append({"config": name, "nfe": nfe, "seed": seed, **metrics(run_scheduler(sched, unet, x_T, nfe),
                                                                                 ref, args.n_path)})
            for s in ("unipc", "dpm_solver_pp_2m"):
                ts, _, opts = grid_for_nfe(s, p, nfe, return_opts=True, final_zero=True)
                with torch.no_grad():
                    x = torch.cat([SAMPLERS[s].fn(model, x_T[i:i + 500], ts.float(), **opts)
                                   for i in range(0, args.n_fid, 500)])
                rows.append({"config": f"scorelab {s} (default grid)", "nfe": nfe, "seed": seed,
                             **metrics(x, ref, args.n_path)})
            sched = ScorelabScheduler(p, fits[nfe]["sampler"], grid=fits[nfe]["ts"])
            x = run_scheduler(sched, unet, x_T, nfe)
            row = {"config": FITTED, "nfe": nfe, "seed": seed, **metrics(x, ref, args.n_path)}
            if seed == 1:  # the same adapter inside an unchanged DDPMPipeline (its own x_T draw of 8 images)
                x8 = run_scheduler(sched, unet, torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(seed)),
                                   nfe)
                row["pipeline_max_abs_diff"] = check_pipeline(unet, sched, seed, nfe, x8)
            rows.append(row)
        print(f"seed {seed} done ({time.process_time():.0f} CPU s)")
    return rows, floors


FITTED = "scorelab fitted grid + solver, inside diffusers (ScorelabScheduler)"
REFERENCE = "the model's own ODE solution (UniPC-3, {} steps; the same in every column)"


def summarize(rows: list[dict], args) -> tuple[str, dict]:
    held = harness.heldout_seeds(1, args.seeds)
    by = {}
    for r in rows:
        by.setdefault((r["config"], r["nfe"]), {})[r["seed"]] = r
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines, summary = [], {}
    for metric, spec in (("fid_digits", ".3f"), ("pathwise", ".4f")):
        lines += [f"\n### {'FID-digits' if metric == 'fid_digits' else 'pathwise error to the ODE solution'} "
                  f"(held-out seeds {held[0]}..{held[-1]}, mean ± std)\n"]
        lines += harness.table(["config"] + [f"NFE {n}" for n in args.nfes],
                               [[c] + [harness.fmt_mean_std([by[(c, n)][s][metric] for s in held], spec)
                                       for n in args.nfes] for c in configs])
        lines += ["", f"Paired: best diffusers config (chosen on dev seed 0) minus the fitted grid inside diffusers "
                      f"({metric}; > 0: scorelab's exported grid is better)", ""]
        prow = []
        for n in args.nfes:
            dconf = [c for c in configs if c.startswith("diffusers")]
            best = min(dconf, key=lambda c: by[(c, n)][harness.DEV_SEED][metric])
            pd = harness.paired(harness.seed_differences({s: by[(best, n)][s] for s in held},
                                                         {s: by[(FITTED, n)][s] for s in held}, metric))
            summary[f"{metric}_nfe{n}"] = {"best_diffusers": best, **pd}
            prow.append([n, best, *harness.paired_cells(pd, spec).split(" | ")])
        lines += harness.table(["NFE", "best diffusers (dev seed)", "diff ± std", "p (one-sided)", "lower95",
                                "seeds won"], prow)
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--n-fid", type=int, default=1000)
    ap.add_argument("--n-path", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fit-evals", type=int, default=120)
    ap.add_argument("--fit-samples", type=int, default=128)
    ap.add_argument("--ref-steps", type=int, default=200)
    ap.add_argument("--nfes", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--fit-samplers", nargs="+", default=list(FIT_SAMPLERS),
                    help="samplers fitted (from ADAPTER_SAMPLERS); the best on the fit's held-out x_T runs")
    ap.add_argument("--fit-inits", nargs="+", default=list(FIT_INITS),
                    help="starting grids (make_grid names); each fit starts from the best on its own x_T")
    ap.add_argument("--unet", default=None,
                    help="reuse a diffusers folder written by train_to_folder instead of training (iteration only)")
    ap.add_argument("--name", default=NAME, help="results file name")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from scorelab.interop import from_diffusers

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits_unet"
        if args.unet:  # a folder an earlier run's train_to_folder wrote (for iterating; headline runs train)
            folder, train_info = Path(args.unet), {"train_steps": f"(reused folder {args.unet})", "train_cpu_s": 0.0}
        else:
            train_info = train_to_folder(args, folder)
        print(f"trained: {train_info}")
        model = from_diffusers(folder)
        train_info["params"] = sum(q.numel() for q in model.net.unet.parameters())
        c0 = time.process_time()
        fits = fit_grids(model, args)
        fit_cpu = time.process_time() - c0
        rows, floors = evaluate(model, folder, fits, args)
    body, summary = summarize(rows, args)
    prov = harness.provenance()
    diffs = [r["pipeline_max_abs_diff"] for r in rows if "pipeline_max_abs_diff" in r]
    md = ["# Bring your own model: a diffusers UNet trained by scorelab on digits, sampled by diffusers and by "
          "scorelab's fitted grid inside diffusers", "",
          f"UNet2DModel 8x8, {train_info['params']} parameters, {train_info['train_steps']} scorelab training steps "
          f"(batch 128; {train_info['train_cpu_s']:.0f} CPU s); {args.n_fid} samples per config and seed for "
          f"FID-digits (vs the 1797 digits), pathwise error on the first {args.n_path}; reference ODE solution: "
          f"UniPC-3 on {args.ref_steps} log-SNR steps (floor = gap to {args.ref_steps // 2} steps: "
          f"{max(floors.values()):.2e} RMS); grids fitted (last time free, teacher: the full ODE solution above) with "
          f"{args.fit_evals} objective evaluations on {args.fit_samples} x_T of their own for each of "
          f"{', '.join(args.fit_samplers)}, each from the best of the starts {', '.join(args.fit_inits)}; the sampler "
          f"with the lowest error on the fit's own held-out {args.fit_samples} x_T runs inside diffusers "
          f"({fit_cpu:.0f} CPU s for all fits); the fitted grid inside an unchanged DDPMPipeline equals the loop to "
          f"{max(diffs):.1e} (max abs, clamped images).", "", "### Fits (held-out: the fit's own x_T, per-coordinate "
          "MSE to the ODE solution)", "", *fit_table(fits), body, "",
          f"Wall time {prov['wall_time_s']:.0f} s, CPU time {prov['cpu_time_s']:.0f} s (one thread).",
          "Anchor: diffusers' own schedulers, run side by side on the same UNet and x_T."]
    fitted = {n: {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in f.items()} for n, f in
              fits.items()}
    harness.write_results(args.name, {"config": vars(args), "train": train_info, "fits": fitted, "floors": floors,
                                 "rows": rows, "summary": summary}, "\n".join(md))


if __name__ == "__main__":
    main()
