"""The training config's keys, documented: `liquid-control config schema` prints them (the markdown
is kept in docs/config.md, checked by a test), `liquid-control config show TASK|FILE` prints the
effective config of a YAML with every default filled in.

Every field of every section in train/config.py has an entry in DOCS (a test checks), so a key
cannot be added without saying what it does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from .config import (
    PERTURBATIONS,
    TEACHER_ALGOS,
    ConfigError,
    TrainConfig,
    load_config,
)

DOCS: dict[str, str] = {
    "name": "task name: names the policy file (<name>_ltc<units>.lcp) and the results rows",
    "seed": "seed of the teacher, the students, the rollouts and the wiring draw",
    "torch_threads": "torch CPU threads for training (1: reproducible, and leaves cores free)",
    "source": "",  # (internal: the YAML path; not a key)
    "env": "the gymnasium env",
    "env.id": "gymnasium env id (ours: LiquidControl/CartPoleSwingUp-v0, ...RoverLane-v0, ...)",
    "env.kwargs": "keyword arguments of gymnasium.make (or of our env)",
    "env.wrappers": "training randomisation, the same sections for every env (ours and "
    "gymnasium's MuJoCo tasks): observation_noise, action_latency, control_jitter, "
    "sensor_dropout, domain_randomization (liquid_control/envs/wrappers.py)",
    "env.max_episode_steps": "episode length in control steps (the one place for it)",
    "teacher": "stage 1: the stable-baselines3 MLP teacher",
    "teacher.algo": f"one of {list(TEACHER_ALGOS)}",
    "teacher.total_timesteps": "environment steps of teacher training",
    "teacher.n_envs": "environments stepped side by side",
    "teacher.normalize": "VecNormalize on observations (the statistics travel with the teacher)",
    "teacher.hyperparams": "arguments of the SB3 algorithm's constructor (checked against its "
    "signature: n_steps, batch_size, learning_rate, gamma, ...)",
    "teacher.net_arch": "hidden layer sizes of the actor and critic MLPs",
    "teacher.eval_freq": "environment steps between evaluations (the learning curve; the "
    "best-by-evaluation teacher is kept)",
    "teacher.eval_episodes": "episodes per evaluation",
    "teacher.checkpoint_freq": "environment steps between resumable checkpoints",
    "teacher.subproc_envs": "step the n_envs training envs in parallel worker processes "
    "(SubprocVecEnv; worth it where an env step costs more than the process round trip)",
    "teacher.normalize_actions": "the teacher acts in [-1, 1], rescaled to the env's action "
    "bounds (SB3's advice for PPO: its first actions are then the middle of the bounds, a "
    "standing pose for the Go2, not 0 in robot units)",
    "teacher.log_std_init": "initial log standard deviation of the policy's Gaussian (null: "
    "SB3's default, 0 for PPO, -3 for SAC); -1 explores with std 0.37 of the action half range "
    "under normalize_actions",
    "student": "the LTC student on an NCP wiring (AutoNCP)",
    "student.units": "neurons; the motor neurons are one per action of the env, the rest are "
    "split into command and inter neurons",
    "student.ode_unfolds": "semi-implicit solver steps per control step",
    "student.sparsity_level": "share of possible synapses left out, in [0, 1)",
    "student.wiring_seed": "seed of the wiring draw",
    "distill": "stage 2: DAgger into the LTC (and the LSTM baseline) by truncated BPTT",
    "distill.iterations": "DAgger rounds",
    "distill.steps_per_iteration": "environment steps collected per round",
    "distill.n_envs": "environments rolled out side by side",
    "distill.beta0": "probability of executing the teacher's action in round 0",
    "distill.beta_decay": "beta_k = beta0 * beta_decay**k",
    "distill.window": "truncated BPTT length in steps",
    "distill.burn_in": "steps at the start of a window that only warm the state up (< window)",
    "distill.epochs": "passes over the aggregated data per round",
    "distill.batch_size": "windows per minibatch",
    "distill.lr": "Adam learning rate of the LTC",
    "distill.lstm_lr": "Adam learning rate of the LSTM",
    "distill.grad_clip": "gradient norm clip",
    "distill.action_rate_weight": "action-rate penalty, >= 0: the loss adds this times the mean "
    "squared change of the student's output from one step to the next (network units, steps "
    "after burn-in); smoother commands at some cost in imitation (0: off)",
    "distill.max_dataset_steps": "aggregated steps kept (the oldest trajectories are dropped)",
    "distill.eval_episodes": "closed-loop episodes that select the best student each round",
    "distill.dt_jitter": "relative randomisation of the control period while collecting, in "
    "[0, 1) (teaches the LTC to use the elapsed time)",
    "distill.lstm": "also distill the LSTM of equal neuron count, for comparison",
    "finetune": "stage 3 (optional): recurrent PPO on the LTC actor from the distilled weights",
    "finetune.enabled": "run this stage",
    "finetune.total_timesteps": "environment steps",
    "finetune.n_envs": "environments",
    "finetune.n_steps": "rollout length per env",
    "finetune.window": "sequence length of the recurrent update",
    "finetune.epochs": "passes per rollout",
    "finetune.batch_size": "sequences per minibatch",
    "finetune.lr": "actor learning rate",
    "finetune.critic_lr": "critic learning rate",
    "finetune.gamma": "discount",
    "finetune.gae_lambda": "GAE lambda",
    "finetune.clip_range": "PPO clip range",
    "finetune.ent_coef": "entropy bonus",
    "finetune.init_log_std": "initial log std of the Gaussian policy",
    "finetune.critic_warmup_rollouts": "rollouts that fit the critic only (protects the actor)",
    "finetune.eval_episodes": "closed-loop episodes that decide whether fine-tuning improved",
    "imitate": "`liquid-control imitate`: BPTT on recorded demonstrations (window, burn-in, "
    "batch size, learning rates, clip and action-rate weight from distill)",
    "imitate.max_rounds": "rounds of epochs_per_round passes",
    "imitate.epochs_per_round": "passes over the training windows per round",
    "imitate.val_fraction": "episodes held out for validation, in (0, 1)",
    "imitate.patience": "rounds without a better validation loss before stopping",
    "imitate.eval_episodes": "closed-loop episodes per round on env (0: validation loss only)",
    "imitate.lstm": "also train the LSTM of equal neuron count",
    "imitate.keep_sim_return": "with --init: a round counts only if it keeps this share of the "
    "initial policy's return on env (the guard against forgetting)",
    "imitate.mix_sim_steps": "with --mix-sim RUN: DAgger steps in RUN's sim per round",
    "imitate.mix_sim_max_steps": "with --mix-sim RUN: sim steps kept (newest trajectories)",
    "evaluate": "stage 4: teacher, LTC and LSTM over many seeds, nominal and perturbed",
    "evaluate.episodes": "episodes per case (seeds 100000+)",
    "evaluate.perturbations": f"perturbed cases, some of {list(PERTURBATIONS)}: obs_noise >= 0 "
    "(share of each observation's std), action_latency (whole control steps), mass_scale > 0, "
    "friction_scale > 0, dt_jitter in [0, 1)",
    "export": "stage 5: the policy file and ONNX",
    "export.onnx": "also write the ONNX file of one step, checked against the numpy runtime",
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    inner = ", ".join(_type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{inner}]"
    return f"{inner} or null"


def fields(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, Any, bool]]:
    """(key, type, default, is_section) of every config key, sections first, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if key == "source":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.append((key, "section", None, True))
            out.extend(fields(tp, key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        out.append((key, _type_name(tp), default, False))
    return out


def schema_markdown() -> str:
    lines = [
        "# Training config keys",
        "",
        "Generated by `liquid-control config schema`; `liquid-control config show TASK|FILE` "
        "prints a config with its defaults. Every error names the key, the value and what is "
        "expected (exit code 2), before any work starts.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, tp, default, section in fields():
        doc = DOCS[key].replace("|", "\\|")
        if section:
            lines.append(f"| **{key}** | section | | {doc} |")
        else:
            if default == "(required)":
                shown = "required"
            else:
                shown = "" if default == {} or default == [] else f"`{default!r}`"
            lines.append(f"| `{key}` | {tp} | {shown} | {doc} |")
    return "\n".join(lines) + "\n"


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="training config: every key, or one config in full")
    sub = p.add_subparsers(dest="config_command", required=True)
    q = sub.add_parser("schema", help="every key with its type, default and meaning (markdown)")
    q.set_defaults(func=_schema)
    q = sub.add_parser("show", help="a config with every default filled in (YAML)")
    q.add_argument("config", help="a YAML file, or a task of config/train/ (e.g. cartpole)")
    q.set_defaults(func=_show)


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_markdown())
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    tasks_dir = Path(__file__).resolve().parents[2] / "config" / "train"  # (a checkout's)
    path = Path(args.config)
    if not path.exists() and (tasks_dir / f"{args.config}.yaml").exists():
        path = tasks_dir / f"{args.config}.yaml"
    if not path.is_file():
        tasks = sorted(p.stem for p in tasks_dir.glob("*.yaml"))
        print(f"liquid-control config: {args.config}: no such file or task; tasks: {tasks}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"liquid-control config: {exc}", file=sys.stderr)
        return 2
    data = {k: v for k, v in cfg.to_dict().items() if k != "source"}
    sys.stdout.write(f"# {path} with every default\n")
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0
