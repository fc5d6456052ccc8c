"""`liquid-control sweep CONFIG --trials N --out SWEEP`: an Optuna search over the student (size,
sparsity, ODE unfolds, learning rate, BPTT window, DAgger schedule), each trial over one or more
training seeds, against one teacher trained once.

The teacher is the expensive part and does not depend on the student, so it is trained (or
resumed) once in ``SWEEP/base``; a trial is the distill stage with the trial's student settings
in ``SWEEP/trials/<number>/seed<seed>`` (the teacher linked in), scored by the closed-loop return
of its best LTC on held-out episodes (seeds 200000+, not the ones that selected it), averaged
over the seeds. The LSTM of equal neuron count is scored on the same episodes, for the Pareto
plot of parameters against return.

Storage is SQLite (``SWEEP/study.db``): a killed sweep continues where it was with the same
command; trials a kill left running are marked failed and their parameters are tried again.
``--n-jobs K`` runs K trials at once on this machine. Files: ``results.md`` (every finished
trial, best first), ``results.json`` and ``pareto.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, TrainConfig, load_config
from .io import atomic_write_bytes, read_json, write_json

HELD_OUT_SEED = 200_000
STUDY = "liquid_control_sweep"


def suggest(trial: Any, act_dim: int) -> None:
    """The search space, define-by-run (an Optuna trial; Ray Tune's OptunaSearch calls it too)."""
    trial.suggest_int("units", max(8, act_dim + 4), max(32, act_dim + 8))
    trial.suggest_float("sparsity_level", 0.2, 0.8)
    trial.suggest_int("ode_unfolds", 2, 8)
    trial.suggest_float("lr", 1e-3, 3e-2, log=True)
    trial.suggest_categorical("window", [16, 24, 32, 48])
    trial.suggest_float("beta_decay", 0.3, 0.8)


def with_params(cfg: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The trial's config: the sampled student and distill settings in place."""
    s, d = cfg.student, cfg.distill
    window = int(params["window"])
    student = dataclasses.replace(s, units=int(params["units"]),
                                  sparsity_level=float(params["sparsity_level"]),
                                  ode_unfolds=int(params["ode_unfolds"]))  # fmt: skip
    distill = dataclasses.replace(d, lr=float(params["lr"]), window=window,
                                  burn_in=min(d.burn_in, window // 4),
                                  beta_decay=float(params["beta_decay"]))  # fmt: skip
    return dataclasses.replace(cfg, student=student, distill=distill)


def _parameters(name: str, model: Any) -> int:
    """Trainable parameters as the results table counts them (the LTC: its wiring's synapses)."""
    return int(model.wiring.parameter_count() if name == "ltc" else model.parameter_count())


def _checked_teacher_run(cfg: TrainConfig, run: Path) -> Path:
    if not (run / "teacher" / "done.json").is_file() or not (run / "config.json").is_file():
        raise ConfigError(f"--teacher {run}: expected a run folder with a finished teacher stage")
    from .config import config_from_dict

    stored = {k: v for k, v in read_json(run / "config.json").items() if k != "source"}
    theirs = config_from_dict(stored).to_dict()  # (with today's defaults filled in)
    mine = cfg.to_dict()
    for section in ("env", "teacher"):
        if theirs.get(section) != mine[section]:
            raise ConfigError(
                f"--teacher {run}: its {section} section differs from the sweep config's; the "
                "student would learn from a teacher of another task"
            )
    return run.resolve()


def run_trial(cfg: TrainConfig, base: Path, folder: Path, seeds: list[int], episodes: int) -> dict:
    """Distill the trial's student for each seed (resumable) and score it on held-out episodes."""
    from .distill import evaluate_student, load_best
    from .pipeline import run_pipeline

    scores: dict[str, list[float]] = {}
    params: dict[str, int] = {}
    for seed in seeds:
        seeded = dataclasses.replace(cfg, seed=seed)
        run = folder / f"seed{seed}"
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "teacher").exists():
            os.symlink((base / "teacher").resolve(), run / "teacher", target_is_directory=True)
        resume = (run / "config.json").exists()
        run_pipeline(seeded, run, resume=resume, stages=("distill",), progress=False)
        students, spec = load_best(seeded, run)
        for name, model in students.items():
            ret = evaluate_student(model, spec, seeded, episodes, seed=HELD_OUT_SEED)
            scores.setdefault(name, []).append(ret)
            params[name] = _parameters(name, model)
    return {
        "returns": {k: float(np.mean(v)) for k, v in scores.items()},
        "per_seed": scores,
        "parameters": params,
    }


def sweep(
    cfg: TrainConfig,
    out: str | os.PathLike,
    trials: int,
    seeds: list[int],
    n_jobs: int = 1,
    episodes: int = 5,
    progress: bool = True,
    ray_address: str | None = None,
    teacher_run: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) the study to `trials` finished trials; returns the finished trials.
    With `ray_address`, the trials run on that Ray cluster (see `_sweep_on_ray`); with
    `teacher_run` (a run folder of `liquid-control train` whose teacher is done, on the same env
    and teacher settings) that teacher is used instead of training one."""
    import optuna

    from .pipeline import run_pipeline

    if ray_address is not None:
        _check_ray_address(ray_address)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stored = out / "sweep.json"
    mine = {"config": {k: v for k, v in cfg.to_dict().items() if k != "source"},
            "seeds": seeds, "episodes": episodes,
            "teacher_run": str(Path(teacher_run).resolve()) if teacher_run else None}  # fmt: skip
    if stored.exists() and read_json(stored) != mine:
        raise ConfigError(
            f"{out}: this sweep was started with another config, seeds, episodes or --teacher; "
            "use another --out"
        )
    base = out / "base"
    if teacher_run is not None:
        base = _checked_teacher_run(cfg, Path(teacher_run))
    write_json(stored, mine)
    if teacher_run is None:
        run_pipeline(cfg, base, resume=(base / "config.json").exists(), stages=("teacher",),
                     progress=progress)  # fmt: skip
    from .distill import base_spec

    act_dim = base_spec(cfg).action_dim
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray_address is not None:
        return _sweep_on_ray(cfg, out, trials, seeds, n_jobs, episodes, act_dim, ray_address)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        load_if_exists=True,
    )
    # a kill leaves trials RUNNING: fail them and try their parameters again
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)

    def objective(trial: Any) -> float:
        suggest(trial, act_dim)
        trial_cfg = with_params(cfg, trial.params)
        result = run_trial(trial_cfg, base, out / "trials" / f"{trial.number:04d}", seeds, episodes)
        for key, value in (("returns", result["returns"]), ("parameters", result["parameters"]),
                           ("per_seed", result["per_seed"])):  # fmt: skip
            trial.set_user_attr(key, value)
        return result["returns"]["ltc"]

    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    if trials > done:
        study.optimize(objective, n_trials=trials - done, n_jobs=n_jobs, gc_after_trial=True,
                       show_progress_bar=progress)  # fmt: skip
    rows = []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        rows.append(_row(t.number, t.params, t.user_attrs))
    return report(rows, out)


def _row(number: int, params: dict, result: dict) -> dict[str, Any]:
    return {"trial": number, **params, "ltc_return": result["returns"]["ltc"],
            "lstm_return": result["returns"].get("lstm"),
            "ltc_parameters": result["parameters"]["ltc"],
            "lstm_parameters": result["parameters"].get("lstm"),
            "per_seed": result["per_seed"]}  # fmt: skip


def _ray_trial(params: dict, cfg_dict: dict, teacher: dict, seeds: list, episodes: int) -> None:
    """One trial on a Ray worker: the teacher's files (sent with the trial: no shared disk
    needed) in a scratch folder, the distill runs, the score and the best LTC policy reported
    back to the driver."""
    import base64
    import tempfile

    from ray import tune

    from .config import config_from_dict
    from .distill import load_best

    cfg = with_params(config_from_dict(cfg_dict), params)
    with tempfile.TemporaryDirectory(prefix="lc_trial_") as tmp:
        base = Path(tmp) / "base"
        (base / "teacher").mkdir(parents=True)
        for name, data in teacher.items():
            (base / "teacher" / name).write_bytes(data)
        result = run_trial(cfg, base, Path(tmp) / "trial", seeds, episodes)
        best = max(range(len(seeds)), key=lambda i: result["per_seed"]["ltc"][i])
        seeded = dataclasses.replace(cfg, seed=seeds[best])
        students, spec = load_best(seeded, Path(tmp) / "trial" / f"seed{seeds[best]}")
        path = Path(tmp) / "best.lcp"
        students["ltc"].to_policy(spec).save(path)
        policy = base64.b64encode(path.read_bytes()).decode()
    tune.report({"ltc_return": result["returns"]["ltc"], "result": result, "policy": policy,
                 "host": os.uname().nodename})  # fmt: skip


def _check_ray_address(address: str) -> None:
    """A host:port with nothing listening is a one-line error now (ray.init would retry for
    minutes), before the teacher trains."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit():
        import socket

        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5.0).close()
        except OSError as exc:
            raise ConfigError(
                f"--ray-address {address}: no Ray head answers there ({exc.strerror or exc}); "
                "start one with `ray start --head` or give its host:port"
            ) from None


def _sweep_on_ray(
    cfg: TrainConfig,
    out: Path,
    trials: int,
    seeds: list[int],
    n_jobs: int,
    episodes: int,
    act_dim: int,
    address: str,
) -> list[dict[str, Any]]:
    """The same trials on a Ray cluster: Ray Tune with its Optuna searcher (the same
    define-by-run space), one trial per worker CPU, at most `n_jobs` at once; results, and
    each trial's best LTC policy (``trials/<number>/best.lcp``), gathered back here. A killed
    Ray sweep continues from ``SWEEP/ray`` with the same command."""
    import base64
    import functools

    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: cannot connect ({exc})") from None
    try:
        teacher = {f.name: f.read_bytes() for f in (out / "base" / "teacher").iterdir()
                   if f.is_file() and f.name in ("model.zip", "obs_norm.json", "actions.json", "done.json")}  # fmt: skip
        trainable = tune.with_parameters(
            _ray_trial, cfg_dict={k: v for k, v in cfg.to_dict().items() if k != "source"},
            teacher=teacher, seeds=seeds, episodes=episodes,
        )  # fmt: skip
        trainable = tune.with_resources(trainable, {"cpu": 1})
        storage = (out / "ray").resolve()
        name = "sweep"
        if tune.Tuner.can_restore(storage / name):
            tuner = tune.Tuner.restore(str(storage / name), trainable, resume_errored=True,
                                       restart_errored=False)  # fmt: skip
        else:
            search = OptunaSearch(space=functools.partial(suggest, act_dim=act_dim),
                                  metric="ltc_return", mode="max", seed=cfg.seed)  # fmt: skip
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search, num_samples=trials, max_concurrent_trials=n_jobs
                ),  # fmt: skip
                run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0),
            )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    rows = []
    for number, res in enumerate(grid):
        if res.error is not None or not res.metrics or "result" not in res.metrics:
            continue
        params = {k: res.config[k] for k in ("units", "sparsity_level", "ode_unfolds", "lr",
                                             "window", "beta_decay")}  # fmt: skip
        folder = out / "trials" / f"ray{number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "best.lcp", base64.b64decode(res.metrics["policy"]))
        write_json(folder / "trial.json", {"params": params, **res.metrics["result"],
                                           "host": res.metrics.get("host")})  # fmt: skip
        rows.append({**_row(number, params, res.metrics["result"]), "host": res.metrics.get("host"),
                     "policy": str(folder / "best.lcp")})  # fmt: skip
    return report(rows, out)


def report(rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """results.md, results.json and pareto.png of the finished trials (best first)."""
    rows.sort(key=lambda r: -r["ltc_return"])
    write_json(out / "results.json", rows)
    keys = ["units", "sparsity_level", "ode_unfolds", "lr", "window", "beta_decay"]
    lines = [
        "| trial | "
        + " | ".join(keys)
        + " | LTC return | LTC params | LSTM return | LSTM params |",
        "|---:|" + "---:|" * (len(keys) + 4),
    ]
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lstm = f"{r['lstm_return']:.1f}" if r["lstm_return"] is not None else "-"
        lines.append(f"| {r['trial']} | " + " | ".join(cells) + f" | {r['ltc_return']:.1f} | "
                     f"{r['ltc_parameters']} | {lstm} | {r['lstm_parameters'] or '-'} |")  # fmt: skip
    atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    if rows:
        _pareto_plot(rows, out / "pareto.png")
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both fewer parameters and more return."""
    front = []
    for i, (p, r) in enumerate(points):
        if not any((q <= p and s >= r) and (q < p or s > r) for q, s in points):
            front.append(i)
    return front


def _pareto_plot(rows: list[dict], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, colour in (("ltc", "LTC", "tab:blue"), ("lstm", "LSTM", "tab:orange")):
        pts = [(r[f"{key}_parameters"], r[f"{key}_return"]) for r in rows
               if r.get(f"{key}_return") is not None]  # fmt: skip
        if not pts:
            continue
        ax.scatter(*zip(*pts, strict=True), label=label, color=colour, alpha=0.7)
        front = sorted(pts[i] for i in pareto_front(pts))
        ax.step(*zip(*front, strict=True), where="post", color=colour, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("held-out return")
    ax.set_title("sweep: parameters against return (lines: Pareto fronts)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="Optuna search over the student (size, sparsity, unfolds, lr, window, DAgger)"
    )
    p.add_argument("config", help="training YAML (its teacher is trained once)")
    p.add_argument("--trials", type=int, required=True, help="finished trials to reach")
    p.add_argument("--out", required=True, help="sweep folder (study.db, trials/, results)")
    p.add_argument("--seeds", default="0", help="training seeds per trial, e.g. 0,1,2")
    p.add_argument("--episodes", type=int, default=5, help="held-out episodes per seed")
    p.add_argument("--n-jobs", type=int, default=1, help="trials at once (here, or on Ray)")
    p.add_argument(
        "--teacher",
        default=None,
        metavar="RUN",
        help="use the finished teacher of this run folder (same env and teacher sections)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="run the trials on this Ray cluster (host:port of its head, or 'auto')",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from .pipeline import RunFolderError

    try:
        for name in ("trials", "episodes", "n_jobs"):
            if getattr(args, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}"
                )
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(
                f"--seeds: expected integers like 0,1,2, got {args.seeds!r}"
            ) from None
        cfg = load_config(args.config)
        rows = sweep(cfg, args.out, args.trials, seeds, args.n_jobs, args.episodes,
                     not args.no_progress, args.ray_address, args.teacher)  # fmt: skip
    except (ConfigError, RunFolderError) as exc:
        print(f"liquid-control sweep: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(
        f"{len(rows)} trials; best LTC return {rows[0]['ltc_return']:.1f} (trial {rows[0]['trial']})"
    )
    return 0
