"""Distribution shift: the sim-trained cart-pole LTC on a "real" robot unlike the sim, and
fine-tuning it on 5 minutes of that robot's logs, with and without `--mix-sim`.

    .venv/bin/python benchmarks/finetune_shifted.py [--minutes 5] [--episodes 20]

1. The "real" robot is the sim with shifted physics: pole and cart masses x1.3, friction x0.6 and
   one control step of command latency (`liquid-control eval --perturb mass_scale=1.3 ...`).
2. The operator who corrects the policy there is a SAC teacher trained on that robot
   (config/train/cartpole_shifted.yaml, randomised around the shift); it stands in for a person
   with a joystick, with Gaussian noise of 0.1 x each action's scale on their commands.
3. The logs: the shipped sim-trained policy (policies/cartpole_ltc19.lcp) drives the shifted
   robot; on a `--beta` fraction of the ticks the operator's command is executed instead, and the
   operator's command labels every tick (DAgger-style intervention logs), saved as a dataset.
4. `liquid-control imitate LOGS --init policies/cartpole_ltc19.lcp --config
   config/train/cartpole_finetune.yaml`: on `--minutes` of logs alone; on two sessions of half
   that, the second driven by the policy fine-tuned on the first (DAgger on the robot); on the
   logs with `--mix-sim runs/cartpole` (the nominal SAC teacher of config/train/cartpole.yaml
   labels DAgger steps in the nominal sim); and, as the control, with `--mix-sim` on logs from
   the nominal sim (labelled by the nominal teacher), which hold nothing about the shift. The
   guard: a round counts only if it keeps 95 % of the initial policy's return on 4 nominal sim
   episodes (seeds 20000+).
5. Every policy's return over `--episodes` held-out episodes (seeds 30000+) on the shifted and
   on the nominal robot; "recovered" is the share of the shift's loss (the shipped policy's
   nominal return minus its shifted one) that a policy wins back on the shifted robot.

The two teachers are trained first if their run folders lack them (SAC, 80k steps, about 13
min each on one core of 2; `liquid-control train ... --stages teacher`, resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from liquid_control.core.policy import Policy  # noqa: E402

SHIFT = {"mass_scale": 1.3, "friction_scale": 0.6, "action_latency": 1}
SHIPPED = REPO / "policies" / "cartpole_ltc19.lcp"


def ensure_teacher(config: str, run: Path) -> None:
    if (run / "teacher" / "model.zip").exists():
        return
    print(f"training the teacher of {config} into {run} ...", flush=True)
    cmd = [sys.executable, "-m", "liquid_control.cli", "train", str(REPO / config), "--out",
           str(run), "--stages", "teacher", "--no-progress"]  # fmt: skip
    if (run / "config.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)


class Operator:
    """An SB3 teacher with a `Policy`'s step interface (one observation at a time)."""

    def __init__(self, teacher, spec) -> None:
        self.teacher, self.spec = teacher, spec

    def reset(self) -> None:
        pass

    def step(self, obs: np.ndarray, dt: float) -> np.ndarray:
        return self.teacher.act(np.asarray(obs, np.float64)[None])[0]


def returns(agent, cfg, perturb: dict | None, episodes: int) -> np.ndarray:
    from liquid_control.train.envs import make_env
    from liquid_control.train.rollout import run_episodes

    result = run_episodes(
        agent,
        lambda s: make_env(cfg.env, seed=s, randomize=False, perturb=perturb),
        [30_000 + i for i in range(episodes)],
    )
    return result.returns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="minutes of logs (sim time)")
    ap.add_argument("--beta", type=float, default=0.3, help="fraction of ticks the operator takes")
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per robot")
    ap.add_argument("--shifted-run", default="runs/cartpole_shifted", help="operator's run")
    ap.add_argument("--sim-run", default="runs/cartpole", help="nominal run for --mix-sim")
    ap.add_argument("--config", default="config/train/cartpole_finetune.yaml")
    ap.add_argument("--seed", type=int, default=0, help="of the logs and the training")
    ap.add_argument("--out", default=None, help="default runs/finetune_shifted[_seed<N>]")
    args = ap.parse_args()
    import torch

    from liquid_control.train.config import load_config
    from liquid_control.train.imitate import imitate, simulated_demonstrations
    from liquid_control.train.rollout import PolicyAgent, TeacherAgent
    from liquid_control.train.teacher import Teacher

    torch.set_num_threads(1)
    t0 = time.time()
    shifted_run, sim_run = REPO / args.shifted_run, REPO / args.sim_run
    ensure_teacher("config/train/cartpole_shifted.yaml", shifted_run)
    ensure_teacher("config/train/cartpole.yaml", sim_run)
    out = REPO / (args.out or "runs/finetune_shifted" + (f"_seed{args.seed}" if args.seed else ""))
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(REPO / args.config)
    cfg = dataclasses.replace(cfg, seed=cfg.seed + args.seed)
    shipped = Policy.load(SHIPPED)
    operator = Teacher.load(shifted_run / "teacher", "SAC")
    nominal_teacher = Teacher.load(sim_run / "teacher", "SAC")

    def logs(name: str, minutes: float, seed: int, driver, teacher, perturb) -> Path:
        folder = out / name
        if not (folder / "dataset.json").exists():
            data = simulated_demonstrations(
                Operator(teacher, shipped.spec), cfg, minutes * 60.0, noise=0.1,
                seed=seed + 100 * args.seed,
                driver=driver, beta=args.beta, perturb=perturb,
            )  # fmt: skip
            data.save(folder)
            print(f"{name}: {data.dt.sum() / 60:.1f} min in {len(data.episodes)} episodes "
                  f"({'shifted' if perturb else 'nominal'} robot; the operator takes "
                  f"{args.beta:.0%} of the ticks and labels all)", flush=True)  # fmt: skip
        return folder

    rows: list[tuple[str, np.ndarray, np.ndarray, str]] = []

    def measure(name: str, agent, note: str = "") -> None:
        shifted = returns(agent, cfg, SHIFT, args.episodes)
        nominal = returns(agent, cfg, None, args.episodes)
        rows.append((name, shifted, nominal, note))
        print(f"{name}: shifted {shifted.mean():.1f} +- {shifted.std():.1f}, nominal "
              f"{nominal.mean():.1f} +- {nominal.std():.1f} {note}", flush=True)  # fmt: skip

    def tune(name: str, folders: list[Path], run: str, mix: Path | None) -> Policy:
        t1 = time.time()
        done = imitate(cfg, folders, out / run, resume=True, progress=False, init=shipped,
                       mix_sim=mix)  # fmt: skip
        best = done["best"]["ltc"]
        changed = max(done["relative_change"].values()) if done["relative_change"] else 0.0
        note = (f"(round {best['round']} of {done['rounds']}, guard return {best['return']:.1f} "
                f"vs initial {done['initial']['return']:.1f}, largest relative change "
                f"{changed:.3f}, {time.time() - t1:.0f} s)")  # fmt: skip
        policy = Policy.load(done["policy"])
        measure(name, PolicyAgent(policy), note)
        return policy

    m = args.minutes
    measure("sim-trained LTC-19 (shipped)", PolicyAgent(shipped))
    # one session: the shipped policy drives the shifted robot for `minutes`
    whole = logs(f"logs_{m:g}min", m, 11, shipped, operator, SHIFT)
    tune(f"fine-tuned on {m:g} min of logs", [whole], "run_logs", None)
    # DAgger on the robot: two sessions of half the time, the second driven by the policy
    # fine-tuned on the first
    first = logs(f"logs_{m / 2:g}min_s1", m / 2, 21, shipped, operator, SHIFT)
    tuned = tune(f"fine-tuned on session 1 ({m / 2:g} min)", [first], "run_s1", None)
    second = logs(f"logs_{m / 2:g}min_s2", m / 2, 22, tuned, operator, SHIFT)
    tune(f"fine-tuned on sessions 1+2 ({m:g} min)", [first, second], "run_s2", None)
    tune(f"fine-tuned on {m:g} min of logs, --mix-sim", [whole], "run_mix_sim", sim_run)
    # the control: the same recipe with logs from the nominal sim (the nominal teacher labels),
    # which hold nothing about the shift
    nominal = logs(f"nominal_logs_{m:g}min", m, 31, shipped, nominal_teacher, None)
    tune("control: nominal-sim logs, --mix-sim", [nominal], "run_nominal_mix_sim", sim_run)
    measure("operator (SAC on the shifted robot)", TeacherAgent(operator))
    measure("nominal SAC teacher", TeacherAgent(nominal_teacher))

    # the shift's loss: the sim policy's nominal return minus its return on the shifted robot
    base, before = rows[0][1].mean(), rows[0][2].mean()
    gap = before - base
    print(f"\nseed {args.seed}; {args.episodes} episodes per robot (seeds 30000+); shifted: masses x1.3, friction "
          f"x0.6, 1 step latency; {args.minutes:g} min of logs\n")  # fmt: skip
    print("| policy | shifted robot | nominal sim | shift loss recovered |")
    print("|---|---:|---:|---:|")
    for name, shifted, nominal, _ in rows:
        rec = f"{100 * (shifted.mean() - base) / gap:.0f} %" if abs(gap) > 1e-9 else "-"
        print(f"| {name} | {shifted.mean():.1f} ± {shifted.std():.1f} | "
              f"{nominal.mean():.1f} ± {nominal.std():.1f} | {rec} |")  # fmt: skip
    print(f"\n{(time.time() - t0) / 60:.0f} min in all")


if __name__ == "__main__":
    main()
