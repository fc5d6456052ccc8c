"""The training pipeline on tiny budgets: config errors, envs and perturbations, every stage's
wiring, resume after kill -9 (bit-identical to an uninterrupted run), evaluation outputs, and
ONNX / numpy-runtime agreement. Full-size training is not run here."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch", reason="the training stack (the train extra) is not installed")

from liquid_control.core.ltc import init_params
from liquid_control.core.policy import Policy
from liquid_control.core.wiring import AutoNCP
from liquid_control.train.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "idp_tiny",
    "seed": 3,
    "env": {"id": "InvertedDoublePendulum-v5", "max_episode_steps": 100},
    "teacher": {
        "algo": "PPO",
        "total_timesteps": 2048,
        "n_envs": 2,
        "net_arch": [16, 16],
        "hyperparams": {"n_steps": 256, "batch_size": 128, "n_epochs": 2},
        "eval_freq": 1024,
        "eval_episodes": 2,
        "checkpoint_freq": 512,
    },
    "distill": {
        "iterations": 3,
        "steps_per_iteration": 600,
        "n_envs": 3,
        "window": 12,
        "burn_in": 3,
        "epochs": 2,
        "batch_size": 16,
        "eval_episodes": 2,
        "dt_jitter": 0.2,
    },
    "finetune": {
        "enabled": True,
        "total_timesteps": 1024,
        "n_envs": 2,
        "n_steps": 128,
        "window": 16,
        "epochs": 2,
        "batch_size": 8,
        "eval_episodes": 2,
        "critic_warmup_rollouts": 1,
    },
    "evaluate": {
        "episodes": 2,
        "perturbations": {"obs_noise": 0.1, "dt_jitter": 0.3, "mass_scale": 1.2},
    },
}


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "liquid_control.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def cli_started(*args: str) -> subprocess.Popen:
    """`liquid-control *args` running in the background (to be killed by a test)."""
    return subprocess.Popen(
        [sys.executable, "-m", "liquid_control.cli", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"teacher": {"algo": "DQN"}}, "teacher.algo"),
        ({"teacher": {"total_timesteps": "many"}}, "teacher.total_timesteps"),
        ({"distill": {"windw": 3}}, "windw"),
        ({"distill": {"window": 8, "burn_in": 8}}, "distill.burn_in"),
        ({"distill": {"beta_decay": 1.5}}, "distill.beta_decay"),
        ({"evaluate": {"perturbations": {"gravity": 2.0}}}, "evaluate.perturbations.gravity"),
        ({"evaluate": {"perturbations": {"dt_jitter": 1.5}}}, "evaluate.perturbations.dt_jitter"),
        ({"evaluate": {"perturbations": {"action_latency": 0.5}}}, "action_latency"),
        ({"env": {"kwargs": []}}, "env.kwargs"),
        ({"distill": {"windw": 3}}, "did you mean 'window'"),
        ({"env": {"kwargs": {"max_episode_steps": 20}}}, "env.kwargs.max_episode_steps: the"),
        ({"env": {"max_episode_steps": 0}}, "env.max_episode_steps: expected > 0"),
        ({"distill": {"action_rate_weight": -0.5}}, "distill.action_rate_weight: expected"),
        (
            {"studnet": {"units": 3}},
            "top level: unknown field(s) ['studnet'] (did you mean 'student'?)",
        ),
    ],
)
def test_config_errors_name_the_field(patch: dict, field: str) -> None:
    data = json.loads(json.dumps(TINY))
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values}
    with pytest.raises(ConfigError, match=re.escape(field)):
        config_from_dict(data)


ROVER = ROOT / "policies" / "rover_ltc19.lcp"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--perturb", "dt_jitter=1.5"], "--perturb dt_jitter: expected a fraction in [0, 1)"),
        (["--perturb", "mass_scale=-1"], "--perturb mass_scale: expected a factor > 0, got -1.0"),
        (["--perturb", "friction_scale=nan"], "--perturb friction_scale: expected a factor > 0"),
        (["--perturb", "action_latency=0.5"], "expected a whole number of control steps"),
        (["--episodes", "0"], "--episodes: expected a number >= 1, got 0"),
        (["--env", "NoSuchEnv-v0"], "--env NoSuchEnv-v0: cannot make this gymnasium env"),
        (["--env", "LiquidControl/CartPoleSwingUp-v0"],
         "trained on LiquidControl/RoverLane-v0: the env has observations (5,) and actions (1,), "
         "the policy expects (12,) and (2,)"),
    ],
)  # fmt: skip
def test_eval_errors_are_one_line_naming_the_argument(args: list[str], message: str) -> None:
    if "--env" not in args:
        args = ["--env", "LiquidControl/RoverLane-v0", *args]
    result = cli("eval", str(ROVER), *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [
        x for x in result.stderr.strip().splitlines() if "Warning" not in x and "warn(" not in x
    ]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_eval_seeds_default_to_the_evaluate_stages() -> None:
    from liquid_control.train.commands import parse_perturbations
    from liquid_control.train.evaluate import EVAL_SEED, _ratio

    result = cli("eval", "--help")
    assert f"default {EVAL_SEED}" in result.stdout
    assert parse_perturbations(["mass_scale=1.3", "action_latency=1"]) == {
        "mass_scale": 1.3,
        "action_latency": 1.0,
    }
    # the share of the teacher: worse is below 1 for negative returns too
    assert _ratio(-6.58, -6.23) == pytest.approx(1 - 0.35 / 6.23)
    assert _ratio(-6.0, -6.23) > 1 > _ratio(-7.0, -6.23)
    assert _ratio(300.0, 400.0) == pytest.approx(0.75)
    assert np.isnan(_ratio(1.0, 0.0))


@pytest.mark.parametrize(
    ("patch", "args", "message"),
    [
        ({"env": {"id": "NoSuchEnv-v0"}}, [], "env.id: cannot make 'NoSuchEnv-v0'"),
        ({"student": {"units": 3}}, [], "student.units: 3 does not fit the 1 actions"),
        ({"teacher": {"hyperparams": {"n_epoch": 2}}}, [], "teacher.hyperparams.n_epoch: unknown"),
        ({"teacher": {"hyperparams": {"seed": 2}}}, [], "teacher.hyperparams.seed: set by the"),
        ({}, ["--stages", "distill"], "--stages distill: needs the teacher stage"),
        ({}, ["--resume"], "--resume: "),
    ],
)  # fmt: skip
def test_train_refuses_before_any_work(tmp_path: Path, patch: dict, args: list, message: str):
    data = json.loads(json.dumps(TINY))
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values}
    run = tmp_path / "run"
    result = cli("train", str(write_config(tmp_path / "c.yaml", data)), "--out", str(run), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not run.exists()  # (nothing written, nothing trained)


def test_export_needs_a_distilled_run(tmp_path: Path) -> None:
    result = cli("export", str(tmp_path))
    assert result.returncode == 2 and "holds no config.json" in result.stderr, result.stderr
    write_config(tmp_path / "config.json", TINY)
    result = cli("export", str(tmp_path))
    assert result.returncode == 2 and "holds no distill/done.json" in result.stderr


def test_episode_length_is_env_max_episode_steps_for_every_env() -> None:
    from liquid_control.train.envs import make_env

    for env_id in ("LiquidControl/CartPoleSwingUp-v0", "InvertedPendulum-v5"):
        cfg = config_from_dict({"name": "x", "env": {"id": env_id, "max_episode_steps": 37}})
        env = make_env(cfg.env, seed=0, randomize=False)
        env.reset(seed=0)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
            steps, done = steps + 1, terminated or truncated
        assert steps == 37 or terminated, (env_id, steps)
        assert steps <= 37
        env.close()


def test_the_teacher_kept_is_the_best_by_evaluation_unless_the_last_is_as_good(tmp_path):
    from liquid_control.train.io import read_json, write_json
    from liquid_control.train.teacher import keep_teacher

    out = tmp_path / "teacher"
    (out / "best").mkdir(parents=True)
    (out / "best" / "model.zip").write_bytes(b"best model")
    write_json(out / "best" / "obs_norm.json", {"at": "best"})
    write_json(out / "best" / "best.json", {"num_timesteps": 150, "return": 2094.0})
    finals = []

    def save_final():
        finals.append(1)
        (out / "model.zip").write_bytes(b"final model")

    # the Hopper case: the best evaluation (2094 at 150k) beat the last one (1653 at 200k)
    kept = keep_teacher(out, [[1500.0, 1600.0], [2094.0, 2094.0], [1653.0, 1653.0]], save_final)
    assert kept == {"kept": "best", "best_timesteps": 150, "best_return": 2094.0,
                    "last_eval_return": 1653.0}  # fmt: skip
    assert (out / "model.zip").read_bytes() == b"best model" and not finals
    assert read_json(out / "obs_norm.json") == {"at": "best"}
    # the last evaluation as good as the best: the final teacher is kept
    kept = keep_teacher(out, [[2094.0], [2094.0]], save_final)
    assert kept["kept"] == "final" and finals and (out / "model.zip").read_bytes() == b"final model"


def test_every_config_key_is_documented_and_docs_config_md_is_current() -> None:
    from liquid_control.train.schema import DOCS, fields, schema_markdown

    keys = {k for k, *_ in fields()}
    assert keys == set(DOCS) - {"source"}, keys ^ (set(DOCS) - {"source"})
    assert all(DOCS[k] for k in keys)
    assert (ROOT / "docs" / "config.md").read_text() == schema_markdown(), (
        "docs/config.md is stale: liquid-control config schema > docs/config.md"
    )
    shown = cli("config", "show", "cartpole_tiny")
    assert shown.returncode == 0, shown.stderr
    data = yaml.safe_load(shown.stdout)
    assert data["env"]["max_episode_steps"] == 200 and data["distill"]["grad_clip"] == 1.0
    bad = cli("config", "show", "no_such_task")
    assert bad.returncode == 2 and "no such file or task" in bad.stderr and "cartpole" in bad.stderr


def test_config_requires_env_id() -> None:
    with pytest.raises(ConfigError, match=r"env\.id: missing"):
        config_from_dict({"name": "x", "env": {}})


def test_shipped_task_configs_load() -> None:
    names = sorted(p.name for p in (ROOT / "config" / "train").glob("*.yaml"))
    assert {"cartpole.yaml", "cartpole_tiny.yaml", "inverted_double_pendulum.yaml"} <= set(names)
    for name in names:
        load_config(ROOT / "config" / "train" / name)


# -- envs and perturbations --------------------------------------------------------------------
def test_generic_spec_names_channels_and_maps_actions_to_unit_range() -> None:
    import gymnasium as gym

    from liquid_control.train.envs import spec_for_gym_env

    spec = spec_for_gym_env(gym.make("HalfCheetah-v5"))
    assert spec.obs_dim == 17 and spec.action_dim == 6
    assert [o.name for o in spec.observations[:2]] == ["obs_0", "obs_1"]
    assert {o.topic for o in spec.observations} == {"observation"}
    assert spec.actions[5].topic == "command" and spec.actions[5].index == 5
    assert spec.control_rate_hz == pytest.approx(20.0)
    np.testing.assert_allclose(
        spec.to_physical(np.array([-1.0, 1, 0, 0.5, -0.5, 2])), [-1, 1, 0, 0.5, -0.5, 1]
    )


def test_dt_jitter_is_reported_in_info_and_physics_shift_edits_the_model() -> None:
    from liquid_control.train.config import EnvConfig
    from liquid_control.train.envs import make_env

    cfg = EnvConfig(id="InvertedDoublePendulum-v5")
    nominal = make_env(cfg, seed=0, randomize=False)
    shifted = make_env(cfg, seed=0, randomize=False, perturb={"mass_scale": 1.5, "dt_jitter": 0.3})
    shifted.reset(seed=0)  # the physics shift applies at reset, as for our robots
    np.testing.assert_allclose(
        shifted.unwrapped.model.body_mass, 1.5 * nominal.unwrapped.model.body_mass
    )
    dts = [shifted.step(np.zeros(1, np.float32))[4]["dt"] for _ in range(20)]
    assert min(dts) >= 0.05 * 0.7 - 1e-9 and max(dts) <= 0.05 * 1.3 + 1e-9
    assert np.std(dts) > 0.002
    nominal.reset(seed=0)
    assert nominal.step(np.zeros(1, np.float32))[4]["dt"] == pytest.approx(0.05)


def test_gymnasium_tasks_take_the_same_wrapper_sections_as_our_robots() -> None:
    from liquid_control.train.config import EnvConfig
    from liquid_control.train.envs import make_env

    wrappers = {
        "domain_randomization": {"mass": [0.8, 1.2], "friction": [0.5, 1.5]},
        "action_latency": {"min_steps": 0, "max_steps": 1},
        "control_jitter": {"std_fraction": 0.1, "max_fraction": 0.3},
        "sensor_dropout": {"probability": 0.1, "min_steps": 1, "max_steps": 2},
        "observation_noise": {"noise_std": [0.01] * 10, "scale": 1.0},
    }
    cfg = EnvConfig(id="Reacher-v5", wrappers=wrappers)
    env = make_env(cfg, seed=0, randomize=True)
    nominal = make_env(EnvConfig(id="Reacher-v5"), seed=0, randomize=False)
    masses = []
    for seed in (1, 2):
        _, info = env.reset(seed=seed)
        masses.append(env.unwrapped.model.body_mass.copy())
        assert set(info["randomization"]) >= {"mass", "friction", "sensor_offset"}
    nominal.reset(seed=1)
    base = nominal.unwrapped.model.body_mass
    moving = base > 0
    ratio = masses[0][moving] / base[moving]
    assert np.all((ratio >= 0.8 - 1e-9) & (ratio <= 1.2 + 1e-9)) and not np.allclose(*masses)
    dts = [env.step(np.zeros(2, np.float32))[4]["dt"] for _ in range(30)]
    assert np.std(dts) > 1e-4 and 0.02 * 0.7 - 1e-9 <= min(dts) and max(dts) <= 0.02 * 1.3 + 1e-9
    # the timestep is the nominal one again between steps (env.dt stays the control period)
    assert env.unwrapped.dt == pytest.approx(0.02)
    # the same seed gives the same randomised episode
    again = make_env(cfg, seed=0, randomize=True)
    again.reset(seed=1)
    np.testing.assert_array_equal(again.unwrapped.model.body_mass, masses[0])


def test_a_wrong_wrapper_section_on_a_gymnasium_task_is_one_line_before_any_work(tmp_path) -> None:
    bad = {**TINY, "env": {"id": "Reacher-v5", "wrappers": {"observation_noise": {"scale": -1}}}}
    write_config(tmp_path / "bad.yaml", bad)
    result = cli("train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "env.wrappers: observation_noise.scale" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_action_latency_applies_the_previous_command() -> None:
    from liquid_control.train.config import EnvConfig
    from liquid_control.train.envs import make_env

    cfg = EnvConfig(id="InvertedDoublePendulum-v5")
    delayed = make_env(cfg, seed=0, randomize=False, perturb={"action_latency": 1})
    direct = make_env(cfg, seed=0, randomize=False)
    a, b = delayed.reset(seed=1)[0], direct.reset(seed=1)[0]
    np.testing.assert_array_equal(a, b)
    push = np.ones(1, np.float32)
    a = delayed.step(push)[0]  # applies the neutral command (0)
    b = direct.step(np.zeros(1, np.float32))[0]
    np.testing.assert_allclose(a, b)


# -- export ------------------------------------------------------------------------------------
def test_onnx_step_matches_the_numpy_runtime(tmp_path: Path) -> None:
    import gymnasium as gym

    from liquid_control.train.envs import spec_for_gym_env
    from liquid_control.train.export import check_onnx, export_onnx

    spec = spec_for_gym_env(gym.make("HalfCheetah-v5"))
    wiring = AutoNCP(19, 6, seed=5).build(17)
    policy = Policy(wiring, init_params(wiring, seed=2), spec)
    import warnings

    from torch.jit import TracerWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worst = export_onnx(policy, tmp_path / "step.onnx")
    assert worst < 1e-4
    # (the trace holds no constant or Python-decided value: nothing to warn about)
    assert not [w for w in caught if issubclass(w.category, TracerWarning)], caught
    # a different policy does not pass the check against this ONNX file
    other = Policy(wiring, init_params(wiring, seed=9), spec)
    with pytest.raises(RuntimeError, match="differ"):
        check_onnx(other, tmp_path / "step.onnx")


# -- the pipeline on tiny budgets --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A run folder whose teacher stage is done (trained once, copied by the tests)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = write_config(run.parent / "tiny.yaml", TINY)
    result = cli("train", str(cfg), "--out", str(run), "--stages", "teacher", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def copy_run(src: Path, dst: Path, stages: tuple[str, ...] = ("teacher",)) -> Path:
    dst.mkdir(parents=True)
    shutil.copyfile(src / "config.json", dst / "config.json")
    for stage in stages:
        shutil.copytree(src / stage, dst / stage)
    return dst


@pytest.mark.slow
def test_every_stage_runs_and_writes_its_outputs(tiny_teacher: Path, tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)
    run = copy_run(tiny_teacher, tmp_path / "run")
    result = cli("train", str(cfg_path), "--out", str(run), "--resume", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("teacher", "distill", "finetune", "evaluate", "export"):
        assert (run / stage / "done.json").exists(), stage
    # teacher: checkpoints, EvalCallback curve, TensorBoard
    assert (run / "teacher" / "eval" / "evaluations.npz").exists()
    assert any((run / "teacher" / "tb").rglob("events.out.tfevents*"))
    # evaluation: one row per agent and case, table and plots
    rows = json.loads((run / "evaluate" / "results.json").read_text())
    agents = {r["agent"] for r in rows}
    cases = {r["case"] for r in rows}
    assert agents == {"teacher", "ltc19", "lstm19", "ltc19_finetuned"}
    assert cases == {"nominal", "obs_noise=0.1", "dt_jitter=0.3", "mass_scale=1.2"}
    assert len(rows) == len(agents) * len(cases)
    assert all(np.isfinite(r["mean_return"]) for r in rows)
    # the smoothness of every agent's actions in every case, and per action in robot units
    assert all(0 <= r["mean_abs_delta"] <= 1 and 0 <= r["hf_energy"] <= 1 for r in rows)
    assert all(list(r["mean_abs_delta_units"]) == ["act_0"] for r in rows)
    table = (run / "evaluate" / "results.md").read_text()
    assert "| ltc19 |" in table and "dt_jitter=0.3" in table
    header = (run / "evaluate" / "results.csv").read_text().splitlines()[0]
    assert header.startswith("task,agent,case,parameters")
    assert header.endswith("vs_teacher,mean_abs_delta,hf_energy")
    assert "smoothness \\|Δa\\| (nominal)" in table
    for png in ("learning_curves.png", "perturbations.png", "ltc_activity.png"):
        assert (run / "evaluate" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # fine-tuning reports whether it helped, with both returns
    ft = json.loads((run / "finetune" / "done.json").read_text())
    assert isinstance(ft["improved"], bool) and ft["improved"] == (
        ft["finetuned_return"] > ft["distilled_return"]
    )
    # export: a loadable policy file with the fitted normaliser, and an ONNX file that agrees
    exported = json.loads((run / "export" / "done.json").read_text())
    policy = Policy.load(exported["policy"])
    assert policy.wiring.units == 19 and policy.spec.obs_dim == 9
    assert not np.allclose(policy.spec.obs_std, 1.0)
    assert policy.provenance["task"] == "idp_tiny"
    assert exported["onnx_max_abs_diff"] < 1e-4
    # `liquid-control export` on the run keeps its export unless told to write it again
    before = Path(exported["policy"]).stat().st_mtime_ns
    again = cli("export", str(run), "--policy-out", str(tmp_path / "copy.lcp"))
    assert again.returncode == 0 and "already written" in again.stdout, again.stderr[-2000:]
    assert Path(exported["policy"]).stat().st_mtime_ns == before
    assert Policy.load(tmp_path / "copy.lcp").content_hash == policy.content_hash
    forced = cli("export", str(run), "--force")
    assert forced.returncode == 0 and Path(exported["policy"]).stat().st_mtime_ns > before
    # `liquid-control eval` on the exported file, nominal and perturbed
    result = cli(
        "eval",
        exported["policy"],
        "--env",
        "InvertedDoublePendulum-v5",
        "--episodes",
        "2",
        "--max-episode-steps",
        "50",
        "--perturb",
        "dt_jitter=0.2",
        "--perturb",
        "obs_noise=0.1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "return" in result.stdout and "dt_jitter" in result.stdout
    bad = cli(
        "eval", exported["policy"], "--env", "InvertedDoublePendulum-v5", "--perturb", "gravity=2"
    )
    assert bad.returncode == 2 and "gravity=2" in bad.stderr


@pytest.mark.slow
def test_run_folder_refuses_to_mix_runs(tiny_teacher: Path, tmp_path: Path) -> None:
    other = dict(TINY, seed=4)
    result = cli(
        "train",
        str(write_config(tmp_path / "o.yaml", other)),
        "--out",
        str(tiny_teacher),
        "--resume",
        "--stages",
        "teacher",
    )
    assert result.returncode == 2 and "another config (seed: 3 -> 4)" in result.stderr
    result = cli(
        "train",
        str(write_config(tmp_path / "t.yaml", TINY)),
        "--out",
        str(tiny_teacher),
        "--stages",
        "teacher",
    )
    assert result.returncode == 2 and "--resume" in result.stderr


def _kill_when(proc: subprocess.Popen, path: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, (
            f"finished before {path.name} appeared: {proc.stderr.read()[-2000:]}"
        )
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_distillation_resumed_after_kill_matches_an_uninterrupted_run(
    tiny_teacher: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    cfg_path = write_config(tmp_path / "tiny.yaml", TINY)

    def distill_args(out: Path) -> tuple[str, ...]:
        stages = ("--stages", "teacher,distill", "--no-progress")
        return ("train", str(cfg_path), "--out", str(out), "--resume", *stages)

    reference = copy_run(tiny_teacher, tmp_path / "reference")
    result = cli(*distill_args(reference))
    assert result.returncode == 0, result.stderr[-3000:]

    run = copy_run(tiny_teacher, tmp_path / "killed")
    proc = cli_started(*distill_args(run))
    _kill_when(proc, run / "distill" / "progress.json")  # killed during round 2
    assert proc.returncode == -signal.SIGKILL
    progress = json.loads((run / "distill" / "progress.json").read_text())  # intact JSON
    assert 1 <= progress["iteration"] < TINY["distill"]["iterations"]
    assert not (run / "distill" / "done.json").exists()
    result = cli(*distill_args(run))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("best_ltc.safetensors", "best_lstm.safetensors"):
        a, b = load_file(reference / "distill" / name), load_file(run / "distill" / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    hist_a = json.loads((reference / "distill" / "history.json").read_text())
    hist_b = json.loads((run / "distill" / "history.json").read_text())
    assert hist_a == hist_b


@pytest.mark.slow
def test_teacher_resumes_from_its_last_checkpoint_after_kill(tmp_path: Path) -> None:
    data = json.loads(json.dumps(TINY))
    data["teacher"]["total_timesteps"] = 4096
    cfg_path = write_config(tmp_path / "tiny.yaml", data)
    run = tmp_path / "run"
    proc = cli_started(
        "train",
        str(cfg_path),
        "--out",
        str(run),
        "--stages",
        "teacher",
        "--no-progress",
    )
    index = run / "teacher" / "ckpt" / "checkpoint.json"
    _kill_when(proc, index)
    state = json.loads(index.read_text())
    assert (run / "teacher" / "ckpt" / state["model"]).exists()
    assert not (run / "teacher" / "done.json").exists()
    result = cli(
        "train",
        str(cfg_path),
        "--out",
        str(run),
        "--resume",
        "--stages",
        "teacher",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads((run / "teacher" / "done.json").read_text())
    assert done["num_timesteps"] >= 4096
    from liquid_control.train.teacher import Teacher

    teacher = Teacher.load(run / "teacher", "PPO")
    assert teacher.act(np.zeros((2, 9))).shape == (2, 1)


def _rows(task: str, smooth: bool) -> list[dict]:
    """results.json rows of a run with a teacher and an LTC, nominal and one perturbed case, with
    the smoothness columns (today's evaluate stage) or without (a run evaluated before them)."""
    rows = []
    for agent, ret, delta, hf in (("teacher", 100.0, 0.2, 0.6), ("ltc19", 90.0, 0.031, 0.05)):
        for case in ("nominal", "obs_noise=0.1"):
            row = {"task": task, "agent": agent, "case": case, "parameters": 5, "episodes": 2,
                   "mean_return": ret, "std_return": 1.0, "min_return": ret - 1,
                   "vs_teacher": ret / 100.0}  # fmt: skip
            if smooth:
                row.update(mean_abs_delta=delta, hf_energy=hf,
                           mean_abs_delta_units={"force": 2 * delta})  # fmt: skip
            rows.append(row)
    return rows


def test_the_results_show_the_nominal_smoothness_of_each_agent(tmp_path: Path) -> None:
    from liquid_control.train.evaluate import write_results

    write_results(tmp_path, _rows("cartpole", smooth=True))
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].endswith("| smoothness \\|Δa\\| (nominal) | hf energy (nominal) |")
    assert table[2].endswith("| 20.0% | 0.60 |") and table[3].endswith("| 3.1% | 0.05 |")
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["task", "agent", "case", "parameters", "episodes", "mean_return",
                          "std_return", "min_return", "vs_teacher"]  # fmt: skip
    assert header[9:] == ["mean_abs_delta", "hf_energy"]  # (per action units: the JSON only)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[2]["mean_abs_delta_units"] == {"force": 0.062}


def test_the_cross_task_table_reads_runs_evaluated_before_smoothness(tmp_path: Path) -> None:
    import importlib.util

    script = importlib.util.spec_from_file_location(
        "results_table", ROOT / "benchmarks" / "results_table.py"
    )
    results_table = importlib.util.module_from_spec(script)
    script.loader.exec_module(results_table)
    for task, smooth in (("cartpole", True), ("rover", False)):
        (tmp_path / task / "evaluate").mkdir(parents=True)
        rows = json.dumps(_rows(task, smooth))
        (tmp_path / task / "evaluate" / "results.json").write_text(rows)
    out = tmp_path / "table.md"
    assert (
        results_table.main([str(tmp_path / "cartpole"), str(tmp_path / "rover"), "--out", str(out)])
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0].endswith(
        "| % of teacher (nominal) | \\|Δa\\| (nominal) | hf energy (nominal) |"
    )
    assert lines[3].endswith("| 90% | 3.1% | 0.05 |")  # cartpole, ltc19
    assert lines[5].endswith("| 90% | - | - |")  # rover: evaluated before smoothness
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[2]["mean_abs_delta"] == "0.031" and rows[-1]["mean_abs_delta"] == "-"


@pytest.fixture
def one_torch_thread():
    """torch on one thread, as the pipeline trains (torch_threads: 1); small BPTT steps are
    several times slower on two contended cores than on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("student", ["ltc", "lstm"])
def test_an_action_rate_weight_makes_the_distilled_student_smoother(
    student: str, one_torch_thread
) -> None:
    """Labels that follow an observation redrawn every step (a chattering teacher): without the
    penalty the student follows the chatter, with a large one its output barely moves."""
    import torch

    from liquid_control.train.distill import (
        Dataset,
        action_rate,
        base_spec,
        fit_normalization,
        make_students,
        train_student,
    )

    rng = np.random.default_rng(0)
    trajectories, steps = 4, 60
    obs = rng.normal(size=(trajectories * steps, 9))
    spec = fit_normalization(base_spec(config_from_dict(TINY)), obs)
    data = Dataset(
        {
            "obs": obs,
            "dt": np.full(len(obs), spec.control_period_s),
            "label": np.tanh(2.0 * obs[:, :1]),  # (network units)
            "traj": np.repeat(np.arange(trajectories), steps),
            "first": np.tile(np.arange(steps) == 0, trajectories),
        }
    )
    x = torch.as_tensor(spec.normalize(obs), dtype=torch.float32).reshape(trajectories, steps, 9)
    everywhere = torch.ones(trajectories, steps)  # (also the elapsed time: one period a step)
    rates = {}
    for weight in (0.0, 10.0):
        tiny = json.loads(json.dumps(TINY))
        tiny["distill"].update(epochs=100, action_rate_weight=weight)  # (about 1 s each)
        cfg = config_from_dict(tiny)
        model = make_students(cfg, spec.obs_dim, spec.action_dim)[student]
        optim = torch.optim.Adam(model.parameters(), lr=cfg.distill.lr)
        train_student(model, optim, data, spec, cfg, seed=1)
        with torch.no_grad():
            y, _ = model(x, None, everywhere)
        rates[weight] = float(action_rate(y, everywhere))
    assert rates[10.0] < 0.25 * rates[0.0], rates


def test_the_action_rate_counts_only_pairs_of_steps_inside_the_loss_mask() -> None:
    import torch

    from liquid_control.train.distill import action_rate

    y = torch.tensor([[[0.0], [1.0], [1.0], [3.0]]])  # changes 1, 0, 2 (squared 1, 0, 4)
    assert float(action_rate(y, torch.ones(1, 4))) == pytest.approx(5 / 3)
    # burn-in over the first two steps: only the pair (2, 3) counts
    assert float(action_rate(y, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))) == pytest.approx(4.0)
    assert float(action_rate(y, torch.zeros(1, 4))) == 0.0


def test_optimiser_state_round_trips_without_pickle(tmp_path):
    import torch

    from liquid_control.train.io import read_state_dicts, write_state_dicts

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
    write_state_dicts(tmp_path / "optim.safetensors", {"adam": opt.state_dict()})
    assert (tmp_path / "optim.safetensors").read_bytes()[:2] not in (b"\x80\x04", b"PK")
    back = read_state_dicts(tmp_path / "optim.safetensors")["adam"]
    fresh = torch.optim.Adam(model.parameters(), lr=1.0)
    fresh.load_state_dict(back)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"] and b["param_groups"][0]["betas"] == (0.8, 0.95)
    for i, s in a["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(b["state"][i][k], v)


@pytest.mark.slow
def test_a_teacher_on_worker_processes_is_the_teacher_of_one_process(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    from liquid_control.train.pipeline import run_pipeline

    models = []
    for subproc in (False, True):
        data = json.loads(json.dumps(TINY))
        data["teacher"] = {**data["teacher"], "subproc_envs": subproc, "total_timesteps": 1024}
        run = tmp_path / f"subproc_{subproc}"
        run_pipeline(config_from_dict(data), run, stages=("teacher",), progress=False)
        models.append(PPO.load(run / "teacher" / "model.zip", device="cpu").policy.state_dict())
    # the envs stepped elsewhere, the same training: equal to float32 rounding (3e-8 measured)
    worst = max(float((v - models[1][k]).abs().max()) for k, v in models[0].items())
    assert worst < 1e-5, worst


def test_a_run_from_before_a_new_config_key_still_resumes(tmp_path: Path) -> None:
    from liquid_control.train.io import write_json
    from liquid_control.train.pipeline import RunFolderError, prepare_run_folder

    cfg = config_from_dict(TINY)
    old = cfg.to_dict()
    del old["teacher"]["subproc_envs"]  # (keys added since, at their defaults)
    del old["distill"]["action_rate_weight"]
    write_json(tmp_path / "config.json", old)
    assert prepare_run_folder(cfg, tmp_path, resume=True) == tmp_path
    changed = config_from_dict({**TINY, "seed": 9})
    with pytest.raises(RunFolderError, match=r"seed: 3 -> 9"):
        prepare_run_folder(changed, tmp_path, resume=True)


def test_timings_keep_the_part_of_a_stage_before_a_kill(tmp_path: Path) -> None:
    import time

    from liquid_control.train.io import read_json
    from liquid_control.train.pipeline import StageClock

    path = tmp_path / "timings.json"
    first = StageClock(path, {}, "teacher", every_s=0.05)
    time.sleep(0.3)
    killed = read_json(path)  # what a kill -9 now would leave (the clock is never stopped)
    assert 0.15 <= killed["teacher"] <= 0.4 and "teacher_cpu" in killed
    first._done.set()  # (the killed process's clock writes no more)
    first._thread.join()
    resumed = StageClock(path, read_json(path), "teacher", every_s=10.0)
    time.sleep(0.1)
    part = resumed.stop()
    total = read_json(path)["teacher"]
    assert part == pytest.approx(0.1, abs=0.08)
    # the killed part and the resumed part add up (the killed clock may have written once more)
    assert total == pytest.approx(killed["teacher"] + part, abs=0.06)
