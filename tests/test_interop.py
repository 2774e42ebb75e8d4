"""Bring your own model (scorelab.interop): diffusers / k-diffusion / EDM imports, equivalence with diffusers' own
schedulers from the same x_T, the scheduler adapter inside unchanged pipelines, clean errors, and every scorelab
method end to end on an imported UNet.  Tiny randomly initialised UNet2DModels, saved to tmp folders (offline)."""
from __future__ import annotations

import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from scorelab.core.analytic import ring_mixture  # noqa: E402
from scorelab.core.processes import EDM  # noqa: E402
from scorelab.core.schedules import make_grid  # noqa: E402
from scorelab.interop import (  # noqa: E402
    ScorelabScheduler,
    from_diffusers,
    from_edm,
    from_k_diffusion,
    grid_to_sigmas,
    grid_to_timesteps,
    is_diffusers_folder,
    timesteps_to_grid,
    to_diffusers,
    use_scheduler,
)
from scorelab.interop.export import ADAPTER_SAMPLERS  # noqa: E402
from scorelab.samplers import SAMPLERS  # noqa: E402
from scorelab.samplers.budget import grid_for_nfe, sample  # noqa: E402

# a finite-SNR chain whose x0 stays O(1) for a random UNet, so clamped pipeline outputs still compare pixels
SOFT = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-3, clip_sample=False)


def tiny_unet(ch: int = 1, size: int = 8, classes: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=size, in_channels=ch, out_channels=ch, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 num_class_embeds=classes).eval()


def save_pipeline(folder, unet, scheduler):
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A DDPM pipeline folder: 1 channel, 8 px, eps prediction, linear betas."""
    return save_pipeline(tmp_path_factory.mktemp("ddpm") / "pipe", tiny_unet(),
                         diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False))


@pytest.fixture(scope="module")
def model(folder):
    return from_diffusers(folder)


def diffusers_loop(sched, unet, x_T, steps, **set_kw):
    sched.set_timesteps(steps, **set_kw) if steps is not None else sched.set_timesteps(**set_kw)
    x = x_T.clone() * getattr(sched, "init_noise_sigma", 1.0)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def rel(a, b):
    return float((a - b).norm() / b.norm())


# -- equivalence with diffusers' own schedulers ------------------------------------------------------------------------
@pytest.mark.parametrize("ch,size,schedule", [(1, 8, "linear"), (3, 16, "scaled_linear"), (1, 8, "squaredcos_cap_v2")])
def test_ddim_equals_diffusers_ddim(tmp_path, ch, size, schedule):
    """DDIM (eta = 0) on diffusers' own timesteps equals DDIMScheduler to float tolerance, for 1 and 3 channels and
    each beta schedule."""
    unet = tiny_unet(ch, size)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=False)
    m = from_diffusers(save_pipeline(tmp_path / "p", unet, sched))
    x_T = torch.randn(3, ch, size, size, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(sched, unet, x_T, 10)
    with torch.no_grad():
        out = SAMPLERS["ddim"].fn(m, x_T, timesteps_to_grid(m.process, sched.timesteps).float())
    assert rel(out, ref) < 1e-5
    from scorelab.samplers.defaults import family  # the imported chain reads its measured defaults by its betas
    assert family(m.process) == ("discrete_cosine" if schedule == "squaredcos_cap_v2" else "discrete")


def test_dpm_solver_pp_2m_equals_diffusers_100_steps(model):
    unet = model.net.unet
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ref = diffusers_loop(sched, unet, x_T, 100)
    with torch.no_grad():
        out = SAMPLERS["dpm_solver_pp_2m"].fn(model, x_T, timesteps_to_grid(model.process, sched.timesteps).float())
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_v_and_sample_prediction_folders(tmp_path, prediction_type):
    """v- and sample-prediction folders map onto the v / x0 parameterizations: DDIM equals diffusers' and the
    model's x0 equals diffusers' pred_original_sample."""
    unet = tiny_unet(seed=3)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    m = from_diffusers(save_pipeline(tmp_path / "p", unet, sched))
    assert m.parameterization == {"v_prediction": "v", "sample": "x0"}[prediction_type]
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    ref = diffusers_loop(sched, unet, x_T, 8)
    with torch.no_grad():
        out = SAMPLERS["ddim"].fn(m, x_T, timesteps_to_grid(m.process, sched.timesteps).float())
        k = 500
        x0_ref = sched.step(unet(x_T, k).sample, k, x_T).pred_original_sample
        x0 = m.x0(x_T, torch.tensor((k + 1) / 1000))
    assert rel(out, ref) < 1e-5
    assert rel(x0, x0_ref) < 1e-5


def test_trained_betas_and_folder_layouts(tmp_path):
    """trained_betas give the same process; one folder holding UNet + scheduler config and unet/ + scheduler/
    without model_index.json load the same model."""
    unet = tiny_unet(seed=5)
    betas = torch.linspace(1e-4, 0.02, 1000).tolist()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=betas)
    unet.save_pretrained(tmp_path / "one")
    sched.save_pretrained(tmp_path / "one")
    unet.save_pretrained(tmp_path / "two" / "unet")
    sched.save_pretrained(tmp_path / "two" / "scheduler")
    a, b = from_diffusers(tmp_path / "one"), from_diffusers(tmp_path / "two")
    abar = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float32).double(), 0)
    assert torch.allclose(a.process.alpha_bar[1:], abar, rtol=1e-12)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(a.eps(x, 0.5), b.eps(x, 0.5))
        assert torch.equal(a.eps(x, 0.5), unet(x, 499).sample)


# -- clean errors ------------------------------------------------------------------------------------------------------
def one_line_error(fn, *match):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(m in msg for m in match), msg


def test_corrupt_and_unsupported_folders_are_one_line_errors(tmp_path, folder):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(folder, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    one_line_error(lambda: from_diffusers(bad), "cannot load the diffusers UNet")
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    one_line_error(lambda: from_diffusers(pickled), "pickled weights are never loaded")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DConditionModel"}))
    one_line_error(lambda: from_diffusers(other), "UNet2DConditionModel", "supported")
    sig = tmp_path / "sigmoid"
    shutil.copytree(folder, sig)
    cfg = json.loads((sig / "scheduler" / "scheduler_config.json").read_text())
    (sig / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "beta_schedule": "sigmoid"}))
    one_line_error(lambda: from_diffusers(sig), "beta_schedule", "sigmoid")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: from_diffusers(tmp_path / "empty"), "not a diffusers folder")
    assert not is_diffusers_folder(tmp_path / "empty") and is_diffusers_folder(folder)


# -- export: grids and the scheduler adapter ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soft(tmp_path_factory):
    unet = tiny_unet(seed=7)
    folder = save_pipeline(tmp_path_factory.mktemp("soft") / "pipe", unet, diffusers.DDPMScheduler(**SOFT))
    return from_diffusers(folder)


@pytest.mark.parametrize("sampler", ADAPTER_SAMPLERS)
def test_adapter_in_ddpm_pipeline_equals_scorelab(soft, sampler):
    """ScorelabScheduler inside an unchanged DDPMPipeline gives scorelab's sampler output from the same x_T (the
    pipeline's own noise draw), clamped as the pipeline clamps."""
    nfe, n = 6, 3
    pipe = diffusers.DDPMPipeline(unet=soft.net.unet, scheduler=ScorelabScheduler(soft.process, sampler))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=n, generator=torch.Generator().manual_seed(11), num_inference_steps=nfe,
                  output_type="pt").images
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    ts, _, opts = grid_for_nfe(sampler, soft.process, nfe, return_opts=True, final_zero=True)
    with torch.no_grad():
        ref = SAMPLERS[sampler].fn(soft, x_T, ts.float(), **opts)
    ref_img = (ref / 2 + 0.5).clamp(0, 1)  # output_type="pt": [B, C, H, W]
    inside = ((ref_img > 0) & (ref_img < 1)).float().mean()
    assert inside > 0.3  # the comparison is not decided by the clamp
    assert torch.allclose(torch.as_tensor(images), ref_img, atol=1e-5)


def test_adapter_fitted_grid_in_ddim_pipeline(soft):
    """A fractional (fitted-like) grid runs in a DDIMPipeline through use_scheduler and equals scorelab's
    budgeted sample on that grid, unclamped, through the scheduler API the pipeline uses."""
    ts = make_grid("karras", soft.process, 4, final_zero=True, snap=False)  # off the chain's states
    sched = ScorelabScheduler(soft.process, "dpm_solver_pp_3m", grid=ts)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    out = diffusers_loop(sched, soft.net.unet, x_T, 5)
    assert sched.timesteps.dtype == torch.float32  # fractional timesteps reach the UNet as they are
    with torch.no_grad():
        ref = SAMPLERS["dpm_solver_pp_3m"].fn(soft, x_T, ts.float())
    assert torch.allclose(out, ref, atol=1e-6)
    pipe = use_scheduler(diffusers.DDIMPipeline(unet=soft.net.unet, scheduler=diffusers.DDIMScheduler(**SOFT)),
                         sched)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler is sched
    pipe(batch_size=1, num_inference_steps=5, output_type="pt")
    one_line_error(lambda: sched.set_timesteps(7), "num_inference_steps=5")
    one_line_error(lambda: ScorelabScheduler(soft.process, "heun"), "runs")


def test_grid_export_to_diffusers_schedulers(soft):
    """grid_to_timesteps feeds DPMSolverMultistepScheduler(timesteps=...) and grid_to_sigmas feeds
    EulerDiscreteScheduler(sigmas=...): both reproduce scorelab's DPM-Solver++(2M) / DDIM on the same grid."""
    unet, p = soft.net.unet, soft.process
    ts = timesteps_to_grid(p, [999, 700, 420, 200, 60, 9])
    assert grid_to_timesteps(p, ts) == [999, 700, 420, 200, 60, 9]
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    dpm = diffusers.DPMSolverMultistepScheduler(**{k: v for k, v in SOFT.items() if k != "clip_sample"})
    ref = diffusers_loop(dpm, unet, x_T, None, timesteps=grid_to_timesteps(p, ts))
    # "leading" spacing: init_noise_sigma = sqrt(sigma_max^2 + 1), the VP prior scale ("linspace" uses sigma_max)
    euler = diffusers.EulerDiscreteScheduler(timestep_spacing="leading",
                                             **{k: v for k, v in SOFT.items() if k != "clip_sample"})
    ref_e = diffusers_loop(euler, unet, x_T, None, sigmas=grid_to_sigmas(p, ts))
    with torch.no_grad():
        out = SAMPLERS["dpm_solver_pp_2m"].fn(soft, x_T, ts.float())
        out_e = SAMPLERS["ddim"].fn(soft, x_T, ts.float())
    assert rel(out, ref) < 1e-4 and rel(out_e, ref_e) < 1e-4
    sig = grid_to_sigmas(p, ts)
    assert sig[-1] == 0 and math.isclose(sig[0], math.sqrt((1 - p.alpha_bar[1000]) / p.alpha_bar[1000]), rel_tol=1e-9)


# -- class labels and classifier-free guidance -------------------------------------------------------------------------
def test_class_conditional_unet_and_cfg(tmp_path):
    from scorelab.guidance.wrappers import ClassifierFreeGuidance

    unet = tiny_unet(classes=4, seed=8)
    m = from_diffusers(save_pipeline(tmp_path / "p", unet, diffusers.DDPMScheduler(**SOFT)), null_class=3)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        e1 = m.eps(x, 0.4, y=torch.tensor([1, 2]))
        assert torch.equal(e1, unet(x, 399, class_labels=torch.tensor([1, 2])).sample)
        cfg = ClassifierFreeGuidance(m, y=1, scale=2.0)
        e_c, e_u = unet(x, 399, class_labels=torch.tensor([1, 1])).sample, \
            unet(x, 399, class_labels=torch.tensor([3, 3])).sample
        assert torch.allclose(cfg.eps(x, torch.tensor(0.4)), 3 * e_c - 2 * e_u, atol=1e-5)
    one_line_error(lambda: m.eps(x, 0.4), "class-conditional")
    one_line_error(lambda: from_diffusers(tmp_path / "p", null_class=7), "null_class=7")


# -- k-diffusion / EDM -------------------------------------------------------------------------------------------------
def test_from_k_diffusion_equals_exact_oracle():
    """An exact mixture denoiser handed over in the k-diffusion convention D(x, sigma) is the same model: the same
    eps and the same Heun / DPM-Solver++ samples as the oracle model itself."""
    mix = ring_mixture(8, 2.0, 0.1)
    oracle = mix.as_model(EDM(0.002, 80.0))
    m = from_k_diffusion(lambda x, sigma: oracle.x0(x, sigma), sigma_data=0.5, sigmas=(0.002, 80.0))
    x = torch.randn(16, 2, dtype=torch.float64)
    assert torch.allclose(m.eps(x, torch.tensor(1.3, dtype=torch.float64)),
                          oracle.eps(x, torch.tensor(1.3, dtype=torch.float64)), atol=1e-12)
    ts = make_grid("karras", m.process, 8)
    x_T = 80 * torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in ("heun", "dpm_solver_pp_2m"):
        assert torch.allclose(SAMPLERS[name].fn(m, x_T, ts), SAMPLERS[name].fn(oracle, x_T, ts), atol=1e-10)
    one_line_error(lambda: from_k_diffusion(oracle.x0, sigmas=(1.0, 0.5)), "sigma_min < sigma_max")


def test_from_edm_preconditioned_network():
    """An EDMPrecond-like module (attributes sigma_data / sigma_min / sigma_max, class_labels keyword): its range
    falls back to EDM's (0.002, 80) for EDMPrecond's (0, inf) defaults, and y reaches it as class_labels."""

    class Precond(torch.nn.Module):
        sigma_min, sigma_max, sigma_data = 0.0, float("inf"), 0.5

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, sigma, class_labels=None):
            c = 0 if class_labels is None else class_labels[:, None].float()
            return self.lin(x) / (1 + sigma[:, None]) + c

    net = Precond()
    m = from_edm(net)
    assert (m.process.t_min, m.process.t_max, m.process.sigma_data) == (0.002, 80.0, 0.5)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 3])
    assert torch.equal(m.x0(x, torch.tensor(2.0), y=y), net(x, torch.full((4,), 2.0), class_labels=y))
    assert list(m.parameters()) == list(net.parameters())


# -- every scorelab method on an imported UNet -------------------------------------------------------------------------
def test_every_sampler_runs_on_an_imported_unet(model):
    """Each registered sampler on a 2-step grid (its default grid; dopri5 with loose tolerances) returns finite
    samples of the right shape; samplers needing inputs an imported model does not have are skipped by name."""
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    needs = {"analytic_dpm": {"variances": "beta"}, "dopri5": {"rtol": 1e-2, "atol": 1e-2},
             "annealed_langevin": {"n_steps": 2}}
    for name, info in SAMPLERS.items():
        ts = make_grid(info.default_grid, model.process, 2)
        with torch.no_grad():
            x = info.fn(model, x_T, ts, generator=torch.Generator().manual_seed(1), **needs.get(name, {}))
        assert x.shape == x_T.shape and torch.isfinite(x).all(), name


def test_grid_fit_likelihood_and_elbo_on_an_imported_unet(soft):
    from scorelab.evaluation.likelihood import discrete_elbo, ode_log_likelihood
    from scorelab.samplers.grid_opt import optimize_grid

    fit = optimize_grid(soft, "dpm_solver_pp_2m", 3, final_zero=True, objective="pathwise", n_samples=8, n_heldout=8,
                        max_objective=30, sample_shape=(1, 8, 8), reference="unipc", ref_steps=40,
                        generator=torch.Generator().manual_seed(0))
    assert fit.heldout_fit <= fit.heldout_init and fit.ts[-1] == 0
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ll = ode_log_likelihood(soft, x, divergence="hutchinson", method="rk4", options={"step_size": 0.25},
                            generator=torch.Generator().manual_seed(2))
    elbo = discrete_elbo(soft, x, steps=torch.arange(1, 1001, 100), generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(ll.log_likelihood).all() and torch.isfinite(elbo.elbo).all()
    assert elbo.elbo.shape == ll.log_likelihood.shape == (3,)


def test_discriminator_guidance_and_rejection_on_an_imported_unet(soft):
    from scorelab.guidance.discriminator import DiscriminatorConfig, make_discriminator, train_discriminator
    from scorelab.guidance.rejection import model_proposals, sample_with_rejection
    from scorelab.guidance.wrappers import DiscriminatorGuidance

    g = torch.Generator().manual_seed(0)
    x_real = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1
    x_fake = sample(soft, "dpm_solver_pp_2m", 4, 32, shape=(1, 8, 8), final_zero=True)[0]
    disc = make_discriminator((1, 8, 8), soft.process)
    res = train_discriminator(disc, soft, x_real, x_fake, DiscriminatorConfig(steps=3, batch_size=16, log_every=1),
                              progress=False)
    assert len(res.history) >= 1
    guided = DiscriminatorGuidance(soft, disc, scale=1.0)
    x = sample(guided, "heun", 4, 4, shape=(1, 8, 8))[0]
    assert torch.isfinite(x).all()
    draw = model_proposals(soft, (1, 8, 8), "dpm_solver_pp_2m", 4, generator=torch.Generator().manual_seed(1))
    kept, info = sample_with_rejection(draw, lambda z: disc(z, torch.full((z.shape[0],), soft.process.t_min)), 4,
                                       K=2.0, batch_size=8, generator=torch.Generator().manual_seed(2))
    assert info["n_proposals"] >= 8 and kept.shape[1:] == (1, 8, 8)


def test_sft_pg_finetunes_the_imported_unet_and_exports_it(soft, tmp_path):
    from scorelab.finetune.sft_pg import SFTPGConfig, sft_pg

    m = from_diffusers(to_diffusers(soft, tmp_path / "copy"))  # an independent copy, saved back as diffusers
    before = {k: v.clone() for k, v in m.net.unet.state_dict().items()}
    data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = SFTPGConfig(n_steps=3, grid="uniform_t", batch_size=8, epochs=1, epoch_size=5, n_critic=2,
                      eval_every=0, lr_generator=1e-3)
    m.requires_grad_(True)
    res = sft_pg(m, data, cfg, progress=False)
    changed = [k for k, v in res.model.net.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "SFT-PG did not update the UNet"
    out = to_diffusers(res.model, tmp_path / "tuned")
    assert is_diffusers_folder(out)
    one_line_error(lambda: to_diffusers(res.model, tmp_path / "tuned"), "not empty")


def test_cli_sample_likelihood_evaluate_on_a_diffusers_folder(folder, tmp_path, capsys):
    from scorelab.cli.main import main

    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(folder), "--sampler", "dpm_solver_pp_2m", "--nfe", "4", "--n", "6",
                 "--out", str(out)]) == 0
    x = __import__("numpy").load(out / "samples.npy")
    assert x.shape == (6, 1, 8, 8)
    assert main(["evaluate", "--samples", str(out / "samples.npy"), "--reference", "digits"]) == 0
    assert main(["likelihood", "--checkpoint", str(folder), "--samples", str(out / "samples.npy"), "--n", "1",
                 "--divergence", "hutchinson", "--rtol", "1e-2", "--atol", "1e-2"]) == 0
    assert "bits_per_dim" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(tmp_path), "--sampler", "ddim", "--nfe", "2"]) == 2
    assert main(["finetune", "sft-pg", "--checkpoint", str(folder), "--out", str(tmp_path / "ft"), "--quiet", "--set",
                 "dataset=digits", "data_n=32", "n_steps=3", "grid=uniform_t", "batch_size=16", "epochs=1",
                 "epoch_size=2", "n_critic=1", "eval_every=0"]) == 0
    tuned = from_diffusers(tmp_path / "ft" / "diffusers_ckpt_00000002")  # the fine-tuned UNet, back in diffusers
    assert tuned.process.config() == from_diffusers(folder).process.config()
