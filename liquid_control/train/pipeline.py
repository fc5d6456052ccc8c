"""The training pipeline: teacher -> distill (DAgger + BPTT) -> finetune -> evaluate -> export.

    run_pipeline(load_config("config/train/cartpole.yaml"), "runs/cartpole")

A run folder holds the config it was started with (``config.json``) and one sub-folder per stage.
Each stage writes ``done.json`` last and is skipped when that exists; inside a stage, progress is
checkpointed atomically so that ``--resume`` after a kill continues from the last checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .config import ConfigError, TrainConfig
from .io import read_json, write_json

STAGES = ("teacher", "distill", "finetune", "evaluate", "export")


class RunFolderError(RuntimeError):
    """The run folder does not fit the request (exists without --resume, other config, ...)."""


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
        if theirs != mine:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise RunFolderError(
                f"{out}: was started with another config (sections differ: {changed})"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(stored, cfg.to_dict())
    return out


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
    out = prepare_run_folder(cfg, out, resume)
    timings_path = out / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else {}
    for stage in STAGES:
        if stage not in stages or (stage == "finetune" and not cfg.finetune.enabled):
            continue
        if (out / stage / "done.json").exists():
            continue
        start, cpu_start = time.monotonic(), time.process_time()
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
        # wall and CPU seconds of each stage (this process), summed over resumes
        timings[stage] = timings.get(stage, 0.0) + time.monotonic() - start
        timings[f"{stage}_cpu"] = timings.get(f"{stage}_cpu", 0.0) + time.process_time() - cpu_start
        write_json(timings_path, timings)
    return out
