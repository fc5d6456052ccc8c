"""The training pipeline: teacher -> distill (DAgger + BPTT) -> finetune -> evaluate -> export.

    run_pipeline(load_config("config/train/cartpole.yaml"), "runs/cartpole")

A run folder holds the config it was started with (``config.json``) and one sub-folder per stage.
Each stage writes ``done.json`` last and is skipped when that exists; inside a stage, progress is
checkpointed atomically so that ``--resume`` after a kill continues from the last checkpoint.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .config import ConfigError, TrainConfig, config_from_dict
from .io import read_json, write_json

STAGES = ("teacher", "distill", "finetune", "evaluate", "export")


class StageClock:
    """Wall and CPU seconds of a stage (this process), summed over resumes in ``timings.json``.

    While the stage runs a daemon thread writes the running totals every `every_s` seconds, so a
    killed run loses at most that much of the stage's time; `stop()` writes the final totals and
    returns the wall seconds of this part."""

    def __init__(self, path: Path, timings: dict, stage: str, every_s: float = 10.0) -> None:
        self.path, self.timings, self.stage, self.every_s = path, timings, stage, every_s
        self.base = (timings.get(stage, 0.0), timings.get(f"{stage}_cpu", 0.0))
        self.start, self.cpu_start = time.monotonic(), time.process_time()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stage_clock", daemon=True)
        self._thread.start()

    def _write(self) -> float:
        with self._lock:
            elapsed = time.monotonic() - self.start
            self.timings[self.stage] = self.base[0] + elapsed
            self.timings[f"{self.stage}_cpu"] = self.base[1] + time.process_time() - self.cpu_start
            write_json(self.path, self.timings)
            return elapsed

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            self._write()

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self._write()


class RunFolderError(RuntimeError):
    """The run folder does not fit the request (exists without --resume, other config, ...)."""


def _flat(d: dict, prefix: str = "") -> dict:
    """{"distill": {"lr": 0.01}} -> {"distill.lr": 0.01}."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def prepare_run_folder(cfg: TrainConfig, out: str | os.PathLike, resume: bool) -> Path:
    out = Path(out)
    stored = out / "config.json"
    mine = {k: v for k, v in cfg.to_dict().items() if k != "source"}
    if stored.exists():
        if not resume:
            raise RunFolderError(
                f"{out}: a run is already there; pass --resume to continue it or choose another --out"
            )
        theirs = {k: v for k, v in read_json(stored).items() if k != "source"}
        try:  # (with today's defaults filled in: a key added since is not a change)
            theirs = {k: v for k, v in config_from_dict(theirs).to_dict().items() if k != "source"}
        except ConfigError:
            pass  # (a key removed since: compared as stored)
        if theirs != mine:
            a, b = _flat(theirs), _flat(mine)
            changed = [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise RunFolderError(
                f"{out}: was started with another config ({'; '.join(changed[:3])}{more}); "
                "use the run's config, or another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(stored, cfg.to_dict())
    return out


# what each stage reads from the stages before it
NEEDS = {"distill": "teacher", "finetune": "distill", "evaluate": "distill", "export": "distill"}
RESERVED_HYPERPARAMS = {"policy", "env", "seed", "device", "verbose", "tensorboard_log",
                        "policy_kwargs"}  # fmt: skip


def preflight(
    cfg: TrainConfig, out: Path, resume: bool, stages: tuple[str, ...]
) -> tuple[int, int]:
    """Everything that can be checked before any work starts (and before the run folder is
    written): the env id, the wiring against the env's action count, the teacher's
    hyperparameters against the algorithm's signature, --resume on a run that is there, and
    every requested stage's inputs. ConfigError / RunFolderError, one line naming the field.
    Returns the env's (observation, action) sizes."""
    import inspect

    import numpy as np

    from ..core.wiring import AutoNCP, WiringError
    from .envs import make_env_checked
    from .teacher import _algo

    if resume and not (out / "config.json").exists():
        raise RunFolderError(
            f"--resume: {out} holds no run (no config.json); drop --resume to start one"
        )
    env = make_env_checked(
        cfg.env, f"env.id: cannot make {cfg.env.id!r}", seed=cfg.seed, randomize=True
    )
    try:
        shape, obs_shape = env.action_space.shape, env.observation_space.shape
    finally:
        env.close()
    if not shape or len(shape) != 1:
        raise ConfigError(f"env.id: {cfg.env.id!r} has actions {shape}; expected a flat Box")
    s = cfg.student
    try:
        recipe = AutoNCP(s.units, shape[0], sparsity_level=s.sparsity_level, seed=s.wiring_seed)
        recipe.build(int(np.prod(obs_shape)))
    except WiringError as exc:
        raise ConfigError(
            f"student.units: {s.units} does not fit the {shape[0]} actions of {cfg.env.id}: {exc}"
        ) from None
    signature = inspect.signature(_algo(cfg.teacher.algo).__init__).parameters
    known = {k for k in signature if k != "self" and not k.startswith("_")}
    for key in cfg.teacher.hyperparams:
        if key in RESERVED_HYPERPARAMS or key not in known:
            what = "set by the pipeline" if key in RESERVED_HYPERPARAMS else "unknown"
            raise ConfigError(
                f"teacher.hyperparams.{key}: {what} for {cfg.teacher.algo}; expected some of "
                f"{sorted(known - RESERVED_HYPERPARAMS)}"
            )
    for stage in stages:
        need = NEEDS.get(stage)
        if (stage == "finetune" and not cfg.finetune.enabled) or (
            out / stage / "done.json"
        ).exists():
            continue
        if need and need not in stages and not (out / need / "done.json").exists():
            raise RunFolderError(
                f"--stages {stage}: needs the {need} stage, which {out} does not hold; "
                f"run --stages {need} first (or leave --stages out)"
            )
    return int(np.prod(obs_shape)), int(shape[0])


def run_pipeline(
    cfg: TrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    stages: tuple[str, ...] = STAGES,
    progress: bool = True,
) -> Path:
    """Run the stages in order (each skipped if its output exists); returns the run folder."""
    import torch

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; expected some of {list(STAGES)}")
    torch.set_num_threads(cfg.torch_threads)
    obs_dim, act_dim = preflight(cfg, Path(out), resume, stages)
    many = "s" if act_dim != 1 else ""
    print(f"{cfg.name}: {cfg.env.id}, {obs_dim} observations, {act_dim} action{many} -> LTC-"
          f"{cfg.student.units} with {act_dim} motor neuron{many} (one per action)", flush=True)  # fmt: skip
    out = prepare_run_folder(cfg, out, resume)
    timings_path = out / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else {}
    for stage in STAGES:
        if stage not in stages or (stage == "finetune" and not cfg.finetune.enabled):
            continue
        if (out / stage / "done.json").exists():
            print(f"{stage}: done earlier, skipped", flush=True)
            continue
        partial = (out / stage).is_dir() and any((out / stage).iterdir())
        print(f"{stage}: {'continuing from its last checkpoint' if partial else 'starting'}",
              flush=True)  # fmt: skip
        clock = StageClock(timings_path, timings, stage)
        try:
            if stage == "teacher":
                from .teacher import train_teacher

                train_teacher(cfg, out, progress)
            elif stage == "distill":
                from .distill import distill

                distill(cfg, out, progress)
            elif stage == "finetune":
                from .finetune import finetune

                finetune(cfg, out, progress)
            elif stage == "evaluate":
                from .evaluate import evaluate_run

                evaluate_run(cfg, out, progress)
            elif stage == "export":
                from .export import export_run

                export_run(cfg, out)
        finally:
            elapsed = clock.stop()
        print(f"{stage}: finished in {elapsed / 60:.1f} min "
              f"({timings[stage] / 60:.1f} min in all)", flush=True)  # fmt: skip
    return out
