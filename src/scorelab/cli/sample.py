"""``scorelab sample``: any sampler under an NFE budget (``samplers.budget.run_sampler``), optionally guided."""
from __future__ import annotations

import argparse
import json
import os

from .common import (
    DTYPES,
    CLIError,
    add_model_args,
    add_verb,
    check_device,
    check_out,
    finite_float,
    loaded_model,
    parse_options,
    positive_int,
    write_json,
    write_run_provenance,
)

EXAMPLES = """\
examples:
  scorelab sample --model gmm:ring8 --sampler dpm_solver_pp_2m --nfe 10
  scorelab sample --checkpoint runs/demo/model --sampler ddpm --nfe 100 --opt variance=large
"""


def add_parser(sub) -> None:
    """Add ``scorelab sample`` to the subcommands ``sub``."""
    sp = add_verb(sub, "sample", run, "draw samples with any sampler under an NFE budget", EXAMPLES)
    add_model_args(sp)
    sp.add_argument("--sampler", required=True, help="a name of `scorelab samplers`, or auto (the best for the NFE)")
    sp.add_argument("--nfe", type=positive_int, required=True, help="network-evaluation budget")
    sp.add_argument("--grid", help="uniform_t|uniform_log_snr|karras|quadratic|li|ddpm_linspace|ddpm_trailing|"
                    "ddpm_leading (default: a grid stored by fit-grid, else the sampler's measured default)")
    sp.add_argument("--fit-grid", action="store_true", help="deterministic samplers: fit the grid's interior points "
                    "to the model's own ODE solution first (starts from --grid; saved as OUT/grid.json)")
    sp.add_argument("--grid-file", help="use a grid saved by --fit-grid (JSON with 'ts') instead of --grid")
    sp.add_argument("--fit-reference", choices=["dopri5", "unipc"], default="dopri5",
                    help="--fit-grid's teacher: adaptive dopri5 (rtol 1e-7) or UniPC-3 on 1000 log-SNR steps")
    sp.add_argument("--n", type=positive_int, default=5000, help="number of samples")
    sp.add_argument("--opt", action="extend", nargs="*", metavar="KEY=VALUE", help="sampler options, e.g. eta=1.0")
    sp.add_argument("--guidance", help="discriminator:PATH (discriminator guidance) or cfg:LABEL (classifier-free)")
    sp.add_argument("--scale", type=finite_float, default=1.0, help="guidance scale w")
    sp.add_argument("--window", help="guidance time window t_lo,t_hi (default: all times)")
    sp.add_argument("--out", help="output folder (new or empty; default runs/sample_SAMPLER_nfeN, numbered if taken)")
    sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    sp.add_argument("--batch-size", type=positive_int, default=None,
                    help="samples per batch (default: about 2^20 numbers per batch; 341 for 3x32x32 images)")
    sp.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="sampling precision (default float64 for exact oracles, float32 for networks)")
    sp.add_argument("--reference", help="data set or file drawn behind a 2-D scatter (default: the oracle's law)")
    sp.add_argument("--allow-nonfinite", action="store_true",
                    help="write samples even when some rows are NaN/inf (otherwise: exit 2, nothing written)")


def run(args: argparse.Namespace) -> int:
    """``scorelab sample`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    import time

    from ..evaluation.reports import sample_oracle_metrics
    from ..guidance import guidance_from_spec
    from ..io.checkpoints import staged_folder, unused_dir
    from ..io.grids import find_stored_grid
    from ..samplers.budget import default_batch_size, run_sampler

    if args.fit_grid and args.grid_file:
        raise CLIError("--fit-grid fits a new grid and --grid-file loads a saved one: give one of them")
    t0, device = time.perf_counter(), check_device(args.device, "--device")
    out = check_out(args.out) if args.out else str(unused_dir(os.path.join("runs", f"sample_{args.sampler}_nfe"
                                                                                   f"{args.nfe}")))
    loaded = loaded_model(args)
    if loaded.oracle is not None and device.type != "cpu":
        raise CLIError(f"--device {args.device}: exact oracles (--model gmm:...) sample on the CPU; drop --device")
    dtype = DTYPES[args.dtype] if args.dtype else loaded.dtype
    model = loaded.model.to(device=device, dtype=dtype)
    model = guidance_from_spec(model, args.guidance, args.scale, args.window) if args.guidance else model
    batch = args.batch_size or default_batch_size(loaded.event_shape)
    ref = reference_points(loaded, args.reference, args.n) if len(loaded.event_shape) == 1 else (None, "")
    stored = None if args.grid or args.grid_file or args.fit_grid else find_stored_grid(loaded, args.sampler, args.nfe)
    if stored:
        print(f"using the grid fit-grid stored for {args.sampler} at NFE {args.nfe}: {stored[0]} (--grid overrides)")
    with staged_folder(out) as stage:
        x, info = run_sampler(model, args.sampler, args.nfe, args.n, grid=args.grid, seed=args.seed,
                              options={**(stored[1] if stored else {}), **parse_options(args.opt)},
                              shape=loaded.event_shape, dtype=dtype, device=device, batch_size=batch,
                              fit_grid=args.fit_grid, grid_file=args.grid_file or (stored and stored[0]),
                              fit_out=str(stage / "grid.json"), fit_kw={"reference": args.fit_reference})
        check_finite(x, info["nonfinite_rows"], args.allow_nonfinite)
        files = write_samples(stage, x, loaded, f"{info['sampler']} (NFE {info['nfe_planned']})", ref)
        if loaded.oracle is not None and not info["nonfinite_rows"]:
            info.update(sample_oracle_metrics(x.cpu(), loaded.oracle, seed=args.seed + 1))
        write_json(str(stage / "sample.json"), info)
        write_run_provenance(args, stage, t0, loaded=loaded, sampler=info["sampler"], grid=info["grid"],
                             grid_file=stored[0] if stored else args.grid_file,
                             nfe_measured=info["nfe_measured_per_batch"], device=str(device))
    print(json.dumps(info, indent=2, default=float))
    print(f"wrote {out}/{', '.join(files + ['sample.json', 'provenance.json'])}")
    return 0


def check_finite(x, bad: int, allow: bool) -> None:
    """Refuse samples with NaN/inf rows (``bad`` of them) unless ``allow`` (``--allow-nonfinite``)."""
    if bad and not allow:
        raise CLIError(f"{bad} of {x.shape[0]} samples have NaN/inf entries (a diverged model or sampler); nothing "
                       "was written; pass --allow-nonfinite to keep them")


def reference_points(loaded, reference: str | None, n: int):
    """(points drawn behind a 2-D scatter, their label): ``--reference``, else the oracle's exact law, else the
    training data named in the run's ``config.yaml`` (skipped with a warning when it cannot be read)."""
    import warnings

    from ..io.loading import load_samples, training_data_name

    if reference:
        return load_samples(reference, loaded.event_shape), reference
    if loaded.oracle is not None:
        return loaded.oracle.sample(min(n, 5000)), "exact law"
    name = training_data_name(loaded.source)
    if name is None:
        return None, "reference"
    try:
        return load_samples(name, loaded.event_shape), f"training data ({name})"
    except (ValueError, OSError) as e:
        warnings.warn(f"no reference in samples.png: the run's data {name!r} cannot be read ({e})", stacklevel=2)
        return None, "reference"


def write_samples(folder, x, loaded, title: str, ref=(None, "reference")) -> list[str]:
    """``samples.npy`` (float32, model space) and a picture: a scatter of 2-D data with the reference behind it
    (``reference_points``), or for images ``samples.npz`` (uint8 [N, H, W, C], ``arr_0``)
    and a near-square grid of the first 64.  Returns the file names written."""
    import numpy as np
    import torch

    from .. import plotting

    x = x.detach().float().cpu()
    np.save(os.path.join(folder, "samples.npy"), x.numpy())
    files = ["samples.npy"]
    if len(loaded.event_shape) == 1:
        plotting.scatter_panels({title: x}, os.path.join(folder, "samples.png"), reference=ref[0], axes_labels=True,
                                reference_label=ref[1])
        files.append("samples.png")
    elif len(loaded.event_shape) == 3:
        u8 = ((x.nan_to_num().clamp(-1, 1) + 1) * 127.5).round().to(dtype=torch.uint8)
        np.savez_compressed(os.path.join(folder, "samples.npz"), arr_0=u8.permute(0, 2, 3, 1).numpy())
        plotting.image_grid(x[:64].nan_to_num().clamp(-1, 1), os.path.join(folder, "samples.png"), title=title)
        files += ["samples.npz", "samples.png"]
    return files
