"""The `scorelab` command: listings, oracle sampling, training from YAML, and clear exit-2 errors."""
import json

import numpy as np
import pytest
import yaml

from scorelab.cli import main
from scorelab.training.experiment import experiment_from_dict, load_experiment


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_listings(capsys):
    code, out, _ = run(capsys, "samplers")
    assert code == 0
    for name in ("ddpm", "ddim", "heun", "dpm_solver_pp_2m", "accel_det", "restart", "pc"):
        assert name in out
    code, out, _ = run(capsys, "datasets")
    assert code == 0 and "swiss_roll" in out and "digits" in out


def test_sample_on_oracle_reaches_the_target(capsys, tmp_path):
    code, out, _ = run(capsys, "sample", "--model", "gmm:ring8", "--process", "vp", "--sampler", "heun",
                       "--nfe", "39", "--grid", "karras", "--n", "2000", "--out", str(tmp_path))
    assert code == 0
    info = json.loads((tmp_path / "sample.json").read_text())
    assert info["nfe_planned"] <= 39
    assert info["mode_tv"] < 0.08
    x = np.load(tmp_path / "samples.npy")
    assert x.shape == (2000, 2) and (tmp_path / "samples.png").exists()


@pytest.mark.parametrize("args, message", [
    (["sample", "--model", "gmm:ring8", "--sampler", "nope", "--nfe", "10"], "unknown sampler"),
    (["sample", "--model", "gmm:nope", "--sampler", "heun", "--nfe", "10"], "unknown oracle"),
    (["sample", "--model", "gmm:ring8", "--process", "foo", "--sampler", "heun", "--nfe", "10"], "unknown process"),
    (["sample", "--checkpoint", "/does/not/exist", "--sampler", "heun", "--nfe", "10"], "does not exist"),
    (["sample", "--model", "gmm:ring8", "--sampler", "pc", "--nfe", "1"], "nfe"),  # predictor + corrector = 2
    (["train", "--config", "/does/not/exist.yaml"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("scorelab: error:") and message.lower() in err.lower()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--model", "gmm:ring8", "--sampler", "heun", "--nfe", "-3"])
    assert e.value.code == 2


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        experiment_from_dict({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        experiment_from_dict({"trian": {}})
    with pytest.raises(ValueError, match="unknown optimizer"):
        experiment_from_dict({"train": {"optimizer": "sgd2"}})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"steps": 5}}))
    exp = load_experiment(p, overrides={"train.steps": 7, "loss.weighting": "likelihood"})
    assert exp.train.steps == 7 and exp.loss.weighting == "likelihood"


def test_train_then_sample_from_checkpoint(capsys, tmp_path):
    cfg = {"run_dir": str(tmp_path / "run"), "data": {"name": "moons", "n": 2000},
           "model": {"net": {"name": "mlp", "width": 32, "depth": 1}},
           "train": {"steps": 30, "batch_size": 64, "log_every": 10}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    code, out, _ = run(capsys, "train", "--config", str(p), "--quiet")
    assert code == 0, out
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "log.csv").exists()
    code, out, _ = run(capsys, "train", "--config", str(p), "--quiet", "--resume", "--set", "train.steps=40")
    assert code == 0 and '"step": 40' in out
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path / "run"), "--sampler", "ddim", "--nfe", "5",
                       "--n", "100", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert np.load(tmp_path / "s" / "samples.npy").shape == (100, 2)
    code, out, _ = run(capsys, "evaluate", "--samples", str(tmp_path / "s" / "samples.npy"), "--reference", "moons")
    assert code == 0 and "sliced_w2" in out


def test_hodsm_objective_trains_from_config(tmp_path):
    from scorelab.training.experiment import run_training

    exp = experiment_from_dict({"run_dir": str(tmp_path / "r"), "data": {"name": "moons", "n": 500},
                                "model": {"net": {"name": "mlp", "width": 16, "depth": 1}},
                                "objective": {"name": "hodsm", "order": 2},
                                "train": {"steps": 5, "batch_size": 32, "log_every": 5}})
    res = run_training(exp, progress=False)
    assert res["step"] == 5 and np.isfinite(res["final_loss"])
    with pytest.raises(ValueError, match="objective name"):
        experiment_from_dict({"objective": {"name": "foo"}})


def test_density_command_and_bad_targets(capsys, tmp_path):
    code, out, err = run(capsys, "density", "--target", "gauss", "--method", "pis", "--loss", "lv", "--steps", "10",
                         "--iterations", "20", "--batch", "64", "--out", str(tmp_path))
    assert code == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert "log_Z" in json.dumps(rep)
    code, out, err = run(capsys, "density", "--target", "gauss", "--method", "pis", "--steps", "10", "--iterations",
                         "2", "--batch", "16", "--eval-samples", "64", "--eval-repeats", "3", "--out",
                         str(tmp_path / "rep"))
    assert code == 0, err
    m = json.loads((tmp_path / "rep" / "report.json").read_text())["metrics"]
    assert len(m["log_Z_hat_reps"]) == 3 and {"elbo_se", "elbo_pooled_se", "dlogZ_is_mean"} <= set(m)
    with pytest.raises(SystemExit) as e:  # argparse: exit status 2 and one line
        run(capsys, "density", "--target", "gauss", "--eval-repeats", "0")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--eval-repeats: expected a positive integer, got 0" in err
    code, _, err = run(capsys, "density", "--target", "nope")
    assert code == 2 and "unknown target" in err
    code, _, err = run(capsys, "density", "--target", "os.path:nothing_here", "--dim", "2")
    assert code == 2 and "scorelab: error:" in err
    code, _, err = run(capsys, "density", "--target", "gauss", "--method", "pis", "--mc-pretrain", "2")
    assert code == 2 and "mc_pretrain_rounds needs method 'dis'" in err
    code, out, err = run(capsys, "density", "--target", "gauss", "--method", "dis", "--steps", "10", "--iterations",
                         "5", "--batch", "64", "--mc-pretrain", "1", "--hidden", "32", "--layers", "2", "--out",
                         str(tmp_path / "mc"))
    assert code == 0, err
    rep = json.loads((tmp_path / "mc" / "report.json").read_text())
    assert rep["config"]["mc_pretrain_rounds"] == 1 and rep["mc_pretrain_cpu_s"] > 0


def test_refinement_commands_end_to_end(capsys, tmp_path):
    """train a tiny DDPM, then SFT-PG, discriminator training, guided sampling and rejection from the CLI."""
    cfg = {"run_dir": str(tmp_path / "ddpm"), "data": {"name": "moons", "n": 1000},
           "process": {"name": "discrete", "schedule": "sigmoid", "n": 10},
           "model": {"net": {"name": "mlp", "width": 32, "depth": 1, "time_scale": 1.0}},
           "loss": {"proposal": "discrete"}, "train": {"steps": 20, "batch_size": 64, "log_every": 10}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert run(capsys, "train", "--config", str(p), "--quiet")[0] == 0
    ck = str(tmp_path / "ddpm")
    code, out, err = run(capsys, "finetune", "sft-pg", "--checkpoint", ck, "--out", str(tmp_path / "sft"), "--quiet",
                         "--set", "dataset=moons", "data_n=500", "epochs=1", "epoch_size=128", "eval_samples=200",
                         "eval_every=0")
    assert code == 0, err
    assert json.loads((tmp_path / "sft" / "sft_pg_result.json").read_text())["metric_after"] is not None
    code, out, err = run(capsys, "guidance", "train-discriminator", "--checkpoint", ck, "--data", "moons", "--quiet",
                         "--objective", "mse+ce", "--gamma", "0.1", "--out", str(tmp_path / "disc"),
                         "--set", "data_n=256", "n_generated=128", "sampler=ddpm", "nfe=10", "train.steps=5",
                         "train.batch_size=64")
    assert code == 0, err
    disc = str(tmp_path / "disc" / "discriminator")
    code, out, err = run(capsys, "sample", "--checkpoint", ck, "--sampler", "ddim", "--nfe", "10", "--n", "64",
                         "--guidance", f"discriminator:{disc}", "--scale", "1.0", "--window", "0.0,0.5",
                         "--out", str(tmp_path / "guided"))
    assert code == 0, err
    assert np.isfinite(np.load(tmp_path / "guided" / "samples.npy")).all()
    code, out, err = run(capsys, "reject", "--checkpoint", ck, "--discriminator", disc, "--method", "budget",
                         "--K", "2", "--n", "50", "--out", str(tmp_path / "rej"), "--set", "sampler=ddpm", "nfe=10")
    assert code == 0, err
    assert np.load(tmp_path / "rej" / "samples.npy").shape == (50, 2)


def test_evaluate_against_exact_oracle(capsys, tmp_path):
    # a fine sampler scores ~0 MMD^2 to the exact ring, a 2-step Euler far more; wrong dimension is a clear error
    for name, sampler, nfe in (("good", "dpm_solver_pp_2m", "30"), ("bad", "euler", "2")):
        code, _, err = run(capsys, "sample", "--model", "gmm:ring8", "--process", "vp", "--sampler", sampler,
                           "--nfe", nfe, "--n", "2000", "--out", str(tmp_path / name))
        assert code == 0, err
    res = {}
    for name in ("good", "bad"):
        code, out, _ = run(capsys, "evaluate", "--samples", str(tmp_path / name / "samples.npy"),
                           "--reference", "gmm:ring8", "--out", str(tmp_path / f"{name}.json"))
        assert code == 0
        res[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert len(res["good"]["mmd2_to_exact_per_bandwidth"]) == 4
    assert abs(res["good"]["mmd2_to_exact"]) < 2e-3 < res["bad"]["mmd2_to_exact"]
    assert res["good"]["mode_tv"] < res["bad"]["mode_tv"]
    np.save(tmp_path / "x3.npy", np.zeros((10, 3), dtype=np.float32))
    code, _, err = run(capsys, "evaluate", "--samples", str(tmp_path / "x3.npy"), "--reference", "gmm:ring8")
    assert code != 0 and "d=2" in err
