"""`liquid-control train | eval | imitate | export` subcommands."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="run the training pipeline of a task YAML (teacher, distill, finetune, evaluate, export)",
    )
    p.add_argument("config", help="training YAML, e.g. config/train/cartpole.yaml")
    p.add_argument("--out", required=True, help="run folder (created; holds every stage's output)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated subset of teacher,distill,finetune,evaluate,export",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("eval", help="evaluate a policy file on an env, nominal or perturbed")
    p.add_argument("policy", help="policy file (.lcp)")
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. LiquidControl/RoverLane-v0")
    p.add_argument("--episodes", type=int, default=10, help="one seed per episode (>= 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=100_000,
        help="first episode seed (default 100000, as the evaluate stage of training)",
    )
    p.add_argument(
        "--perturb",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="obs_noise=0.1, action_latency=1, mass_scale=1.2, friction_scale=0.7, dt_jitter=0.3 (repeatable)",
    )
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser(
        "imitate", help="train the LTC (and the LSTM) by BPTT on recorded demonstrations"
    )
    p.add_argument("datasets", nargs="+", help="dataset folders of `liquid-control dataset`")
    p.add_argument("--config", required=True, help="training YAML (student, distill, imitate)")
    p.add_argument("--out", required=True, help="run folder (imitate/ is written in it)")
    p.add_argument("--resume", action="store_true", help="continue from the last round")
    p.add_argument(
        "--init",
        default=None,
        metavar="POLICY",
        help="fine-tune this policy (.lcp, e.g. sim-trained) on the logs, within the forgetting "
        "guard (imitate.keep_sim_return of its return on the config's env)",
    )
    p.add_argument(
        "--mix-sim",
        default=None,
        metavar="RUN",
        help="a run folder of `liquid-control train`: each round also trains on "
        "imitate.mix_sim_steps DAgger steps in its sim, labelled by its teacher",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_imitate)

    p = subparsers.add_parser(
        "export", help="write the policy file and ONNX model of a trained run"
    )
    p.add_argument("run", help="run folder of `liquid-control train`")
    p.add_argument("--policy-out", default=None, help="copy the policy file here too")
    p.add_argument("--onnx-out", default=None, help="copy the ONNX file here too")
    p.add_argument(
        "--force", action="store_true", help="write the run's export again even if it is there"
    )
    p.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .pipeline import STAGES, RunFolderError, run_pipeline

    try:
        cfg = load_config(args.config)
        stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGES
        out = run_pipeline(
            cfg, args.out, resume=args.resume, stages=stages, progress=not args.no_progress
        )
    except (ConfigError, RunFolderError) as exc:
        print(f"liquid-control train: {exc}", file=sys.stderr)
        return 2
    summary = out / "evaluate" / "results.md"
    if summary.exists():
        print(summary.read_text())
    print(f"run folder: {out}")
    return 0


def _imitate(args: argparse.Namespace) -> int:
    from ..core.policy import Policy
    from ..core.policy_file import PolicyFileError
    from ..core.spec import SpecError
    from ..data.dataset import DatasetError
    from .config import ConfigError, load_config
    from .imitate import imitate

    try:
        cfg = load_config(args.config)
        init = Policy.load(args.init) if args.init else None
        done = imitate(
            cfg, args.datasets, args.out, args.resume, not args.no_progress, init, args.mix_sim
        )
    except (ConfigError, DatasetError, SpecError, PolicyFileError) as exc:
        print(f"liquid-control imitate: {exc}", file=sys.stderr)
        return 2
    if done.get("initial"):
        i = done["initial"]
        ret = f", return {i['return']:.2f}" if i.get("return") is not None else ""
        print(f"initial policy: validation loss {i['val_loss']:.5f}{ret}")
    for name, b in done["best"].items():
        ret = f", return {b['return']:.2f}" if b.get("return") is not None else ""
        print(f"{name}: validation loss {b['val_loss']:.5f} (round {b['round']}){ret}")
    print(f"{done['ticks']} ticks ({done['demonstration_s']:.0f} s) of demonstration, "
          f"{done['rounds']} rounds; {done['labels_clipped']} labels clipped to the limits")  # fmt: skip
    print(f"policy: {done['policy']}")
    return 0


def parse_perturbations(items: list[str]) -> dict[str, float]:
    from .config import PERTURBATIONS, check_perturbation

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in PERTURBATIONS:
            raise ValueError(
                f"--perturb: expected NAME=VALUE with NAME in {list(PERTURBATIONS)}, got {item!r}"
            )
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--perturb {name}: expected a number, got {value!r}") from None
        out[name] = check_perturbation(f"--perturb {name}", name, number)
    return out


def _eval(args: argparse.Namespace) -> int:
    from ..core.policy import Policy
    from ..core.policy_file import PolicyFileError
    from .config import EnvConfig
    from .envs import make_env_checked
    from .evaluate import PolicyAgent, run_episodes

    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes: expected a number >= 1, got {args.episodes}")
        if args.max_episode_steps is not None and args.max_episode_steps < 1:
            raise ValueError(
                f"--max-episode-steps: expected a number >= 1, got {args.max_episode_steps}"
            )
        perturb = parse_perturbations(args.perturb)
        policy = Policy.load(args.policy)
        env_cfg = EnvConfig(id=args.env, max_episode_steps=args.max_episode_steps)
        env = make_env_checked(env_cfg, f"--env {args.env}: cannot make this gymnasium env")
        have = (env.observation_space.shape, env.action_space.shape)
        env.close()
        want = ((policy.spec.obs_dim,), (policy.spec.action_dim,))
        if have != want:
            trained = policy.provenance.get("env")
            where = f", trained on {trained}" if trained else ""
            raise ValueError(
                f"--env {args.env} does not fit {args.policy}{where}: the env has observations "
                f"{have[0]} and actions {have[1]}, the policy expects {want[0]} and {want[1]}"
            )
    except (ValueError, PolicyFileError) as exc:
        print(f"liquid-control eval: {exc}", file=sys.stderr)
        return 2
    returns = run_episodes(
        PolicyAgent(policy), env_cfg, args.episodes, args.seed, perturb, obs_std=policy.spec.obs_std
    )
    import numpy as np

    print(
        f"{args.policy} on {args.env} {perturb or 'nominal'}: return {np.mean(returns):.2f} "
        f"+- {np.std(returns):.2f} over {len(returns)} episodes (min {np.min(returns):.2f}, max {np.max(returns):.2f})"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from .config import config_from_dict
    from .export import export_run
    from .io import read_json

    run = Path(args.run)
    for need in ("config.json", "distill/done.json"):
        if not (run / need).is_file():
            what = "a run folder" if need == "config.json" else "a distilled student"
            print(f"liquid-control export: {run} holds no {need}: expected {what} of "
                  "`liquid-control train`", file=sys.stderr)  # fmt: skip
            return 2
    cfg = config_from_dict(
        {k: v for k, v in read_json(run / "config.json").items() if k != "source"}
    )
    done = run / "export" / "done.json"
    if done.is_file() and not args.force:  # (the run's own export is not silently rewritten)
        record = read_json(done)
        files = {k: Path(record[k]) for k in ("policy", "onnx") if record.get(k)}
        print(
            f"export: already written ({record.get('content_hash', '')}); --force writes it again"
        )
    else:
        files = export_run(cfg, run)
    for key, dest in (("policy", args.policy_out), ("onnx", args.onnx_out)):
        if dest and files.get(key):
            shutil.copyfile(files[key], dest)
    for key, path in files.items():
        print(f"{key}: {path}")
    return 0
