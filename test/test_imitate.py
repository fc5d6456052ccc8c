"""`liquid-control imitate`: BPTT on demonstrations (an operator with noise on the rover env),
validation split and early stopping, the exported policy drives the robot, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from liquid_control.core.policy import Policy
from liquid_control.data.dataset import Dataset
from liquid_control.train.config import ConfigError, config_from_dict
from liquid_control.train.envs import make_env
from liquid_control.train.imitate import imitate, simulated_demonstrations, split
from liquid_control.train.rollout import PolicyAgent, run_episodes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROVER = ROOT / "policies" / "rover_ltc19.lcp"
CONFIG = {
    "name": "rover_imitate",
    "env": {"id": "LiquidControl/RoverLane-v0"},
    "student": {"units": 19},
    "distill": {"window": 32, "burn_in": 8, "batch_size": 16},
    "imitate": {"max_rounds": 5, "epochs_per_round": 2, "patience": 3, "eval_episodes": 1},
}


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    cfg = config_from_dict(CONFIG)
    d = simulated_demonstrations(Policy.load(ROVER), cfg, seconds=120.0, noise=0.1, seed=1)
    folder = tmp_path_factory.mktemp("demos") / "rover"
    d.save(folder)
    return folder, d


def test_validation_split_holds_out_whole_episodes(demos):
    _, d = demos
    train, val = split(d, 0.25)
    assert not (train & val).any() and (train | val).all()
    held = set(d.episode[val].tolist())
    assert held and not held & set(d.episode[train].tolist())
    one = Dataset(d.spec, d.obs, d.action, d.dt, d.t, np.zeros_like(d.episode), d.reset,
                  "x", {}, {})  # fmt: skip
    train, val = split(one, 0.25)
    assert val[-1] and not val[0] and val.sum() == pytest.approx(0.25 * d.dt.size, abs=1)


def test_imitation_on_two_minutes_drives_the_rover_like_the_operator(demos, tmp_path):
    folder, d = demos
    operator = float(np.mean(d.report["operator_returns"]))
    cfg = config_from_dict(CONFIG)
    done = imitate(cfg, [folder], tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "imitate" / "history.json").read_text())
    assert min(r["ltc_val_loss"] for r in history) < history[0]["ltc_val_loss"]
    assert done["best"]["ltc"]["return"] is not None  # selected by closed-loop return
    policy = Policy.load(done["policy"])
    assert policy.provenance["stage"] == "imitate" and policy.provenance["dataset_ticks"] == 2400
    result = run_episodes(
        PolicyAgent(policy),
        lambda s: make_env(cfg.env, seed=s, randomize=False),
        [900, 901],
    )
    # two minutes of demonstration: the LTC keeps the lane about as well as its operator
    assert result.returns.mean() >= 0.8 * operator, (result.returns, operator)
    # a finished run returns its record on --resume; other data is refused
    assert imitate(cfg, [folder], tmp_path / "run", resume=True, progress=False) == done


def test_cli_errors_are_one_line(demos, tmp_path):
    folder, _ = demos
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({**CONFIG, "imitate": {"val_fraction": 1.5}}))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "liquid_control.cli", "imitate", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    r = cli(str(folder), "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "imitate.val_fraction" in r.stderr, r.stderr
    cfg.write_text(json.dumps(CONFIG))
    r = cli(str(tmp_path / "nothing"), "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "missing dataset.json" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_killed_run_resumes_to_the_same_policy(demos, tmp_path):
    folder, _ = demos
    config = {**CONFIG, "imitate": {"max_rounds": 4, "epochs_per_round": 1, "eval_episodes": 0}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config))
    whole = imitate(config_from_dict(config), [folder], tmp_path / "whole", progress=False)
    args = [sys.executable, "-m", "liquid_control.cli", "imitate", str(folder), "--config",
            str(cfg), "--out", str(tmp_path / "cut"), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "cut" / "imitate" / "progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["round"] >= 2:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    assert not (tmp_path / "cut" / "imitate" / "done.json").exists(), "killed too late"
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--resume" in r.stderr  # (not silently started over)
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a, b = (
        Policy.load(whole["policy"]),
        Policy.load(tmp_path / "cut" / "imitate" / Path(whole["policy"]).name),
    )
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


FINETUNE = {**CONFIG, "imitate": {"max_rounds": 3, "epochs_per_round": 1, "eval_episodes": 1,
                                  "lstm": False, "keep_sim_return": 0.95}}  # fmt: skip


def test_fine_tuning_on_logs_starts_from_the_policy_and_reports_what_changed(demos, tmp_path):
    folder, _ = demos
    init = Policy.load(ROVER)
    done = imitate(config_from_dict(FINETUNE), [folder], tmp_path / "ft", progress=False, init=init)
    assert done["initial"]["return"] > 250 and set(done["best"]) == {"ltc"}
    history = json.loads((tmp_path / "ft" / "imitate" / "history.json").read_text())
    assert all("ltc_within_guard" in r for r in history)
    tuned = Policy.load(done["policy"])
    assert tuned.spec.to_dict() == init.spec.to_dict()  # (its normalisation kept, not refitted)
    assert done["relative_change"] and max(done["relative_change"].values()) > 0
    if done["best"]["ltc"]["round"] >= 0:
        assert done["best"]["ltc"]["return"] >= 0.95 * done["initial"]["return"]
    with pytest.raises(ConfigError, match="started from --init"):  # (not silently mixed up)
        imitate(config_from_dict(FINETUNE), [folder], tmp_path / "ft", resume=True, progress=False)


def test_the_forgetting_guard_keeps_the_policy_when_the_logs_would_ruin_it(demos, tmp_path):
    _, d = demos
    # "corrections" that stop the rover: fitting them drives the sim return to nothing
    bad = Dataset(d.spec, d.obs, np.zeros_like(d.action), d.dt, d.t, d.episode, d.reset,
                  "bad", {}, {})  # fmt: skip
    bad.save(tmp_path / "bad")
    cfg = config_from_dict({**FINETUNE, "distill": {**CONFIG["distill"], "lr": 0.05}})
    init = Policy.load(ROVER)
    done = imitate(cfg, [tmp_path / "bad"], tmp_path / "ft", progress=False, init=init)
    history = json.loads((tmp_path / "ft" / "imitate" / "history.json").read_text())
    assert not any(r["ltc_within_guard"] for r in history), history
    assert done["best"]["ltc"]["round"] == -1  # the initial policy stays
    kept = Policy.load(done["policy"])
    for k in init.params:
        np.testing.assert_allclose(kept.params[k], init.params[k], rtol=1e-6, atol=1e-6)


ROVER_TEACHER = {
    "name": "rover_teacher_tiny",
    "seed": 1,
    "env": {"id": "LiquidControl/RoverLane-v0"},
    "teacher": {"algo": "PPO", "total_timesteps": 1024, "n_envs": 2, "net_arch": [16, 16],
                "hyperparams": {"n_steps": 256, "batch_size": 128, "n_epochs": 1},
                "eval_freq": 1024, "eval_episodes": 1, "checkpoint_freq": 1024},
    "distill": {"n_envs": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def rover_run(tmp_path_factory):
    """A `liquid-control train` run folder with a (tiny, barely trained) rover teacher."""
    from liquid_control.train.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("sim") / "rover_run"
    run_pipeline(config_from_dict(ROVER_TEACHER), run, stages=("teacher",), progress=False)
    return run


def test_mix_sim_adds_dagger_steps_labelled_by_the_runs_teacher(demos, rover_run, tmp_path):
    from liquid_control.train.io import read_arrays
    from liquid_control.train.teacher import Teacher

    folder, _ = demos
    config = {**FINETUNE, "imitate": {**FINETUNE["imitate"], "max_rounds": 2,
                                      "mix_sim_steps": 300, "mix_sim_max_steps": 5000}}  # fmt: skip
    cfg, init = config_from_dict(config), Policy.load(ROVER)
    done = imitate(cfg, [folder], tmp_path / "mix", progress=False, init=init, mix_sim=rover_run)
    out = tmp_path / "mix" / "imitate"
    history = json.loads((out / "history.json").read_text())
    assert [r["sim_steps"] for r in history] == [300, 600]  # (aggregated, DAgger-style)
    assert done["mix_sim"]["run"] == str(rover_run)
    assert Policy.load(done["policy"]).provenance["mix_sim"] == done["mix_sim"]
    # the sim steps are labelled by the run's teacher on the states the student visited
    sim = read_arrays(out / json.loads((out / "progress.json").read_text())["sim"])
    teacher = Teacher.load(rover_run / "teacher", "PPO")
    spec = init.spec
    want = spec.to_network(np.clip(teacher.act(sim["obs"]), spec.action_low, spec.action_high))
    np.testing.assert_allclose(sim["label"], want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(sim["obs"][:, :2], sim["obs"][0, :2])  # (it drove somewhere)
    # a run continues only with the sim it started with
    with pytest.raises(ConfigError, match="--mix-sim"):
        imitate(cfg, [folder], tmp_path / "mix", resume=True, progress=False, init=init)


def test_mix_sim_refuses_a_run_that_does_not_fit_in_one_line(demos, rover_run, tmp_path):
    import shutil

    folder, _ = demos
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(FINETUNE))
    other = tmp_path / "cartpole_run"
    shutil.copytree(rover_run, other)
    stored = json.loads((other / "config.json").read_text())
    stored["env"]["id"] = "LiquidControl/CartPoleSwingUp-v0"
    (other / "config.json").write_text(json.dumps(stored))
    for run, message in ((other, "does not fit the datasets"),
                         (tmp_path, "expected a run folder")):  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-m", "liquid_control.cli", "imitate", str(folder), "--config",
             str(cfg), "--out", str(tmp_path / "r"), "--mix-sim", str(run)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


class _Still:
    """A driver that holds the rover still (zero commands)."""

    def __init__(self, spec):
        self.spec = spec

    def reset(self):
        pass

    def step(self, obs, dt):
        return np.zeros(self.spec.action_dim)


def test_intervention_logs_label_the_drivers_visits_with_the_operators_commands():
    cfg = config_from_dict(CONFIG)
    operator = Policy.load(ROVER)
    still = _Still(operator.spec)
    # beta 0: the driver acts on every tick (the rover stays where it started), the operator's
    # commands are the labels; beta 1: the operator acts, as without a driver
    held = simulated_demonstrations(operator, cfg, 3.0, noise=0.0, seed=4, driver=still, beta=0.0)
    alone = simulated_demonstrations(operator, cfg, 3.0, noise=0.0, seed=4)
    took = simulated_demonstrations(operator, cfg, 3.0, noise=0.0, seed=4, driver=still, beta=1.0)
    assert np.abs(held.obs - held.obs[0]).max() < 1e-2  # (nothing moved but settling)
    assert np.abs(held.action).max() > 0.1  # (the operator asked for motion all along)
    assert np.abs(alone.obs - alone.obs[0]).max() > 0.1
    np.testing.assert_array_equal(took.obs, alone.obs)
    np.testing.assert_array_equal(took.action, alone.action)
    assert held.settings["beta"] == 0.0 and "beta" not in alone.settings
    # a shifted robot (one step of latency) answers the same commands later
    late = simulated_demonstrations(operator, cfg, 3.0, noise=0.0, seed=4,
                                    perturb={"action_latency": 1})  # fmt: skip
    assert late.settings["perturb"] == {"action_latency": 1}
    assert not np.allclose(late.obs, alone.obs)
