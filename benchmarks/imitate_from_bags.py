"""Imitation from a demonstration bag made the way a user would, and the curve of closed-loop
return against minutes of demonstration, for the LTC-19 and the LSTM-19.

    .venv/bin/python benchmarks/imitate_from_bags.py [--robot rover|cartpole] [--minutes 10] [--seeds 0,1,2]

1. The MuJoCo sim node runs the robot on sim time over real DDS (`real_time_factor` 1.5: faster starved the
   operator of CPU on 2 cores, and its late commands showed as stale stretches in the dataset). An
   operator, standing in for a person with a joystick, drives it: the policy node with the
   robot's shipped policy, whose commands the sim applies with Gaussian noise (`command_noise_std`
   0.1 of each action's half range), so the demonstrations visit the states a shaky hand leads
   to while their labels are the operator's intended commands. `liquid-control record` writes the spec's topics, /clock and the sim's
   ~/episode reports into an MCAP bag, which is then converted to sqlite3 with rosbags.
2. `liquid-control dataset` on the sqlite3 copy (the MCAP one must give the same arrays).
3. `imitate` (config/train/<robot>_imitate.yaml) on the first 1, 2, 5 and 10 minutes of it; each student's closed-loop return over
   10 nominal episodes (seeds 100000+) of the gym env, against the operator's return on the same
   episodes (the sim node's reports over DDS are printed too). With `--seeds`, the longest
   demonstration is trained on again with the other training seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from liquid_control.core.policy import Policy  # noqa: E402
from liquid_control.data.dataset import Dataset, build_dataset  # noqa: E402
from liquid_control.demo import NodeProcess  # noqa: E402

POLICIES = {"rover": "rover_ltc19.lcp", "cartpole": "cartpole_ltc19.lcp"}
NOISE = 0.1  # command noise, fraction of each action's half range


def record_demonstration(robot: str, out: Path, minutes: float, rtf: float) -> Path:
    bag = out / "demo_mcap"
    if bag.exists():
        return bag
    wall = minutes * 60.0 / rtf
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    policy = REPO / "policies" / POLICIES[robot]
    sim = NodeProcess(
        "liquid_control.ros.sim_node",
        {"robot": robot, "seed": 7, "real_time_factor": rtf, "command_noise_std": NOISE},
        logs / "sim.log",
    )
    op = NodeProcess(
        "liquid_control.ros.policy_node",
        {"policy_path": str(policy), "use_sim_time": True, "estop_required_at_start": False,
         "estop_discovery_s": 0.0},
        logs / "operator.log",
    )  # fmt: skip
    part = Path(str(bag) + ".part")
    shutil.rmtree(part, ignore_errors=True)  # (a run killed while recording)
    try:
        time.sleep(3.0)  # (both up and matched before the recording starts)
        rec = subprocess.run(
            [sys.executable, "-m", "liquid_control.cli", "record", "--spec", str(policy), "-o",
             str(part), "--duration", str(wall), "--use-sim-time",
             "--topic", "/sim_node/episode"],
            cwd=REPO, capture_output=True, text=True, timeout=wall + 120,
        )  # fmt: skip
    finally:  # (a sim node left running would publish its /clock into the next run)
        op.stop()
        sim.stop()
    if rec.returncode != 0:
        raise SystemExit(f"record failed:\n{rec.stdout}\n{rec.stderr}")
    print(rec.stdout)
    shutil.move(part, bag)
    return bag


def to_sqlite3(src: Path, dst: Path) -> Path:
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    if dst.exists():
        return dst
    with Reader(src) as r, Writer(dst, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest) for c in r.connections}  # fmt: skip
        for c, t, raw in r.messages():
            w.write(conns[c.id], t, raw)
    return dst


def operator_returns(bag: Path) -> list[float]:
    from liquid_control.data.bag import Bag

    out = []
    with Bag.open(bag) as b:
        for m in b.messages(["/sim_node/episode"]):
            info = json.loads(m.msg.data)
            out.append(float(info["return"]))
    return out


def first_minutes(data: Dataset, minutes: float) -> Dataset:
    keep = np.cumsum(data.dt) <= minutes * 60.0 + 1e-9
    return Dataset(data.spec, data.obs[keep], data.action[keep], data.dt[keep], data.t[keep],
                   data.episode[keep], data.reset[keep], data.source, data.settings, {})  # fmt: skip


class NoisyAgent:
    """The operator on the gym env: the policy's actions with the sim node's command noise."""

    def __init__(self, policy: Policy, noise: float, seed: int) -> None:
        from liquid_control.train.rollout import PolicyAgent

        self.inner, self.noise = PolicyAgent(policy), noise
        self.rng = np.random.default_rng(seed)
        self.spec = policy.spec

    def reset(self, n: int) -> None:
        self.inner.reset(n)

    def reset_rows(self, mask: np.ndarray) -> None:
        self.inner.reset_rows(mask)

    def act(self, obs: np.ndarray, dt: np.ndarray) -> np.ndarray:
        a = self.inner.act(obs, dt)
        half = (self.spec.action_high - self.spec.action_low) / 2  # (as the sim node's noise)
        a = a + self.noise * half * self.rng.normal(size=a.shape)
        return np.clip(a, self.spec.action_low, self.spec.action_high)


def closed_loop(policy: Policy, cfg, episodes: int = 10, noise: float = 0.0) -> np.ndarray:
    from liquid_control.train.envs import make_env
    from liquid_control.train.rollout import PolicyAgent, run_episodes

    result = run_episodes(
        NoisyAgent(policy, noise, 5) if noise else PolicyAgent(policy),
        lambda s: make_env(cfg.env, seed=s, randomize=False),
        [100_000 + i for i in range(episodes)],
    )
    return result.returns


def lstm_returns(cfg, run: Path, episodes: int = 10) -> np.ndarray:
    """The best LSTM of an imitate run, in closed loop on the same seeds as the LTC."""
    from liquid_control.core.spec import InterfaceSpec
    from liquid_control.train.distill import make_students
    from liquid_control.train.envs import make_env
    from liquid_control.train.io import read_json, read_tensors
    from liquid_control.train.rollout import TorchStudentAgent, run_episodes

    spec = InterfaceSpec.from_dict(read_json(run / "imitate" / "spec.json"))
    model = make_students(cfg, spec.obs_dim, spec.action_dim)["lstm"]
    model.load_state_dict(read_tensors(run / "imitate" / "best_lstm.safetensors"))
    model.eval()
    result = run_episodes(
        TorchStudentAgent(model, spec),
        lambda s: make_env(cfg.env, seed=s, randomize=False),
        [100_000 + i for i in range(episodes)],
    )
    return result.returns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robot", choices=sorted(POLICIES), default="rover")
    ap.add_argument("--minutes", type=float, default=10.0, help="demonstration length (sim time)")
    ap.add_argument("--curve", default="1,2,5,10", help="minutes of demonstration to train on")
    ap.add_argument("--seeds", default="0", help="training seeds at the longest demonstration")
    ap.add_argument("--rtf", type=float, default=1.5, help="sim real-time factor")
    ap.add_argument("--out", default=None, help="default runs/imitate_<robot>")
    args = ap.parse_args()
    policy_path = REPO / "policies" / POLICIES[args.robot]
    import torch

    from liquid_control.train.config import load_config
    from liquid_control.train.imitate import imitate

    torch.set_num_threads(1)
    out = REPO / (args.out or f"runs/imitate_{args.robot}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    mcap = record_demonstration(args.robot, out, args.minutes, args.rtf)
    sqlite = to_sqlite3(mcap, out / "demo_sqlite3")
    shipped = Policy.load(policy_path)
    data = build_dataset([sqlite], shipped.spec)
    same = build_dataset([mcap], data.spec)
    assert np.array_equal(same.obs, data.obs) and np.array_equal(same.action, data.action)
    complete = operator_returns(mcap)  # (the sim reports an episode when it ends)
    dds_op = float(np.mean(complete))
    print(f"demonstration: {data.dt.sum() / 60:.1f} min in {len(data.episodes)} episodes, "
          f"{len(complete)} sim episodes, operator return {dds_op:.1f} over DDS (recorded in "
          f"{time.time() - t0:.0f} s)")  # fmt: skip
    cfg = load_config(REPO / "config" / "train" / f"{args.robot}_imitate.yaml")
    gym_op = closed_loop(shipped, cfg, noise=NOISE)
    op_mean = float(gym_op.mean())  # (the same episodes as the students)
    print(f"operator on the gym env (same 10 seeds as the students): {op_mean:.1f} +- {gym_op.std():.1f}")  # fmt: skip
    rows = []
    for minutes in [float(m) for m in args.curve.split(",")]:
        part = first_minutes(data, minutes)
        folder = out / f"data_{minutes:g}min"
        part.save(folder)
        run = out / f"run_{minutes:g}min"
        t1 = time.time()
        done = imitate(cfg, [folder], run, resume=True, progress=False)
        train_s = time.time() - t1
        ltc = closed_loop(Policy.load(done["policy"]), cfg)
        lstm = lstm_returns(cfg, run)
        rows.append((minutes, ltc, lstm, train_s))
        print(f"{minutes:g} min: LTC {ltc.mean():.1f} +- {ltc.std():.1f} "
              f"({100 * ltc.mean() / op_mean:.0f} % of the operator), LSTM {lstm.mean():.1f} "
              f"+- {lstm.std():.1f}, {done['rounds']} rounds, {train_s:.0f} s")  # fmt: skip
    print(
        "\n| minutes | LTC-19 return | % of operator | LSTM-19 return | % of operator | train s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for m, ltc, lstm, s in rows:
        print(f"| {m:g} | {ltc.mean():.1f} ± {ltc.std():.1f} | {100 * ltc.mean() / op_mean:.0f} % "
              f"| {lstm.mean():.1f} ± {lstm.std():.1f} | {100 * lstm.mean() / op_mean:.0f} % | {s:.0f} |")  # fmt: skip
    longest = max(float(m) for m in args.curve.split(","))
    for seed in [int(x) for x in args.seeds.split(",") if int(x) != cfg.seed]:
        run = out / f"run_{longest:g}min_seed{seed}"
        seeded = dataclasses.replace(cfg, seed=seed)
        done = imitate(seeded, [out / f"data_{longest:g}min"], run, resume=True, progress=False)
        ltc, lstm = closed_loop(Policy.load(done["policy"]), seeded), lstm_returns(seeded, run)
        print(f"{longest:g} min, training seed {seed}: LTC {ltc.mean():.1f} +- {ltc.std():.1f} "
              f"({100 * ltc.mean() / op_mean:.0f} %), LSTM {lstm.mean():.1f} +- {lstm.std():.1f} "
              f"({100 * lstm.mean() / op_mean:.0f} %)")  # fmt: skip
    print(f"operator (the shipped policy + noise): {op_mean:.1f} on the gym env, {dds_op:.1f} "
          f"over DDS ({len(complete)} sim episodes); {(time.time() - t0) / 60:.0f} min in all")  # fmt: skip


if __name__ == "__main__":
    main()
