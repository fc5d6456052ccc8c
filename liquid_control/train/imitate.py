"""Imitation from recorded demonstrations: the LTC (and, for comparison, the LSTM of equal neuron
count) trained by truncated BPTT on a dataset of `liquid-control dataset` (a robot's or a sim's
bags), with per-step dt, a validation split and early stopping; the best LTC exported as `.lcp`.

Episodes are held out for validation (evenly spread; with one episode, its tail). A round is
`epochs_per_round` passes over the training windows (window, burn-in, batch size, learning rates
and gradient clipping of the distill section); after each round the validation loss is measured
and, with ``imitate.eval_episodes > 0``, the closed-loop return on the config's env. The best
student by return (where measured) or by validation loss is kept; training stops after
`patience` rounds without a better validation loss, or at `max_rounds`.

The labels are the recorded commands clipped to the spec's limits, in network units; the spec's
observation normalisation is fitted to the training episodes.

Files in ``OUT/imitate/``: ``progress.json`` (written last each round, so a killed run resumes
from its last finished round), round-numbered weights and optimiser states, ``best_<student>``,
``spec.json``, ``history.json``, ``done.json`` and the policy file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.spec import InterfaceSpec, SpecError
from ..data.dataset import Dataset
from .config import ConfigError, TrainConfig
from .distill import Dataset as Windows
from .distill import evaluate_student, fit_normalization, make_students, train_student
from .io import (
    read_arrays,
    read_json,
    read_state_dicts,
    read_tensors,
    write_arrays,
    write_json,
    write_state_dicts,
    write_tensors,
)

__all__ = ["imitate", "load_datasets", "simulated_demonstrations", "split"]


def simulated_demonstrations(
    operator: Any,
    cfg: TrainConfig,
    seconds: float,
    noise: float = 0.1,
    seed: int = 0,
    driver: Any = None,
    beta: float = 0.0,
    perturb: dict[str, float] | None = None,
) -> Dataset:
    """Demonstrations in the config's env from an `operator` policy (a `Policy`, or anything with
    its `spec`, `reset()` and `step(obs, dt)`) whose commands get Gaussian noise of `noise` x each
    action's scale, clipped to the limits: a stand-in for a person with a joystick. The operator's
    commands are the labels, as in a bag.

    With a `driver` (e.g. the sim-trained policy on the robot), the driver acts and the operator's
    command is executed instead on a `beta` fraction of the ticks: the operator's corrections
    label every tick the driver visits (DAgger-style intervention logs). `perturb` (keys of
    ``liquid-control eval --perturb``) shifts the env, e.g. to play a robot unlike the sim.
    `report["operator_returns"]` holds the return of each complete episode."""
    from .envs import make_env

    spec = operator.spec
    rng = np.random.default_rng(seed)
    need = int(round(seconds * spec.control_rate_hz))
    rows: dict[str, list] = {k: [] for k in ("obs", "action", "dt", "episode", "reset")}
    returns: list[float] = []
    env = make_env(cfg.env, seed=seed, randomize=False, perturb=perturb)
    ep = 0
    while len(rows["dt"]) < need:
        obs, _ = env.reset(seed=seed * 1000 + ep)
        operator.reset()
        if driver is not None:
            driver.reset()
        total, first, dt = 0.0, True, spec.control_period_s
        while len(rows["dt"]) < need:
            o = np.asarray(obs, np.float64)
            a = operator.step(o, dt)
            a = a + noise * spec.action_scale * rng.normal(size=a.shape)
            a = np.clip(a, spec.action_low, spec.action_high)
            executed = a
            if driver is not None:
                mine = np.asarray(driver.step(o, dt), np.float64)
                executed = a if rng.random() < beta else mine
            for k, v in zip(rows, (obs, a, dt, ep, first), strict=True):
                rows[k].append(v)
            obs, r, terminated, truncated, info = env.step(executed.astype(env.action_space.dtype))
            total += float(r)
            dt, first = float(info.get("dt", spec.control_period_s)), False
            if terminated or truncated:
                returns.append(total)  # (complete episodes only)
                break
        ep += 1
    env.close()
    dt_arr = np.array(rows["dt"], np.float64)
    settings = {"noise": noise, "seed": seed, "env": cfg.env.id, "perturb": dict(perturb or {})}
    if driver is not None:
        settings["beta"] = beta
    return Dataset(
        spec,
        np.array(rows["obs"], np.float64),
        np.array(rows["action"], np.float64),
        dt_arr,
        np.cumsum(dt_arr) - dt_arr[0],
        np.array(rows["episode"], np.int64),
        np.array(rows["reset"], bool),
        "simulated",
        settings,
        {"operator_returns": returns},
    )


def load_datasets(folders: list[str | os.PathLike]) -> Dataset:
    """One dataset from several folders (their specs must agree; DatasetError / SpecError)."""
    parts = [Dataset.load(f) for f in folders]
    first = parts[0]
    for f, p in zip(folders[1:], parts[1:], strict=True):
        try:
            first.spec.check_compatible(p.spec)
        except SpecError as exc:
            raise SpecError(f"dataset {str(f)!r} is for another interface: {exc}") from None
    offset, episodes = 0, []
    for p in parts:
        episodes.append(p.episode + offset)
        offset += int(p.episode.max()) + 1 if p.episode.size else 0
    cat = lambda k: np.concatenate([getattr(p, k) for p in parts])  # noqa: E731
    return Dataset(
        first.spec,
        cat("obs"),
        cat("action"),
        cat("dt"),
        cat("t"),
        np.concatenate(episodes),
        cat("reset"),
        "+".join(sorted({p.source for p in parts})),
        first.settings,
        {"datasets": [str(f) for f in folders]},
    )


def split(data: Dataset, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, validation) over the ticks: whole episodes, evenly spread, held out;
    with a single episode, its last `val_fraction` of ticks."""
    episodes = data.episodes
    n = data.dt.size
    val = np.zeros(n, bool)
    if len(episodes) >= 2:
        k = max(1, int(round(len(episodes) * val_fraction)))
        picks = np.unique(np.linspace(0, len(episodes) - 1, k + 2)[1:-1].round().astype(int))
        for i in picks:
            val[episodes[i]] = True
    else:
        val[int(round(n * (1 - val_fraction))) :] = True
    return ~val, val


def _windows(data: Dataset, spec: InterfaceSpec, mask: np.ndarray) -> Windows:
    """The ticks of `mask` as trajectories for BPTT (a trajectory per contiguous episode run)."""
    idx = np.flatnonzero(mask)
    episode = data.episode[idx]
    # a new trajectory where the episode changes or the mask skipped ticks
    new = np.r_[True, (np.diff(episode) != 0) | (np.diff(idx) != 1)]
    label = spec.to_network(np.clip(data.action[idx], spec.action_low, spec.action_high))
    return Windows(
        {
            "obs": data.obs[idx],
            "dt": data.dt[idx],
            "label": label,
            "traj": np.cumsum(new) - 1,
            "first": data.reset[idx] & new,
        }
    )


def validation_loss(model: Any, data: Windows, spec: InterfaceSpec, cfg: TrainConfig) -> float:
    """Mean squared error (network units) over the validation windows, burn-in excluded."""
    import torch

    d = cfg.distill
    idx, mask = data.windows(d.window, d.burn_in)
    x = torch.as_tensor(spec.normalize(data.obs), dtype=torch.float32)
    e = torch.as_tensor(data.dt / spec.control_period_s, dtype=torch.float32)
    y = torch.as_tensor(data.label, dtype=torch.float32).clamp(-1.5, 1.5)
    total, count = 0.0, 0.0
    with torch.no_grad():
        for b in range(0, len(idx), 256):
            sel = torch.as_tensor(idx[b : b + 256])
            m = torch.as_tensor(mask[b : b + 256], dtype=torch.float32)
            out, _ = model(x[sel], None, e[sel])
            total += float((((out - y[sel]) ** 2).mean(-1) * m).sum())
            count += float(m.sum())
    return total / max(count, 1.0)


def _data_hash(data: Dataset) -> str:
    h = hashlib.sha256()
    for a in (data.obs, data.action, data.dt, data.episode):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def imitate(
    cfg: TrainConfig,
    folders: list[str | os.PathLike],
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    init: Any = None,
    mix_sim: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train on the datasets in `folders`; returns the done record (paths and figures).

    With `init` (a `Policy`, e.g. trained in sim) the LTC starts from its weights and keeps its
    spec and normalisation (fine-tuning on the robot's logs; no LSTM). The guard against
    forgetting: a round counts only if its closed-loop return on the config's env stays at least
    `imitate.keep_sim_return` of the initial policy's (on the same episodes); among those the
    lowest validation loss on the logs wins, and the initial policy stays if none beats it. The
    done record says what changed (relative change of each parameter).

    With `mix_sim` (a run folder of `liquid-control train` with a teacher), every round also rolls
    the current LTC out in that run's sim for `imitate.mix_sim_steps` steps, labels the visited
    states with the run's teacher (DAgger) and trains on those windows along with the logs'."""
    import torch
    from tqdm import tqdm

    im, d = cfg.imitate, cfg.distill
    data = load_datasets(folders)
    out = Path(run_dir) / "imitate"
    if out.exists() and not resume and any(out.iterdir()):
        raise ConfigError(f"{out} exists: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    digest = _data_hash(data)
    init_hash = init.content_hash if init is not None else None
    sim = SimMix(mix_sim, data.spec) if mix_sim is not None else None
    sim_hash = sim.digest if sim is not None else None
    index = out / "progress.json"
    if index.exists():
        _check_resumable(out, read_json(index), digest, init_hash, sim_hash)
    if (out / "done.json").exists():
        return read_json(out / "done.json")
    train_mask, val_mask = split(data, im.val_fraction)
    torch.set_num_threads(cfg.torch_threads)
    spec, students = _starting_point(cfg, data, train_mask, init)
    train, val = _windows(data, spec, train_mask), _windows(data, spec, val_mask)
    lrs = {"ltc": d.lr, "lstm": d.lstm_lr}
    optims = {k: torch.optim.Adam(m.parameters(), lr=lrs[k]) for k, m in students.items()}
    state: dict[str, Any] = {
        "round": 0,
        "best": {},
        "history": [],
        "stale": {},
        "lowest_val_loss": {},
        "data": digest,
        "init": init_hash,
        "mix_sim": sim_hash,
        "initial": None,
    }
    sim_data = Windows()
    if index.exists():
        state = read_json(index)
        if state.get("sim"):
            sim_data = Windows(read_arrays(out / state["sim"]))
        spec = InterfaceSpec.from_dict(read_json(out / "spec.json"))
        for k, m in students.items():
            m.load_state_dict(read_tensors(out / state["weights"][k]))
            optims[k].load_state_dict(read_state_dicts(out / state["optim"][k])["optim"])
    else:
        write_json(out / "spec.json", spec.to_dict())
        if init is not None:  # the starting point is the first candidate
            model = students["ltc"]
            model.eval()
            vloss = validation_loss(model, val, spec, cfg)
            ret = _closed_loop(model, spec, cfg) if im.eval_episodes > 0 else None
            state["initial"] = {"val_loss": vloss, "return": ret}
            state["best"]["ltc"] = {"val_loss": vloss, "return": ret, "round": -1}
            write_tensors(out / "best_ltc.safetensors", model.state_dict())
            write_tensors(out / "initial_ltc.safetensors", model.state_dict())
    sub = _with_epochs(cfg, im.epochs_per_round)
    bar = tqdm(total=im.max_rounds, initial=state["round"], desc="imitate", unit="round",
               disable=not progress, mininterval=2.0)  # fmt: skip
    for r in range(state["round"], im.max_rounds):
        if all(state["stale"].get(k, 0) >= im.patience for k in students):
            break
        seed = cfg.seed * 7919 + 131 * r
        torch.manual_seed(seed)
        record: dict[str, Any] = {"round": r}
        mixed = train
        if sim is not None:  # DAgger in the sim with the LTC as it is now
            new = sim.collect(students["ltc"], spec, im.mix_sim_steps, seed)
            sim_data.extend(new, im.mix_sim_max_steps)
            mixed = Windows(train.arrays())
            mixed.extend(sim_data.arrays(), len(train) + len(sim_data))
            record["sim_steps"] = len(sim_data)
        for name, model in students.items():
            if state["stale"].get(name, 0) < im.patience:  # (one stopped early: the other goes on)
                ctx = (mixed, val, spec, sub, seed)
                record.update(_student_round(cfg, out, state, name, model, optims[name], ctx, r))
        state["history"].append(record)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.endswith("val_loss")})
        _save_round(out, state, r + 1, students, optims, sim_data if sim is not None else None)
    bar.close()
    return _finish(cfg, out, state, students, spec, data, folders, sim)


class SimMix:
    """DAgger in a trained run's sim for `--mix-sim RUN`: the student drives the run's env (with
    its training randomisation), the run's teacher labels every visited state."""

    def __init__(self, run: str | os.PathLike, data_spec: InterfaceSpec) -> None:
        from .config import config_from_dict
        from .distill import base_spec
        from .teacher import Teacher

        self.run = Path(run)
        teacher_dir = self.run / "teacher"
        if not (self.run / "config.json").is_file() or not (teacher_dir / "model.zip").is_file():
            raise ConfigError(
                f"--mix-sim {str(run)!r}: expected a run folder of `liquid-control train` with "
                "config.json and a trained teacher (teacher/model.zip)"
            )
        stored = read_json(self.run / "config.json")
        self.cfg = config_from_dict({k: v for k, v in stored.items() if k != "source"})
        try:
            base_spec(self.cfg).check_compatible(data_spec)
        except SpecError as exc:
            raise ConfigError(
                f"--mix-sim {str(run)!r}: its env {self.cfg.env.id!r} does not fit the datasets: "
                f"{exc}"
            ) from None
        self.teacher = Teacher.load(teacher_dir, self.cfg.teacher.algo)
        h = hashlib.sha256()
        for f in sorted(teacher_dir.glob("*")):
            if f.name in ("model.zip", "obs_norm.json"):
                h.update(f.name.encode() + f.read_bytes())
        h.update(repr(sorted(self.cfg.env.wrappers.items())).encode())
        self.digest = h.hexdigest()[:16]

    def collect(self, model: Any, spec: InterfaceSpec, steps: int, seed: int) -> dict:
        from .distill import collect

        model.eval()
        return collect(self.cfg, self.teacher, model, spec, 0.0, steps, seed, None)


def _check_resumable(
    out: Path, state: dict, digest: str, init_hash: str | None, sim_hash: str | None = None
) -> None:
    """A run continues only on the data and the starting policy it began with."""
    if state.get("data") != digest:
        raise ConfigError(
            f"{out}: the datasets differ from the ones this run started with (hash {digest}, "
            f"the run has {state.get('data')}); use another --out"
        )
    if state.get("init") != init_hash:
        raise ConfigError(
            f"{out}: this run started from --init {state.get('init') or '(none)'}, not from "
            f"{init_hash or '(none)'}; pass the same --init, or use another --out"
        )
    if state.get("mix_sim") != sim_hash:
        raise ConfigError(
            f"{out}: this run started with --mix-sim teacher {state.get('mix_sim') or '(none)'}, "
            f"not {sim_hash or '(none)'}; pass the same --mix-sim, or use another --out"
        )


def _starting_point(
    cfg: TrainConfig, data: Dataset, train_mask: np.ndarray, init: Any
) -> tuple[InterfaceSpec, dict[str, Any]]:
    """The spec (the init policy's, else normalisation fitted to the training ticks) and the
    students (the init policy's LTC, else new ones of the config's sizes)."""
    if cfg.imitate.eval_episodes > 0:
        from .distill import base_spec

        try:
            base_spec(cfg).check_compatible(data.spec)
        except SpecError as exc:
            raise ConfigError(f"env.id {cfg.env.id!r} does not fit the dataset: {exc}") from None
    if init is not None:
        from ..nn import LTC

        try:
            init.spec.check_compatible(data.spec)
        except SpecError as exc:
            raise ConfigError(f"--init: the policy does not fit the datasets: {exc}") from None
        return init.spec, {"ltc": LTC.from_policy(init)}
    spec = fit_normalization(data.spec, data.obs[train_mask])
    students = make_students(cfg, spec.obs_dim, spec.action_dim)
    if not cfg.imitate.lstm:
        students.pop("lstm", None)
    return spec, students


def _student_round(
    cfg: TrainConfig,
    out: Path,
    state: dict,
    name: str,
    model: Any,
    optim: Any,
    ctx: tuple,
    r: int,
) -> dict[str, float]:
    """One round of one student: train, validate (and evaluate), keep it if best."""
    train, val, spec, sub, seed = ctx
    im = cfg.imitate
    model.train()
    record = {f"{name}_train_loss": train_student(model, optim, train, spec, sub, seed + 1)}
    model.eval()
    vloss = validation_loss(model, val, spec, cfg)
    record[f"{name}_val_loss"] = vloss
    ret = _closed_loop(model, spec, cfg) if im.eval_episodes > 0 else None
    if ret is not None:
        record[f"{name}_return"] = ret
    lowest = state["lowest_val_loss"].get(name)
    if lowest is None or vloss < lowest:  # (the stopping rule follows the loss)
        state["lowest_val_loss"][name], state["stale"][name] = vloss, 0
    else:
        state["stale"][name] = state["stale"].get(name, 0) + 1
    best = state["best"].get(name)
    initial = state.get("initial")
    if initial is not None:  # fine-tuning: the logs' loss decides, within the guard
        floor = (initial["return"] or 0.0) * im.keep_sim_return
        kept = ret is None or initial["return"] is None or ret >= floor
        record[f"{name}_within_guard"] = kept
        better = kept and vloss < best["val_loss"]
    else:
        better = best is None or (
            ret > best["return"] if ret is not None else vloss < best["val_loss"]
        )
    if better:
        write_tensors(out / f"best_{name}.safetensors", model.state_dict())
        state["best"][name] = {"val_loss": vloss, "return": ret, "round": r}
    return record


def _closed_loop(model: Any, spec: InterfaceSpec, cfg: TrainConfig) -> float:
    """Mean return on the config's env, the same episodes every round (comparable)."""
    return evaluate_student(model, spec, cfg, cfg.imitate.eval_episodes, seed=20_000)


def _with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, epochs=epochs))


def _save_round(
    out: Path, state: dict, r: int, students: dict, optims: dict, sim_data: Windows | None
) -> None:
    names: dict[str, Any] = {"weights": {}, "optim": {}}
    if sim_data is not None:
        names["sim"] = f"round{r}_sim.npz"
        write_arrays(out / names["sim"], sim_data.arrays())
    for name, model in students.items():
        names["weights"][name] = f"round{r}_{name}.safetensors"
        write_tensors(out / names["weights"][name], model.state_dict())
        names["optim"][name] = f"round{r}_{name}_optim.safetensors"
        write_state_dicts(out / names["optim"][name], {"optim": optims[name].state_dict()})
    state.update(round=r, **names)
    write_json(out / "progress.json", state)
    keep = {*names["weights"].values(), *names["optim"].values(), names.get("sim")}
    for old in out.glob("round*"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def _finish(
    cfg: TrainConfig,
    out: Path,
    state: dict,
    students: dict,
    spec: InterfaceSpec,
    data: Dataset,
    folders: list,
    sim: SimMix | None = None,
) -> dict[str, Any]:
    model = students["ltc"]
    model.load_state_dict(read_tensors(out / "best_ltc.safetensors"))
    clipped = int(((data.action < spec.action_low) | (data.action > spec.action_high)).any(1).sum())
    policy = model.to_policy(
        spec,
        provenance={
            "task": cfg.name,
            "stage": "imitate",
            "datasets": [str(f) for f in folders],
            "dataset_ticks": int(data.dt.size),
            "dataset_s": round(float(data.dt.sum()), 3),
            "seed": cfg.seed,
            "config": cfg.source,
            "best": state["best"]["ltc"],
            **({"mix_sim": {"run": str(sim.run), "teacher": sim.digest}} if sim else {}),
        },
    )
    path = out / f"{cfg.name}_ltc{cfg.student.units}.lcp"
    policy.save(path)
    changed = {}
    if state.get("initial") is not None:
        before = read_tensors(out / "initial_ltc.safetensors")
        after = model.state_dict()
        for k, w in before.items():
            norm = float(w.float().norm())
            changed[k] = round(float((after[k].float() - w.float()).norm()) / max(norm, 1e-12), 6)
    done = {
        "policy": str(path),
        "rounds": state["round"],
        "best": state["best"],
        "ticks": int(data.dt.size),
        "demonstration_s": round(float(data.dt.sum()), 3),
        "labels_clipped": clipped,
        "initial": state.get("initial"),
        "relative_change": changed,
        "mix_sim": {"run": str(sim.run), "teacher": sim.digest} if sim else None,
    }
    write_json(out / "history.json", state["history"])
    write_json(out / "done.json", done)
    return done
