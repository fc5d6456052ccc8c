"""Stage 2, distillation: DAgger into the LTC (and the LSTM baseline), trained by truncated BPTT.

Round k of DAgger rolls out the student while executing the teacher's action instead with
probability beta_k = beta0 * beta_decay**k (per step); every visited state is labelled with the
teacher's action (in network units, ``spec.to_network``) and added to the data set together with the
time since the previous observation (per-step dt, so the LTC learns on the elapsed times it will
see). The students are then trained on windows of ``window`` steps cut from the recorded
trajectories: the first ``burn_in`` steps of a window that does not start an episode only warm the
state up. With ``action_rate_weight`` > 0 the loss also penalises the change of the student's output
from step to step (`train_student`). After each round every student is evaluated in closed loop;
the best one by return (not by loss) is kept.

Files in ``RUN/distill/``: ``progress.json`` (the index, written last), step-numbered weights,
optimiser state and data of the last finished round, ``best_<student>.safetensors``, ``spec.json``
(the spec with the fitted normalisation) and ``history.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.spec import InterfaceSpec
from ..core.wiring import AutoNCP
from .config import TrainConfig
from .envs import apply_perturbations, interface_spec, make_env
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
from .rollout import TorchStudentAgent, run_episodes

if TYPE_CHECKING:
    import torch


def make_students(cfg: TrainConfig, obs_dim: int, act_dim: int) -> dict[str, Any]:
    """{"ltc": LTC on an AutoNCP wiring, "lstm": LSTM baseline} with the config's sizes."""
    import torch

    from ..nn import LTC
    from .lstm_student import LSTMStudent

    s = cfg.student
    torch.manual_seed(cfg.seed)
    recipe = AutoNCP(s.units, act_dim, sparsity_level=s.sparsity_level, seed=s.wiring_seed)
    students = {"ltc": LTC(obs_dim, recipe, ode_unfolds=s.ode_unfolds, seed=cfg.seed)}
    if cfg.distill.lstm:
        students["lstm"] = LSTMStudent(obs_dim, s.units, act_dim)
    return students


def base_spec(cfg: TrainConfig) -> InterfaceSpec:
    env = make_env(cfg.env, seed=cfg.seed, randomize=False)
    spec = interface_spec(env)
    env.close()
    return spec


def fit_normalization(spec: InterfaceSpec, obs: np.ndarray) -> InterfaceSpec:
    """Spec with mean/std of the observed data (std floored so constant inputs stay finite)."""
    mean = obs.mean(0)
    std = obs.std(0)
    std = np.where(std < 1e-3, 1.0, std)
    return spec.with_normalization(mean, std)


class Dataset:
    """Recorded trajectories: flat arrays plus the id of the trajectory each step belongs to."""

    KEYS = ("obs", "dt", "label", "traj", "first")

    def __init__(self, arrays: dict[str, np.ndarray] | None = None) -> None:
        a = arrays or {}
        self.obs = a.get("obs", np.zeros((0, 0)))
        self.dt = a.get("dt", np.zeros(0))
        self.label = a.get("label", np.zeros((0, 0)))
        self.traj = a.get("traj", np.zeros(0, np.int64))
        self.first = a.get(
            "first", np.zeros(0, bool)
        )  # step opens an episode (state is truly zero)

    def __len__(self) -> int:
        return len(self.dt)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.KEYS}

    def extend(self, other: dict[str, np.ndarray], max_steps: int) -> None:
        if len(self) == 0:
            merged = dict(other)
        else:
            offset = int(self.traj.max()) + 1
            other = {**other, "traj": other["traj"] + offset}
            merged = {k: np.concatenate([getattr(self, k), other[k]]) for k in self.KEYS}
        if len(merged["dt"]) > max_steps:  # drop the oldest whole trajectories
            cut = len(merged["dt"]) - max_steps
            keep_from = merged["traj"][cut]
            keep = merged["traj"] >= keep_from
            merged = {k: v[keep] for k, v in merged.items()}
        for k, v in merged.items():
            setattr(self, k, v)

    def windows(self, window: int, burn_in: int) -> tuple[np.ndarray, np.ndarray]:
        """Index (W, window) and loss mask (W, window) of training windows, stride window // 2."""
        idx, mask = [], []
        bounds = np.flatnonzero(np.diff(self.traj, prepend=-1, append=-1))
        stride = max(window // 2, 1)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            length = b - a
            starts = list(range(a, max(b - window, a) + 1, stride))
            if length > window and starts[-1] != b - window:
                starts.append(b - window)
            for s in starts:
                ix = np.minimum(np.arange(s, s + window), b - 1)
                m = np.arange(s, s + window) < b
                if not self.first[s]:
                    m[:burn_in] = False
                idx.append(ix)
                mask.append(m)
        return np.asarray(idx, np.int64).reshape(-1, window), np.asarray(mask, bool).reshape(
            -1, window
        )


def collect(
    cfg: TrainConfig,
    teacher,
    student,
    spec: InterfaceSpec,
    beta: float,
    steps: int,
    seed: int,
    progress,
) -> dict[str, np.ndarray]:
    """Run `n_envs` envs for `steps` steps in all, executing the teacher's action with
    probability `beta` (else the student's); label every visited state with the teacher's action."""
    d = cfg.distill
    rng = np.random.default_rng(seed)
    jitter = {"dt_jitter": d.dt_jitter} if d.dt_jitter > 0 else {}

    def build(i: int):
        env = make_env(cfg.env, seed=seed + i, randomize=True)
        return apply_perturbations(env, jitter, seed + i) if jitter else env

    n = d.n_envs
    envs = [build(i) for i in range(n)]
    episode_seed = seed * 1000
    obs = np.stack([env.reset(seed=episode_seed + i)[0] for i, env in enumerate(envs)]).astype(
        np.float64
    )
    episode_seed += n
    period = spec.control_period_s
    dt = np.full(n, period)
    first = np.ones(n, bool)
    traj = np.arange(n)
    next_traj = n
    agent = TorchStudentAgent(student, spec) if student is not None else None
    if agent:
        agent.reset(n)
    rec: dict[str, list] = {k: [] for k in Dataset.KEYS}
    low, high = spec.action_low, spec.action_high
    for _ in range(int(np.ceil(steps / n))):
        target = teacher.act(obs)
        executed = target.copy()
        if agent is not None and beta < 1.0:
            mine = agent.act(obs, dt)
            use_student = rng.random(n) >= beta
            executed[use_student] = mine[use_student]
        rec["obs"].append(obs.copy())
        rec["dt"].append(dt.copy())
        rec["label"].append(spec.to_network(np.clip(target, low, high)))
        rec["traj"].append(traj.copy())
        rec["first"].append(first.copy())
        first[:] = False
        for i, env in enumerate(envs):
            nxt, _r, terminated, truncated, info = env.step(
                executed[i].astype(env.action_space.dtype)
            )
            dt[i] = float(info.get("dt", period))
            if terminated or truncated:
                nxt, _ = env.reset(seed=episode_seed)
                episode_seed += 1
                dt[i], first[i] = period, True
                traj[i] = next_traj
                next_traj += 1
                if agent is not None:
                    agent.reset_rows(np.arange(n) == i)
            obs[i] = nxt
        if progress is not None:
            progress.update(n)
    for env in envs:
        env.close()
    # time-major (T, n) -> trajectory-contiguous order
    arrays = {k: np.stack(v, 1) for k, v in rec.items()}  # (n, T, ...)
    arrays = {k: v.reshape(-1, *v.shape[2:]) for k, v in arrays.items()}
    order = np.argsort(arrays["traj"], kind="stable")
    return {k: v[order] for k, v in arrays.items()}


def train_student(
    model, optim, data: Dataset, spec: InterfaceSpec, cfg: TrainConfig, seed: int
) -> float:
    """`epochs` passes over the data in windows; returns the mean loss of the last pass.

    The loss of a minibatch of windows, outputs y and labels y* (B, window, action_dim) in network
    units and mask m (B, window) (0 on burn-in and past a trajectory's end):

        sum_t m_t mean_j (y - y*)**2 / sum_t m_t
        + action_rate_weight * sum_t m_t m_{t-1} mean_j (y_t - y_{t-1})**2 / sum_t m_t m_{t-1}

    The second term (only where the weight is > 0) penalises the step-to-step change of the
    command, so that the student does not copy a teacher's chatter.
    """
    import torch

    d = cfg.distill
    idx, mask = data.windows(d.window, d.burn_in)
    x_all = torch.as_tensor(spec.normalize(data.obs), dtype=torch.float32)
    e_all = torch.as_tensor(data.dt / spec.control_period_s, dtype=torch.float32)
    y_all = torch.as_tensor(data.label, dtype=torch.float32).clamp(-1.5, 1.5)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _epoch in range(d.epochs):
        losses = []
        perm = torch.randperm(len(idx), generator=gen)
        for b in range(0, len(idx), d.batch_size):
            sel = torch.as_tensor(idx[perm[b : b + d.batch_size].numpy()])
            m = torch.as_tensor(mask[perm[b : b + d.batch_size].numpy()], dtype=torch.float32)
            y, _ = model(x_all[sel], None, e_all[sel])
            err = ((y - y_all[sel]) ** 2).mean(-1)
            loss = (err * m).sum() / m.sum().clamp(min=1.0)
            if d.action_rate_weight > 0:
                loss = loss + d.action_rate_weight * action_rate(y, m)
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), d.grad_clip)
            optim.step()
            if hasattr(model, "apply_weight_constraints"):
                model.apply_weight_constraints()
            losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def action_rate(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared step-to-step change of outputs y (B, window, action_dim) over the pairs of
    consecutive steps that both count in mask (B, window); a 0-d tensor."""
    pairs = mask[:, 1:] * mask[:, :-1]
    rate = ((y[:, 1:] - y[:, :-1]) ** 2).mean(-1)
    return (rate * pairs).sum() / pairs.sum().clamp(min=1.0)


def evaluate_student(
    model, spec: InterfaceSpec, cfg: TrainConfig, episodes: int, seed: int
) -> float:
    """Mean closed-loop return of the student alone on the nominal env."""
    agent = TorchStudentAgent(model, spec)
    result = run_episodes(
        agent,
        lambda s: make_env(cfg.env, seed=s, randomize=False),
        [seed + i for i in range(episodes)],
    )
    return float(result.returns.mean())


def distill(cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Run (or resume) DAgger + BPTT; returns the stage folder."""
    import torch
    from tqdm import tqdm

    from .teacher import Teacher

    run_dir = Path(run_dir)
    out = run_dir / "distill"
    if (out / "done.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    d = cfg.distill
    teacher = Teacher.load(run_dir / "teacher", cfg.teacher.algo)
    spec = base_spec(cfg)
    students = make_students(cfg, spec.obs_dim, spec.action_dim)
    lrs = {"ltc": d.lr, "lstm": d.lstm_lr}
    optims = {k: torch.optim.Adam(m.parameters(), lr=lrs[k]) for k, m in students.items()}
    data = Dataset()
    state: dict[str, Any] = {"iteration": 0, "best": {}, "history": []}
    index = out / "progress.json"
    if index.exists():  # resume from the last finished round
        state = read_json(index)
        spec = InterfaceSpec.from_dict(read_json(out / "spec.json"))
        data = Dataset(read_arrays(out / state["data"]))
        for k, m in students.items():
            m.load_state_dict(read_tensors(out / state["weights"][k]))
            optims[k].load_state_dict(read_state_dicts(out / state["optim"][k])["optim"])
    bar = tqdm(
        total=d.iterations * d.steps_per_iteration,
        initial=state["iteration"] * d.steps_per_iteration,
        desc="distill",
        unit="step",
        disable=not progress,
        mininterval=2.0,
    )
    for k in range(state["iteration"], d.iterations):
        beta = d.beta0 * d.beta_decay**k
        seed = cfg.seed * 7919 + 101 * k
        torch.manual_seed(seed)
        new = collect(
            cfg,
            teacher,
            students["ltc"] if k > 0 else None,
            spec,
            beta if k > 0 else 1.0,
            d.steps_per_iteration,
            seed,
            bar,
        )
        if k == 0:
            spec = fit_normalization(spec, new["obs"])
            write_json(out / "spec.json", spec.to_dict())
        data.extend(new, d.max_dataset_steps)
        record: dict[str, Any] = {"iteration": k, "beta": beta, "dataset_steps": len(data)}
        for name, model in students.items():
            loss = train_student(model, optims[name], data, spec, cfg, seed + 1)
            ret = evaluate_student(model, spec, cfg, d.eval_episodes, seed=10_000 + 17 * k)
            record[f"{name}_loss"], record[f"{name}_return"] = loss, ret
            best = state["best"].get(name)
            if best is None or ret > best["return"]:
                write_tensors(out / f"best_{name}.safetensors", model.state_dict())
                state["best"][name] = {"return": ret, "iteration": k}
        bar.set_postfix({n: f"{record[f'{n}_return']:.1f}" for n in students})
        state["history"].append(record)
        _save_round(out, state, k + 1, students, optims, data)
    bar.close()
    write_json(out / "history.json", state["history"])
    write_json(out / "done.json", {"best": state["best"], "iterations": d.iterations})
    return out


def _save_round(out: Path, state: dict, iteration: int, students, optims, data: Dataset) -> None:
    """Everything of a finished round under round-numbered names, then the index, then cleanup."""
    names = {"weights": {}, "optim": {}}
    for name, model in students.items():
        names["weights"][name] = f"round{iteration}_{name}.safetensors"
        write_tensors(out / names["weights"][name], model.state_dict())
        names["optim"][name] = f"round{iteration}_{name}_optim.safetensors"
        write_state_dicts(out / names["optim"][name], {"optim": optims[name].state_dict()})
    data_name = f"round{iteration}_data.npz"
    write_arrays(out / data_name, data.arrays())
    state.update(iteration=iteration, data=data_name, **names)
    write_json(out / "progress.json", state)
    keep = {data_name, *names["weights"].values(), *names["optim"].values()}
    for old in out.glob("round*"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def load_best(cfg: TrainConfig, run_dir: str | os.PathLike) -> tuple[dict[str, Any], InterfaceSpec]:
    """The best students of a finished distillation and the spec they were trained with."""
    out = Path(run_dir) / "distill"
    spec = InterfaceSpec.from_dict(read_json(out / "spec.json"))
    students = make_students(cfg, spec.obs_dim, spec.action_dim)
    for name, model in students.items():
        model.load_state_dict(read_tensors(out / f"best_{name}.safetensors"))
        model.eval()
    return students, spec
