"""`liquid-control sweep`: an Optuna study over the student against one teacher, on tiny budgets:
trials in parallel, the table and the Pareto plot, resumed after a kill from its SQLite storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
optuna = pytest.importorskip("optuna", reason="the scale extra is not installed")

from liquid_control.train.sweep import pareto_front  # noqa: E402

pytestmark = pytest.mark.slow
CONFIG = """\
name: idp_sweep
seed: 3
env: {id: InvertedDoublePendulum-v5, max_episode_steps: 100}
teacher: {algo: PPO, total_timesteps: 2048, n_envs: 2, net_arch: [16, 16],
          hyperparams: {n_steps: 256, batch_size: 128, n_epochs: 2},
          eval_freq: 1024, eval_episodes: 2, checkpoint_freq: 1024}
distill: {iterations: 2, steps_per_iteration: 400, n_envs: 2, window: 16, burn_in: 4,
          epochs: 1, batch_size: 16, eval_episodes: 1}
"""


def sweep_cmd(cfg: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "liquid_control.cli", "sweep", str(cfg), "--out", str(out),
            "--episodes", "2", "--no-progress", *args]  # fmt: skip


def study(out: Path):
    return optuna.load_study(
        study_name="liquid_control_sweep", storage=f"sqlite:///{out / 'study.db'}"
    )


def test_pareto_front_keeps_only_the_undominated():
    pts = [(100, 5.0), (200, 9.0), (150, 4.0), (300, 9.0), (50, 1.0)]
    assert sorted(pareto_front(pts)) == [0, 1, 4]


def test_a_sweep_runs_trials_in_parallel_reports_and_resumes_after_a_kill(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "sweep"
    r = subprocess.run(sweep_cmd(cfg, out, "--trials", "2", "--n-jobs", "2", "--seeds", "0,1"),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 and rows[0]["ltc_return"] >= rows[1]["ltc_return"]
    for row in rows:  # (each trial over both seeds, the LTC and the LSTM scored)
        assert len(row["per_seed"]["ltc"]) == 2 and row["lstm_return"] is not None
        assert 0 < row["ltc_parameters"] < row["lstm_parameters"]
        assert (out / "trials" / f"{row['trial']:04d}" / "seed1" / "distill" / "done.json").exists()
    assert "| trial | units |" in (out / "results.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    teacher_done = (out / "base" / "teacher" / "done.json").stat().st_mtime_ns
    # killed during its third trial, the same command continues: the trial is tried again
    proc = subprocess.Popen(sweep_cmd(cfg, out, "--trials", "3", "--seeds", "0,1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "trials" / "0002").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = [t.state for t in study(out).get_trials()]
    assert states.count(optuna.trial.TrialState.RUNNING) == 1
    r = subprocess.run(sweep_cmd(cfg, out, "--trials", "3", "--seeds", "0,1"),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    trials = study(out).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == 3 and len(failed) == 1
    assert failed[0].params in [t.params for t in complete]  # (its parameters tried again)
    assert len(json.loads((out / "results.json").read_text())) == 3
    assert (out / "base" / "teacher" / "done.json").stat().st_mtime_ns == teacher_done
    # a sweep on a teacher already trained: no teacher of its own
    other = tmp_path / "on_teacher"
    r = subprocess.run(sweep_cmd(cfg, other, "--trials", "1", "--teacher", str(out / "base")),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        not (other / "base").exists() and len(json.loads((other / "results.json").read_text())) == 1
    )
    # another config on the same folder is refused, in one line
    cfg.write_text(CONFIG.replace("seed: 3", "seed: 4"))
    r = subprocess.run(sweep_cmd(cfg, out, "--trials", "4"), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 2 and "another config" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # and a teacher of another task
    cfg.write_text(CONFIG.replace("max_episode_steps: 100", "max_episode_steps: 50"))
    r = subprocess.run(sweep_cmd(cfg, tmp_path / "x", "--trials", "1", "--teacher", str(out / "base")),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "its env section differs" in r.stderr, r.stderr[-2000:]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A real local Ray head (2 CPUs) on 127.0.0.1, stopped after the test."""
    pytest.importorskip("ray", reason="the scale extra is not installed")
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = Path(f"/tmp/lc_ray_{os.getpid()}")  # (short: Ray's socket paths have a length limit)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}",
             "--disable-usage-stats"]  # fmt: skip
    r = subprocess.run(start, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_a_sweep_runs_on_a_ray_cluster_and_gathers_results_and_policies(tmp_path, ray_head):
    from liquid_control.core.policy import Policy

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "sweep"
    r = subprocess.run(
        sweep_cmd(cfg, out, "--trials", "2", "--n-jobs", "2", "--ray-address", ray_head),
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 and all(row["host"] for row in rows)
    for row in rows:  # the best LTC of each trial came back from its worker
        policy = Policy.load(row["policy"])
        assert policy.wiring.units == row["units"] and policy.spec.obs_dim == 9
    assert (out / "pareto.png").exists() and "| trial |" in (out / "results.md").read_text()
    # a head that is not there: one line, exit code 2
    r = subprocess.run(sweep_cmd(cfg, tmp_path / "other", "--trials", "1", "--ray-address",
                                 f"127.0.0.1:{_free_port()}"),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "--ray-address" in r.stderr, r.stderr[-2000:]
