"""The ``scorelab`` command. Configuration lives here (YAML -> frozen dataclasses), not in the library.

Bad input (unknown names, wrong shapes, missing files, invalid numbers) exits with status 2 and a one-line message.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, Sequence

from ..io.loading import load_any_model, model_event_shape, oracle_mixture
from ..samplers.budget import run_sampler

EXAMPLES = """\
examples:
  scorelab demo --out runs/demo
  scorelab datasets
  scorelab samplers
  scorelab train --config configs/swissroll_vp.yaml
  scorelab sample --checkpoint runs/swissroll_vp --sampler dpm_solver_pp_2m --nfe 10 --n 5000
  scorelab sample --model gmm:ring8 --process vp --sampler heun --nfe 20 --grid karras
  scorelab evaluate --samples runs/sample/samples.npy --reference swiss_roll
  scorelab likelihood --model gmm:ring8 --process vp --n 256
  scorelab density --target gmm9 --method dis --loss lv --steps 100
"""


class CLIError(ValueError):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'a,b' stays a string; YAML scalars."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise CLIError(f"option {p!r} must look like key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def config_from_options(cls, options: dict[str, Any], **fixed: Any):
    """Build the frozen dataclass ``cls`` from ``--set key=value`` options (unknown keys are errors)."""
    import dataclasses

    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CLIError(f"unknown option(s) {unknown} for {cls.__name__}; allowed: {sorted(allowed)}")
    vals = {k: (tuple(v) if isinstance(v, list) else v) for k, v in {**options, **fixed}.items()}
    try:
        return cls(**vals)
    except TypeError as e:
        raise CLIError(f"bad option for {cls.__name__}: {e}") from None


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def cmd_datasets(args) -> int:
    from ..data import describe_datasets

    print(describe_datasets())
    return 0


def cmd_samplers(args) -> int:
    from ..samplers import SAMPLERS

    rows = [("name", "order", "evals/step", "stochastic", "options", "reference")]
    for s in SAMPLERS.values():
        rows.append((s.name, f"{s.order:g}", f"{s.evals_per_step:g}", "yes" if s.stochastic else "no",
                     ",".join(s.options) or "-", s.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0


def apply_guidance(model, args):
    """``--guidance discriminator:PATH`` or ``cfg:LABEL`` (classifier-free, class-conditional checkpoints),
    with ``--scale`` and ``--window lo,hi``; guidance wrappers keep the model currency, so any sampler works."""
    spec = getattr(args, "guidance", None)
    if not spec:
        return model
    from ..guidance import ClassifierFreeGuidance, guidance_from_spec, parse_window

    kind, _, value = spec.partition(":")
    if kind == "cfg":
        try:
            label = int(value)
        except ValueError:
            raise CLIError(f"--guidance cfg:LABEL needs an integer class label, got {value!r}") from None
        guided = ClassifierFreeGuidance(model, y=label, scale=args.scale, window=parse_window(args.window))
    elif kind == "discriminator":
        if not os.path.exists(value) and not os.path.exists(value + ".json"):
            raise CLIError(f"discriminator {value!r} does not exist")
        guided = guidance_from_spec(model, spec, args.scale, args.window)
    else:
        raise CLIError(f"unknown guidance {spec!r}; expected discriminator:PATH or cfg:LABEL")
    guided.event_shape = getattr(model, "event_shape", None)
    return guided


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .. import plotting

    model = load_any_model(args)
    shape = model_event_shape(model, args)
    model = apply_guidance(model, args)
    opts = parse_options(args.opt)
    dtype = torch.float64 if hasattr(model, "mixture") else torch.float32
    out = args.out or os.path.join("runs", f"sample_{args.sampler}_nfe{args.nfe}")
    if args.fit_grid and args.grid_file:
        raise CLIError("--fit-grid fits a new grid and --grid-file loads a saved one: give one of them")
    x, info = run_sampler(model, args.sampler, args.nfe, args.n, grid=args.grid, seed=args.seed, options=opts,
                          shape=shape, dtype=dtype, fit_grid=args.fit_grid, grid_file=args.grid_file,
                          fit_out=os.path.join(out, "grid.json"), fit_kw={"reference": args.fit_reference})
    if hasattr(x, "xs"):
        x = x.x0
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "samples.npy"), x.float().cpu().numpy())
    if len(shape) == 1:
        ref = model.mixture.sample(args.n) if hasattr(model, "mixture") else None
        plotting.scatter_panels({f"{args.sampler} (NFE {info['nfe_planned']})": x}, os.path.join(out, "samples.png"),
                                reference=ref)
    elif len(shape) == 3:
        plotting.image_grid(x[:64].clamp(-1, 1), os.path.join(out, "samples.png"))
    if hasattr(model, "mixture"):
        from ..evaluation.metrics import mode_stats, sliced_w2

        ref = model.mixture.sample(min(args.n, 20000), torch.Generator().manual_seed(args.seed + 1))
        info["sliced_w2_to_target"] = sliced_w2(x.reshape(len(x), -1), ref.reshape(len(ref), -1))
        info["mode_tv"] = mode_stats(x.reshape(len(x), -1), model.mixture)["tv"]
    write_json(os.path.join(out, "sample.json"), info)
    print(json.dumps(info, indent=2, default=float))
    print(f"wrote {out}/samples.npy, samples.png, sample.json")
    return 0


def load_samples(path: str):
    import numpy as np
    import torch

    from ..data import load_dataset

    if os.path.exists(path):
        if path.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False)).float()
        x, _ = load_dataset(path)
        return x.float()
    x, _ = load_dataset(path, seed=12345)  # the data set's default size (10,000 for toy sets, all digits)
    return x.float()


def evaluate_against_oracle(x, spec: str) -> dict:
    """Samples against an exact mixture oracle (``--reference gmm:...``): unbiased MMD^2 to the exact law (no
    two-sample floor; overall and per bandwidth), mode-weight TV / coverage / outliers, and sliced W2 to a fresh
    exact sample of the same size (with that size's two-sample floor for scale)."""
    import torch

    from ..evaluation import metrics

    gm = oracle_mixture(spec)
    xf = x.reshape(len(x), -1).double()
    if xf.shape[1] != gm.d or len(xf) < 2:
        raise CLIError(f"the oracle {spec} has d={gm.d}; got {len(xf)} samples with {xf.shape[1]} coordinates "
                       "(need >= 2 samples of d coordinates)")
    mmd = metrics.mmd2_to_mixture_by_bandwidth(xf, gm)
    ms = metrics.mode_stats(xf, gm)
    g = torch.Generator().manual_seed(12345)
    y, y2 = gm.sample(len(xf), g), gm.sample(len(xf), g)
    return {"n_samples": len(xf), "reference": spec, "mmd2_to_exact": mmd["mmd2"],
            "mmd2_to_exact_per_bandwidth": {f"h={h:.4g}": v for h, v in mmd["per_bandwidth"].items()},
            "mode_tv": ms["tv"], "mode_coverage": ms["coverage"], "outlier_fraction": ms["outlier_fraction"],
            "sliced_w2": metrics.sliced_w2(xf, y), "sliced_w2_two_sample_floor": metrics.sliced_w2(y2, y)}


def cmd_evaluate(args) -> int:
    from ..evaluation import metrics

    x = load_samples(args.samples)
    if args.reference.startswith("gmm:"):
        res = evaluate_against_oracle(x, args.reference)
        print(json.dumps(res, indent=2, default=float))
        if args.out:
            write_json(args.out, res)
        return 0
    y = load_samples(args.reference)
    if x.shape[1:] != y.shape[1:]:
        raise CLIError(f"samples have shape {tuple(x.shape[1:])} but the reference has {tuple(y.shape[1:])}")
    xf, yf = x.reshape(len(x), -1), y.reshape(len(y), -1)
    res: dict[str, Any] = {"n_samples": len(x), "n_reference": len(y)}
    res["sliced_w2"] = metrics.sliced_w2(xf, yf)
    res["mmd2_unbiased"] = metrics.mmd2_unbiased(xf[:2000], yf[:2000])
    if xf.shape[1] <= 16:
        res["w2_exact"] = metrics.w2_exact(xf[:2000], yf[:2000])
    if tuple(x.shape[1:]) == (1, 8, 8):
        res["fid_digits"] = metrics.fid_digits(x, y)
        res.update({f"digits_{k}": v for k, v in metrics.precision_recall(
            metrics.digits_features(y), metrics.digits_features(x)).items()})
    print(json.dumps(res, indent=2, default=float))
    if args.out:
        write_json(args.out, res)
    return 0


def cmd_train(args) -> int:
    from ..training.experiment import load_experiment, run_training

    exp = load_experiment(args.config, overrides=parse_options(args.set))
    run_dir = args.out or exp.run_dir
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: data-parallel, rank 0 writes and reports
        from ..training.loop import init_distributed, shutdown_distributed

        rank, _ = init_distributed()
        result = run_training(exp, run_dir, resume=args.resume, progress=not args.quiet)
        shutdown_distributed()  # on an error torchrun stops the other ranks
        if rank != 0:
            return 0
    else:
        result = run_training(exp, run_dir, resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k != "model"}, indent=2, default=float))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def cmd_likelihood(args) -> int:
    import torch

    from ..evaluation.likelihood import ode_log_likelihood

    model = load_any_model(args)
    shape = model_event_shape(model, args)
    if args.samples:
        x = load_samples(args.samples)
    elif hasattr(model, "mixture"):
        x = model.mixture.sample(args.n, torch.Generator().manual_seed(args.seed))
    else:
        raise CLIError("give --samples FILE (data to evaluate) for a checkpoint")
    x = x[: args.n].reshape(-1, *shape).to(torch.float64 if hasattr(model, "mixture") else torch.float32)
    res = ode_log_likelihood(model, x, divergence=args.divergence, rtol=args.rtol, atol=args.atol,
                             generator=torch.Generator().manual_seed(args.seed))
    ll = res.log_likelihood if hasattr(res, "log_likelihood") else res["log_likelihood"]
    out = {"mean_log_likelihood": float(ll.mean()), "std_error": float(ll.std() / len(ll) ** 0.5), "n": len(ll),
           "nats_per_dim": float(-ll.mean() / x[0].numel())}
    if x.ndim >= 3:  # images in [-1, 1] from 8-bit pixels: bits/dim of the 8-bit data (likelihood.bits_per_dim)
        from ..evaluation.likelihood import bits_per_dim

        out["bits_per_dim"] = float(bits_per_dim(ll, x[0].numel(), scale=args.pixel_scale).mean())
        out["note"] = "bits/dim assumes the samples were uniformly dequantized 8-bit pixels mapped to [-1, 1]"
    if args.elbo:
        out.update(_elbos(model, x, args))
    if hasattr(model, "mixture"):
        exact = model.mixture.log_prob(x)
        out["exact_mean_log_likelihood"] = float(exact.mean())
    print(json.dumps(out, indent=2))
    return 0


def _elbos(model, x, args) -> dict:
    """Mean continuous-time ELBO (importance-sampled t) and, on a ``Discrete`` process, the DDPM ELBO (all steps)."""
    import torch

    from ..core.processes import Discrete
    from ..evaluation.likelihood import continuous_elbo, discrete_elbo

    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        c = continuous_elbo(model, x, n_samples=args.elbo_samples, generator=g)
        # Monte-Carlo (t, eps) standard error of the mean over these points (the points themselves held fixed)
        out = {"continuous_elbo": float(c.elbo.mean()),
               "continuous_elbo_mc_std_error": float(c.std_err.pow(2).sum().sqrt() / len(x))}
        if isinstance(model.process, Discrete):
            d = discrete_elbo(model, x, variances=args.variances, generator=g)
            out.update({"discrete_elbo": float(d.elbo.mean()), "discrete_elbo_variances": args.variances})
    return out


def cmd_density(args) -> int:
    from ..densities import DensityConfig, run

    cfg = DensityConfig(target=args.target, method=args.method, loss=args.loss, steps=args.steps,
                        iterations=args.iterations, batch=args.batch, seed=args.seed, dim=args.dim, lr=args.lr,
                        time_limit=args.time_limit, method_kwargs=parse_options(args.opt), hidden=args.hidden,
                        layers=args.layers, mc_pretrain_rounds=args.mc_pretrain)
    name = args.target.replace(":", "_").replace("/", "_")
    out = args.out or os.path.join("runs", f"density_{name}_{args.method}_{args.loss}")
    res = run(cfg, out)
    print(json.dumps(res, indent=2, default=float))
    print(f"wrote {out}/samples.safetensors, samples.png, report.json")
    return 0


def cmd_finetune_sft_pg(args) -> int:
    from ..finetune.sft_pg import SFTPGConfig, finetune_sft_pg

    if not os.path.exists(args.checkpoint):
        raise CLIError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = config_from_options(SFTPGConfig, parse_options(args.set))
    out = args.out or os.path.join("runs", "sft_pg")
    res = finetune_sft_pg(cfg, args.checkpoint, out, resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2, default=float))
    print(f"wrote {out}")
    return 0


def cmd_train_discriminator(args) -> int:
    from ..guidance.discriminator import DiscriminatorConfig, TrainDiscriminatorCLIConfig, train_discriminator_cli

    if not os.path.exists(args.checkpoint):
        raise CLIError(f"checkpoint {args.checkpoint!r} does not exist")
    train_opts = {k[len("train."):]: v for k, v in parse_options(args.set).items() if k.startswith("train.")}
    top_opts = {k: v for k, v in parse_options(args.set).items() if not k.startswith("train.")}
    train_opts.setdefault("objective", args.objective)
    train_opts.setdefault("gamma", args.gamma)
    tcfg = config_from_options(DiscriminatorConfig, train_opts)
    cfg = config_from_options(TrainDiscriminatorCLIConfig, {"data": args.data, **top_opts}, train=tcfg,
                              progress=not args.quiet)
    out = args.out or os.path.join("runs", f"discriminator_{tcfg.objective.replace('+', '_')}")
    res = train_discriminator_cli(cfg, args.checkpoint, out)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=2, default=float))
    print(f"wrote {out}/discriminator.safetensors, discriminator.json, train_discriminator.json")
    return 0


def cmd_reject(args) -> int:
    from ..guidance.rejection import RejectConfig, reject_cli

    for path in (args.checkpoint, args.discriminator):
        if not os.path.exists(path) and not os.path.exists(path + ".json"):
            raise CLIError(f"{path!r} does not exist")
    opts = parse_options(args.set)
    opts.update({k: v for k, v in (("n", args.n), ("method", args.method), ("K", args.K)) if v is not None})
    cfg = config_from_options(RejectConfig, opts)
    out = args.out or os.path.join("runs", "reject")
    res = reject_cli(cfg, args.checkpoint, args.discriminator, out)
    print(json.dumps(res, indent=2, default=float))
    return 0


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scorelab", description="Score-based diffusion models: train, sample, measure, "
                                "refine, and sample unnormalized densities.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help_, examples=""):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=textwrap.dedent(examples) or None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    add("datasets", cmd_datasets, "list the built-in data sets")
    add("samplers", cmd_samplers, "list every sampler with its order, evaluations per step and options")

    sp = add("train", cmd_train, "train a score model from a YAML config",
             "example:\n  scorelab train --config configs/swissroll_vp.yaml --set train.steps=2000\n")
    sp.add_argument("--config", required=True)
    sp.add_argument("--out", help="run directory (default: run_dir from the config)")
    sp.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    sp.add_argument("--set", nargs="*", metavar="SECTION.KEY=VALUE", help="override config entries")
    sp.add_argument("--quiet", action="store_true")

    def model_args(sp):
        sp.add_argument("--checkpoint", help="run directory or checkpoint of a trained model")
        sp.add_argument("--no-ema", action="store_true", help="use raw weights instead of the EMA")
        sp.add_argument("--model", help="exact oracle instead of a checkpoint: gmm:ring8|grid9|grid25|random-K-D-SEED")
        sp.add_argument("--process", default="vp", help="process for --model: vp|subvp|vp_cosine|ve|edm|"
                        "discrete:SCHEDULE:N")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--clip-x0", nargs=2, type=float, metavar=("LO", "HI"),
                        help="project the model's x0 into [LO, HI] (data range, e.g. -1 1 for images)")

    sp = add("sample", cmd_sample, "draw samples with any sampler under an NFE budget",
             "examples:\n  scorelab sample --model gmm:ring8 --sampler dpm_solver_pp_2m --nfe 10\n"
             "  scorelab sample --checkpoint runs/demo/model --sampler ddpm --nfe 100 --opt variance=large\n")
    model_args(sp)
    sp.add_argument("--sampler", required=True)
    sp.add_argument("--nfe", type=positive_int, required=True, help="network-evaluation budget")
    sp.add_argument("--grid", help="uniform_t|uniform_log_snr|karras|quadratic|li (default: the sampler's)")
    sp.add_argument("--fit-grid", action="store_true", help="deterministic samplers: fit the grid's interior points "
                    "to the model's own ODE solution first (starts from --grid; saved as OUT/grid.json)")
    sp.add_argument("--grid-file", help="use a grid saved by --fit-grid (JSON with 'ts') instead of --grid")
    sp.add_argument("--fit-reference", choices=["dopri5", "unipc"], default="dopri5",
                    help="--fit-grid's teacher: adaptive dopri5 (rtol 1e-7) or UniPC-3 on 1000 log-SNR steps")
    sp.add_argument("--n", type=positive_int, default=5000, help="number of samples")
    sp.add_argument("--opt", nargs="*", metavar="KEY=VALUE", help="sampler options, e.g. eta=1.0")
    sp.add_argument("--guidance", help="discriminator:PATH (discriminator guidance) or cfg:LABEL (classifier-free)")
    sp.add_argument("--scale", type=float, default=1.0, help="guidance scale w")
    sp.add_argument("--window", help="guidance time window t_lo,t_hi (default: all times)")
    sp.add_argument("--out")

    sp = add("evaluate", cmd_evaluate, "compare samples with a reference (data set name, file or exact oracle)",
             "examples:\n  scorelab evaluate --samples runs/x/samples.npy --reference swiss_roll\n"
             "  scorelab evaluate --samples runs/x/samples.npy --reference gmm:ring8   # MMD^2 to the exact law\n")
    sp.add_argument("--samples", required=True)
    sp.add_argument("--reference", required=True,
                    help="data set name, .npy file, or gmm:ring8|grid9|grid25|random-K-D-SEED (exact oracle: "
                    "unbiased MMD^2 to its law, mode statistics, sliced W2 with its two-sample floor)")
    sp.add_argument("--out", help="write the metrics JSON here")

    sp = add("likelihood", cmd_likelihood, "probability-flow ODE log-likelihood (nats and bits/dim)")
    model_args(sp)
    sp.add_argument("--samples", help="data to evaluate (.npy or data set)")
    sp.add_argument("--n", type=positive_int, default=256)
    sp.add_argument("--divergence", choices=["exact", "hutchinson"], default="exact")
    sp.add_argument("--pixel-scale", type=float, default=2 / 256,
                    help="width of one pixel bin in model space (2/256 for 8-bit data in [-1, 1])")
    sp.add_argument("--rtol", type=float, default=1e-5)
    sp.add_argument("--atol", type=float, default=1e-5)
    sp.add_argument("--elbo", action="store_true",
                    help="also the continuous-time ELBO and, on a discrete:... process, the DDPM ELBO (nats)")
    sp.add_argument("--elbo-samples", type=positive_int, default=16, help="(t, eps) draws per example of the ELBO")
    sp.add_argument("--variances", choices=["beta", "beta_tilde"], default="beta_tilde",
                    help="reverse variances of the DDPM ELBO")

    sp = add("density", cmd_density, "train a diffusion sampler for an unnormalized density and estimate log Z",
             "examples:\n  scorelab density --target gmm9 --method dis --loss lv --steps 100\n"
             "  scorelab density --target mypkg.mod:log_rho --dim 4 --method pis --loss kl\n")
    sp.add_argument("--target", required=True)
    sp.add_argument("--method", choices=["dis", "pis", "dds"], default="dis")
    sp.add_argument("--loss", choices=["kl", "lv"], default="lv")
    sp.add_argument("--steps", type=positive_int, default=200,
                    help="SDE discretisation steps (at 100 even the optimal control caps GMM-9 ESS near 0.87)")
    sp.add_argument("--iterations", type=positive_int, default=2000)
    sp.add_argument("--batch", type=positive_int, default=512)
    sp.add_argument("--dim", type=positive_int, default=None, help="dimension of a user target")
    sp.add_argument("--lr", type=float, default=5e-3)
    sp.add_argument("--time-limit", type=float, default=None, help="cap on training wall time (s)")
    sp.add_argument("--opt", nargs="*", metavar="KEY=VALUE", help="sampler options, e.g. sigma=3 (PIS/DDS)")
    sp.add_argument("--hidden", type=positive_int, default=64, help="control network width")
    sp.add_argument("--layers", type=positive_int, default=2, help="control network depth")
    sp.add_argument("--mc-pretrain", type=int, default=0, metavar="ROUNDS",
                    help="DIS only: warm start by regressing the control onto Monte-Carlo estimates of the noised "
                         "target's score (pretrain_mc_score), this many rounds, before the loss")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out")

    sp = add("finetune", None, "refine a pretrained model without retraining it")
    fsub = sp.add_subparsers(dest="method", required=True)
    fp = fsub.add_parser("sft-pg", help="shortcut fine-tuning with policy gradient (Fan & Lee 2023, Alg. 1)",
                         description="Fine-tune a few-step sampler of a pretrained model with SFT-PG.",
                         epilog="example:\n  scorelab finetune sft-pg --checkpoint runs/ddpm10 "
                         "--set dataset=swiss_roll "
                         "n_steps=10 epochs=50\n(options: the fields of scorelab.finetune.sft_pg.SFTPGConfig)",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.set_defaults(fn=cmd_finetune_sft_pg)
    fp.add_argument("--checkpoint", required=True, help="pretrained model (checkpoint or run folder)")
    fp.add_argument("--out", help="run folder (default runs/sft_pg)")
    fp.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="SFTPGConfig fields, e.g. lam=1 epochs=100")
    fp.add_argument("--resume", action="store_true")
    fp.add_argument("--quiet", action="store_true")

    sp = add("guidance", None, "train guidance networks (discriminator guidance)")
    gsub = sp.add_subparsers(dest="what", required=True)
    gp = gsub.add_parser("train-discriminator", help="train a time-conditioned discriminator for a pretrained model",
                         description="Discriminator guidance (Kim et al. 2023) trained with J_CE, J_MSE or "
                         "J_MSE + gamma J_CE (the thesis' objective).",
                         epilog="example:\n  scorelab guidance train-discriminator --checkpoint runs/digits_unet "
                         "--data digits --objective mse+ce --gamma 0.1\n  then: scorelab sample --checkpoint "
                         "runs/digits_unet --sampler heun --nfe 35 --guidance discriminator:runs/discriminator_mse_ce/"
                         "discriminator --scale 1", formatter_class=argparse.RawDescriptionHelpFormatter)
    gp.set_defaults(fn=cmd_train_discriminator)
    gp.add_argument("--checkpoint", required=True, help="pretrained model (checkpoint or run folder)")
    gp.add_argument("--data", default="digits", help="real data: data set name or path")
    gp.add_argument("--objective", choices=["ce", "mse", "mse+ce"], default="mse+ce")
    gp.add_argument("--gamma", type=float, default=1.0, help="weight of J_CE in J_MSE + gamma J_CE")
    gp.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="TrainDiscriminatorCLIConfig fields (n_generated=..., sampler=...) or train.FIELD=...")
    gp.add_argument("--out")
    gp.add_argument("--quiet", action="store_true")

    sp = add("reject", cmd_reject, "rejection sampling with a discriminator's density-ratio estimate",
             "example:\n  scorelab reject --checkpoint runs/digits_unet --discriminator runs/disc/discriminator "
             "--method budget --K 2 --n 1000\n")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--discriminator", required=True)
    sp.add_argument("--method", choices=["exact", "drs", "budget"], default=None)
    sp.add_argument("--K", type=float, default=None, help="budget: on average K proposals per accepted sample")
    sp.add_argument("--n", type=positive_int, default=None)
    sp.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="RejectConfig fields (sampler=..., nfe=...)")
    sp.add_argument("--out")

    sp = add("demo", cmd_demo, "the main job on built-in data: train on the swiss roll, sample, report")
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, KeyError, NotADirectoryError, IsADirectoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"scorelab: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scorelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
