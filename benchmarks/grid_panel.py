r"""Grid panel: every scorelab sampler x every grid rule on a panel of exact Gaussian-mixture oracles; writes the
default-grid table the library reads (``src/scorelab/samplers/defaults_table.py``) and ``results/grid_panel.md/json``.

    python benchmarks/grid_panel.py [--n 1000] [--nfes 5,10,20] [--oracles all] [--write-table]
    python benchmarks/grid_panel.py --from-json benchmarks/results/grid_panel.json --write-table
        (no sweep: re-derives the choices, the table and the results files from a finished sweep's MMD^2 values; the
        sweep's provenance is kept as ``sweep_provenance``)

Protocol
--------
=============  ====================================================================================================
panel          ``PANEL``: 8 exact oracles (``ExactMixture`` of ``benchmarks/samplers.py``: eps and x0 exact at every
               time) on 4 processes (Discrete linear and cosine betas, N = 1000; continuous VP; EDM), d = 2..64,
               2-9 modes, widths 0.05-0.7
rules          a grid rule = (grid, final_zero): every grid of ``core.schedules.GRIDS`` the issue names (uniform_t,
               uniform_log_snr, karras rho = 7, quadratic, li, ddpm_linspace, ddpm_trailing, ddpm_leading) x {end at
               t_min, end with a step to t = 0}, but ddpm_linspace / ddpm_trailing / li only with the step to 0
               (``RULES``: 13); the budget spends the NFE (``samplers.budget.plan``)
samplers       every registered sampler with a fixed evaluation count and no required input (``SamplerInfo.needs``),
               default options only; a (sampler, NFE) whose budget is too small is recorded as failed
seed           the dev seed 0 only (x_T and sampler noise); ``benchmarks/sampler_defaults.py`` judges on held-out
               seeds 1.. (never seen here)
metric         unbiased MMD^2 to the exact law (``metrics.mmd2_to_mixture``, 4 bandwidths x ``--n-freq`` fixed
               frequencies; no floor); non-finite samples, diverged runs (spread > ``DIVERGED`` x the law's) or failures
               rank last
choice         per process family (``samplers.defaults.family``), sampler and panel NFE: on each member of the
               family divide every rule's MMD^2 by the best rule's (both floored at ``MMD_FLOOR``; failures count
               ``FAILED_RATIO``), take the rule of least geometric-mean ratio (magnitude-aware: a rule that
               collapses on one member is not saved by ranking first on the others); NFE buckets: a budget uses the
               panel NFE nearest in log scale (``samplers.defaults.nfe_bucket``)
auto           per process family (and all) and panel NFE: the same ratio over the samplers (each
               on its chosen rule), least geometric-mean ratio wins (``samplers.defaults.recommend``); samplers
               within ``TIE`` of it once every value is floored at the member's noise level (``noise_floor``) are
               tied, and a deterministic one is preferred among them (``choose_auto``)
=============  ====================================================================================================
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import pprint
import time
from pathlib import Path

import numpy as np
import torch
from harness import table, write_results, write_text_atomic
from samplers import ExactMixture

from scorelab.core.analytic import GaussianMixture, grid_mixture, random_mixture, ring_mixture
from scorelab.core.processes import EDM, VP, Discrete
from scorelab.evaluation import metrics
from scorelab.samplers import SAMPLERS
from scorelab.samplers.budget import grid_for_nfe, sample

ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = ROOT / "src" / "scorelab" / "samplers" / "defaults_table.py"
DOCS_PATH = ROOT / "docs" / "guide" / "choosing.md"
DOCS_MARKS = ("<!-- grid-panel-table:start -->", "<!-- grid-panel-table:end -->")
GRIDS = ("uniform_t", "uniform_log_snr", "karras", "quadratic", "li", "ddpm_linspace", "ddpm_trailing",
         "ddpm_leading")
#: every grid with and without a final step to t = 0, except ddpm_linspace / ddpm_trailing / li without it: they end
#: at the last DDPM index of the spacing (t ~ 1/(n+1)) or at state 1 of Li's (n+1)-state chain (VP: t = 0.027 for
#: n = 9, noise std 0.09 left in the sample; EDM: sigma = 0.1), not at t_min: an unfinished run, which a sample
#: metric with a bandwidth wider than that noise cannot tell from a finished one (diffusers always adds that step)
UNFINISHED = ("ddpm_linspace", "ddpm_trailing", "li")
RULES = tuple((g, fz) for g in GRIDS for fz in (False, True) if fz or g not in UNFINISHED)


def _two_modes(d: int, sep: float, var: float, seed: int) -> GaussianMixture:
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = sep * u / u.norm()
    return GaussianMixture(torch.tensor([0.6, 0.4]), torch.stack([u, -u]), var)


def _separated(k: int, d: int, scale: float, var: float, seed: int) -> GaussianMixture:
    means = scale * torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = torch.linspace(1.0, 0.25, k, dtype=torch.float64)
    return GaussianMixture(w, means, var)


#: name -> (process family, process factory, mixture factory)
PANEL = {
    "disc_lin_ring2d": ("discrete", lambda: Discrete.from_schedule("linear", 1000), lambda: ring_mixture(8, 2.0, 0.1)),
    "disc_lin_sep8d": ("discrete", lambda: Discrete.from_schedule("linear", 1000),
                       lambda: _separated(4, 8, 1.0, 0.1, 3)),
    "disc_cos_aniso16d": ("discrete_cosine", lambda: Discrete.from_schedule("cosine", 1000),
                          lambda: random_mixture(8, 16, generator=torch.Generator().manual_seed(7))),
    "disc_cos_wide64d": ("discrete_cosine", lambda: Discrete.from_schedule("cosine", 1000),
                         lambda: _two_modes(64, 2.0, 0.5, 5)),
    "vp_grid2d": ("vp", VP, lambda: grid_mixture(3, 2.0, 0.05)),
    "vp_aniso32d": ("vp", VP, lambda: random_mixture(6, 32, generator=torch.Generator().manual_seed(11))),
    "edm_narrow8d": ("edm", EDM, lambda: _separated(4, 8, 0.7, 0.05**2, 17)),
    "edm_aniso64d": ("edm", EDM, lambda: random_mixture(4, 64, generator=torch.Generator().manual_seed(13), scale=1.0)),
}


#: trained members (``panel_nets``): a network trained on draws of the named oracle's mixture, scored against that
#: mixture's exact law like the oracle itself
NETS = {"vp_grid2d_net": "vp_grid2d", "disc_lin_sep8d_net": "disc_lin_sep8d", "edm_aniso64d_net": "edm_aniso64d"}
PANEL.update({k: PANEL[v] for k, v in NETS.items()})


def oracle(name: str):
    """(family, process, mixture, model) of a panel member: the exact model of an oracle, or the trained network
    of a ``NETS`` member (``panel_nets.trained_model``)."""
    fam, proc, mix = PANEL[name]
    p, gm = proc(), mix()
    if name in NETS:
        from panel_nets import trained_model

        return fam, p, gm, trained_model(name, gm, p)
    return fam, p, gm, ExactMixture(gm, p)


def swept_samplers() -> list[str]:
    """Registered samplers with a fixed evaluation count, at most 3 per step, and nothing required (``needs``)."""
    return [s for s, i in SAMPLERS.items() if not i.adaptive and not i.needs and i.evals_per_step <= 3]


#: a run whose samples spread more than this many times the exact law's (root-mean-square distance to the mean)
#: has diverged and counts as failed: MMD^2 saturates (a kernel distance is bounded), so a sample scattered over
#: hundreds of units would otherwise score within ~2x of a working run and could be chosen (it was: PC at NFE 5 on
#: the cosine chain, held-out sliced W2 161)
DIVERGED = 10.0


def rms_spread(x: torch.Tensor) -> float:
    """Root-mean-square distance of the rows of ``x`` ``[n, d]`` to their mean."""
    return float((x - x.mean(0)).pow(2).sum(1).mean().sqrt())


class MMD:
    """Unbiased MMD^2 to the exact mixture on fixed frequencies (one draw per oracle); inf for a run with non-finite
    samples or one that diverged (``DIVERGED``)."""

    def __init__(self, gm: GaussianMixture, n_freq: int):
        self.gm = gm
        self.omega, _ = metrics.mixture_frequencies(gm, n_freq)
        self.spread = rms_spread(gm.sample(20_000, generator=torch.Generator().manual_seed(0)).to(torch.float64))

    def __call__(self, x: torch.Tensor) -> float:
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        if not torch.all(torch.isfinite(x)) or rms_spread(x) > DIVERGED * self.spread:
            return math.inf
        return metrics.mmd2_to_mixture(x.numpy(), self.gm, self.omega)


def run_one(model, sampler: str, nfe: int, rule: tuple[str, bool], n: int, d: int, seed: int):
    """Samples ``[n, d]`` of ``sampler`` on ``rule`` under ``nfe`` (float32, x_T and noise from ``seed``), or None
    when the budget does not fit the sampler / grid."""
    try:
        x, info = sample(model, sampler, nfe, n, shape=(d,), grid=rule[0], final_zero=rule[1], seed=seed)
    except ValueError:
        return None
    if info["nfe_measured_per_batch"] > nfe:
        raise RuntimeError(f"{sampler} on {rule} spent {info['nfe_measured_per_batch']} > {nfe}")
    return x


#: MMD^2 below this counts as 0 (the unbiased estimate's noise at n = 1,000; ``sampler_defaults`` uses the same)
MMD_FLOOR = 1e-5
#: the ratio a failed or non-finite run counts as (never chosen while any rule runs)
FAILED_RATIO = 1e6


def ratios(values: list[float], floor: float = MMD_FLOOR) -> np.ndarray:
    """Each value over the best of ``values`` (both floored at ``floor``): 1 = the best rule on this member;
    NaN (budget did not fit) and inf (diverged) count as ``FAILED_RATIO``."""
    v = np.asarray([max(x, floor) if np.isfinite(x) else np.nan for x in values], dtype=float)
    r = v / np.nanmin(v)
    return np.where(np.isfinite(r), np.minimum(r, FAILED_RATIO), FAILED_RATIO)


def geo_ratio(per_oracle: list[np.ndarray]) -> np.ndarray:
    """Geometric mean over members of per-member ratio-to-best vectors: the choice minimises the average log-factor
    by which it trails each member's best, so one catastrophic member weighs what it costs (a geometric-mean rank
    would count a 10x failure like a 10% one)."""
    return np.exp(np.mean(np.log(np.stack(per_oracle)), 0))


def sweep(names: list[str], samplers: list[str], nfes: list[int], n: int, n_freq: int) -> dict:
    """MMD^2 of every (oracle, NFE, sampler, rule) on the dev seed 0 -> {oracle: {nfe: {sampler: [per rule]}}}."""
    out = {}
    for name in names:
        _, p, gm, model = oracle(name)
        mmd, t0 = MMD(gm, n_freq), time.perf_counter()
        out[name] = {}
        for nfe in nfes:
            out[name][nfe] = {}
            for s in samplers:
                vals = []
                for rule in RULES:
                    x = run_one(model, s, nfe, rule, n, gm.d, 0)
                    vals.append(math.nan if x is None else mmd(x))
                out[name][nfe][s] = vals
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def families(res: dict) -> list[str]:
    """The process families of the swept oracles, then "all"."""
    return sorted({PANEL[o][0] for o in res}) + ["all"]


#: rules whose geometric-mean ratio over a family is within this factor of the family's best count as tied; the tie
#: goes to the rule best over the family's kin (``kin``: both Discrete schedules), since 2-3 members on one dev seed
#: cannot tell them apart (dpm_solver_3 at NFE 10 on the linear chain: karras, quadratic and li+0 within 5% on its 3
#: members, karras 10x worse than quadratic on a 2-D oracle outside the panel)
TIE = 1.1


def kin(fam: str) -> str:
    """The kin of a family: the family with its variant dropped ("discrete_cosine" -> "discrete")."""
    return fam.split("_")[0]


def choose_rules(res: dict, samplers: list[str], nfes: list[int]) -> dict:
    """{family: {sampler: {nfe: (rule, geometric-mean ratio)}}}: per process family (and "all"), the rule of least
    geometric-mean ratio to each member's best over that family's members (a grid is defined in process time, so the
    best rule for EDM's sigma-time is not the best for a DDPM chain), near-ties (``TIE``) broken over the kin."""
    out = {}
    for fam in families(res):
        own = {o: v for o, v in res.items() if fam == "all" or PANEL[o][0] == fam}
        kin_res = {o: v for o, v in res.items() if kin(PANEL[o][0]) == kin(fam)} if fam != "all" else None
        out[fam] = _choose_rules(own, samplers, nfes, kin_res)
    return out


def _choose_rules(res: dict, samplers: list[str], nfes: list[int], kin_res: dict | None = None) -> dict:
    out = {}
    for s in samplers:
        out[s] = {}
        for nfe in nfes:
            per = [ratios(res[o][nfe][s]) for o in res if any(np.isfinite(res[o][nfe][s]))]
            if not per:
                continue
            gr = geo_ratio(per)
            tied = np.flatnonzero(gr <= TIE * gr.min())
            best = int(np.argmin(gr))
            if kin_res is not None and len(tied) > 1:
                kg = geo_ratio([ratios(kin_res[o][nfe][s]) for o in kin_res if any(np.isfinite(kin_res[o][nfe][s]))])
                best = int(tied[np.argmin(kg[tied])])
            out[s][nfe] = (RULES[best], float(gr[best]))
    return out


#: exact-law draws of the dev size whose MMD^2 spread is a member's noise level (``noise_floor``)
NOISE_DRAWS = 20


def noise_floor(name: str, n: int, n_freq: int) -> float:
    """Standard deviation of the unbiased MMD^2 of ``n`` exact draws of member ``name``'s law (``NOISE_DRAWS`` draws,
    seeds 100..): the dev estimate's own noise.  Measured at n = 1,000: 2.6e-5 (64-D cosine) to 3.6e-4 (8-D EDM),
    2.6-36x ``MMD_FLOOR``; the best rule of 65 of 209 (member, sampler) pairs lies below it at NFE 20, 107 at NFE 50."""
    gm = PANEL[name][2]()
    mmd = MMD(gm, n_freq)
    v = [mmd(gm.sample(n, generator=torch.Generator().manual_seed(100 + s)).to(torch.float64))
         for s in range(NOISE_DRAWS)]
    return float(np.std(v))


@functools.cache
def draws_noise(sampler: str) -> bool:
    """Whether ``sampler`` at its default options draws noise (DDIM at eta = 0 and EDM without churn do not, although
    their options can make them stochastic): one x_T, two generators, NFE 20 on a 2-D ring under VP."""
    p, gm = VP(), ring_mixture(4, 1.0, 0.1)
    ts, _, opts = grid_for_nfe(sampler, p, 20, return_opts=True)
    x_T = p.prior_sample((8, 2), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    run = [SAMPLERS[sampler].fn(ExactMixture(gm, p), x_T, ts, generator=torch.Generator().manual_seed(k), **opts)
           for k in (1, 2)]
    return not torch.equal(*run)


def choose_auto(res: dict, rules: dict, samplers: list[str], nfes: list[int], floors: dict) -> dict:
    """{family: {nfe: (sampler, geometric-mean ratio)}}: samplers on their chosen rules, compared per member.

    Samplers whose geometric-mean ratio with every MMD^2 floored at the member's noise level (``floors``, from
    ``noise_floor``) is within ``TIE`` of the least are tied: the dev seed cannot order them.  Among tied samplers a
    deterministic one is preferred (its dev value shares x_T with the others; a stochastic sampler's also carries its
    own noise draw, so the least of many such values is the luckiest, not the best: ``euler_maruyama`` chosen at NFE
    20 on the DDPM chain was 6x the deterministic best on the held-out seeds), then the least ratio at ``MMD_FLOOR``.
    The ratio reported is the latter."""
    out = {}
    for fam in families(res):
        out[fam], fr = {}, rules[fam]
        names = [o for o in res if fam == "all" or PANEL[o][0] == fam]
        for nfe in nfes:
            cand = [s for s in samplers if nfe in fr[s]]
            vals = {o: [res[o][nfe][s][RULES.index(fr[s][nfe][0])] for s in cand] for o in names}
            fine = geo_ratio([ratios(vals[o]) for o in names])
            coarse = geo_ratio([ratios(vals[o], floors[o]) for o in names])
            tied = [int(i) for i in np.flatnonzero(coarse <= TIE * coarse.min())]
            pool = [i for i in tied if not draws_noise(cand[i])] or tied
            best = min(pool, key=lambda i: fine[i])
            out[fam][nfe] = (cand[best], float(fine[best]))
    return out


def table_source(rules: dict, auto: dict, meta: dict) -> str:
    """The generated module ``samplers/defaults_table.py``."""
    grid = {fam: {s: {nfe: {"grid": r[0][0], "final_zero": r[0][1], "geo_ratio": round(r[1], 3)}
                      for nfe, r in v.items()} for s, v in fr.items() if v} for fam, fr in rules.items()}
    au = {f: {nfe: {"sampler": v[0], "geo_ratio": round(v[1], 3)} for nfe, v in d.items()} for f, d in auto.items()}
    fmt = lambda obj: pprint.pformat(obj, width=116, sort_dicts=False)  # noqa: E731
    return ('"""Default grid rule per process family, sampler and panel NFE, and the ``auto`` sampler per family:\n'
            'GENERATED by ``python benchmarks/grid_panel.py --write-table`` (do not edit by hand; see\n'
            '``samplers/defaults.py``).\n\n'
            f'Panel: {", ".join(meta["oracles"][:4])},\n{", ".join(meta["oracles"][4:])};\n'
            f'n = {meta["n"]} samples per run, dev seed 0, metric: unbiased MMD^2 to the exact law; choice: least\n'
            'geometric-mean ratio to the best rule of each member of the panel."""\n\n'
            f"PANEL_NFES = {tuple(meta['nfes'])}\n\n"
            f"GRID_RULES = {fmt(grid)}\n\nAUTO = {fmt(au)}\n")


def markdown(rules: dict, auto: dict, meta: dict) -> str:
    nfes = meta["nfes"]
    lines = [f"# Grid panel: default grid rule per sampler (dev seed 0, n = {meta['n']}, MMD^2 to the exact law)", "",
             f"Oracles: {', '.join(meta['oracles'])}.  Cell: grid (+0: final step to t = 0), geometric-mean ratio "
             f"to each member's best of {len(RULES)} rules.  Sweep wall {meta['wall_s']:.0f} s, "
             f"CPU {meta['cpu_s']:.0f} s"
             + (f" (`{meta['sweep_command']}`; the choices re-derived from its values)." if "sweep_command" in meta
                else "."), ""]
    for f, fr in rules.items():
        rows = [[s] + [(f"{v[nfe][0][0]}{'+0' if v[nfe][0][1] else ''} ({v[nfe][1]:.1f})" if nfe in v else "-")
                       for nfe in nfes] for s, v in fr.items()]
        names = [o for o in meta["oracles"] if f == "all" or PANEL[o][0] == f]
        lines += [f"## family {f} ({', '.join(names)})", ""]
        lines += table(["sampler"] + [f"NFE {k}" for k in nfes], rows) + [""]
    lines += ["## auto: best sampler (on its rule) per process family", ""]
    if "noise_floor" in meta:
        fl = ", ".join(f"{o} {v:.1e}" for o, v in meta["noise_floor"].items())
        lines += [f"Samplers within {TIE}x of the least geometric-mean ratio once every MMD^2 is floored at its "
                  f"member's noise level (the spread of {NOISE_DRAWS} exact-law draws of n = {meta['n']}: {fl}) are "
                  "tied; one that draws no noise is preferred among them (`choose_auto`).  Cell: sampler (its ratio "
                  f"at the {MMD_FLOOR:g} floor).", ""]
    lines += table(["family"] + [f"NFE {k}" for k in nfes],
                   [[f] + [f"{d[k][0]} ({d[k][1]:.1f})" for k in nfes] for f, d in auto.items()])
    return "\n".join(lines)


def write_docs_table(md: str) -> None:
    """Replace the generated table between ``DOCS_MARKS`` in docs/guide/choosing.md (no title line)."""
    text = DOCS_PATH.read_text()
    i, j = text.index(DOCS_MARKS[0]) + len(DOCS_MARKS[0]), text.index(DOCS_MARKS[1])
    body = "\n".join(md.splitlines()[2:]).replace("## ", "### ")
    write_text_atomic(DOCS_PATH, text[:i] + "\n" + body + "\n" + text[j:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-freq", type=int, default=256, help="frequencies per bandwidth of the MMD")
    ap.add_argument("--nfes", default="5,10,20")
    ap.add_argument("--oracles", default="all")
    ap.add_argument("--samplers", default="all")
    ap.add_argument("--write-table", action="store_true", help="write src/scorelab/samplers/defaults_table.py")
    ap.add_argument("--from-json", help="no sweep: derive the choices from this grid_panel.json's MMD^2 values")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    wall0, cpu0 = time.time(), time.process_time()
    names = list(PANEL) if args.oracles == "all" else args.oracles.split(",")
    samplers = swept_samplers() if args.samplers == "all" else args.samplers.split(",")
    nfes = [int(v) for v in args.nfes.split(",")]
    if args.from_json:  # re-derive the choices (and rewrite the table) from a finished sweep's MMD^2 values
        old = json.loads(Path(args.from_json).read_text())
        names, nfes, args.n = old["config"]["oracles"], old["config"]["nfes"], old["config"]["n"]
        pos = [[tuple(r) for r in old["config"]["rules"]].index(r) for r in RULES]  # the sweep's rules -> RULES
        res = {o: {int(k): {s: [v[j] for j in pos] for s, v in d.items()} for k, d in by.items()}
               for o, by in old["mmd2"].items()}
        samplers = [s for s in samplers if s in res[names[0]][nfes[0]]]
    else:
        res = sweep(names, samplers, nfes, args.n, args.n_freq)
    floors = {o: noise_floor(o, args.n, args.n_freq) for o in names}
    rules = choose_rules(res, samplers, nfes)
    auto = choose_auto(res, rules, samplers, nfes, floors)
    meta = {"oracles": names, "n": args.n, "nfes": nfes, "wall_s": time.time() - wall0,
            "cpu_s": time.process_time() - cpu0, "rules": [list(r) for r in RULES], "noise_floor": floors}
    if args.from_json:  # the sweep's own cost and command, not this re-derivation's
        meta.update({k: old["config"][k] for k in ("wall_s", "cpu_s")})
        prov = old.get("sweep_provenance", old.get("provenance", {}))
        meta["sweep_command"] = f"python benchmarks/{prov.get('command', '?')}"
    if args.write_table:
        write_text_atomic(TABLE_PATH, table_source(rules, auto, meta))
        write_docs_table(markdown(rules, auto, meta))
        print(f"wrote {TABLE_PATH} and the table of {DOCS_PATH}")
    payload = {"config": meta, "mmd2": {o: {str(k): v for k, v in d.items()} for o, d in res.items()},
               "rules": {f: {s: {str(k): [list(r[0]), r[1]] for k, r in v.items()} for s, v in fr.items()}
                         for f, fr in rules.items()},
               "auto": {f: {str(k): list(v) for k, v in d.items()} for f, d in auto.items()}}
    if args.from_json:  # keep the sweep's own command and provenance next to this re-derivation's
        payload["sweep_provenance"] = old.get("sweep_provenance", old.get("provenance"))
    write_results("grid_panel", payload, markdown(rules, auto, meta))


if __name__ == "__main__":
    main()
