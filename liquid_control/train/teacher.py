"""Stage 1, the teacher: a stable-baselines3 MLP policy (PPO or SAC) trained on the task's env.

Files in ``RUN/teacher/``: ``model.zip`` + ``obs_norm.json`` (the teacher kept: the best by
evaluation return if it beat the last evaluation, else the final one; ``done.json`` says which),
``best/`` (the best-by-evaluation model and normaliser, with ``best.json``), ``ckpt/`` with the
latest resumable checkpoint (written atomically, indexed by ``checkpoint.json``), ``eval/``
(EvalCallback's evaluations.npz: the learning curve), ``tb/`` (TensorBoard) and ``monitor/``.
Observation normalisation (VecNormalize) is stored as JSON, so querying the teacher needs no pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .envs import make_env
from .io import read_json, write_json

# the env's action bounds of a teacher that acts in [-1, 1] (teacher.normalize_actions)
ACTIONS_FILE = "actions.json"


def _algo(name: str):
    from stable_baselines3 import PPO, SAC

    return {"PPO": PPO, "SAC": SAC}[name]


class Teacher:
    """A trained SB3 policy queried on raw observations (robot units) -> actions (robot units)."""

    def __init__(
        self, model: Any, norm: dict[str, Any] | None, bounds: dict[str, Any] | None = None
    ) -> None:
        self.model = model
        self.norm = norm
        if norm:
            self._mean = np.asarray(norm["mean"], np.float64)
            self._scale = 1.0 / np.sqrt(np.asarray(norm["var"], np.float64) + norm["epsilon"])
            self._clip = float(norm["clip_obs"])
        # `bounds` (actions.json): the model acts in [-1, 1], mapped onto the env's bounds
        space = model.action_space
        self.rescaled = bounds is not None
        source = bounds if bounds is not None else {"low": space.low, "high": space.high}
        self.low = np.asarray(source["low"], np.float64)
        self.high = np.asarray(source["high"], np.float64)

    @classmethod
    def load(cls, teacher_dir: str | os.PathLike, algo: str) -> Teacher:
        teacher_dir = Path(teacher_dir)
        model = _algo(algo).load(teacher_dir / "model.zip", device="cpu")
        norm_path, bounds_path = teacher_dir / "obs_norm.json", teacher_dir / ACTIONS_FILE
        return cls(
            model,
            read_json(norm_path) if norm_path.exists() else None,
            read_json(bounds_path) if bounds_path.exists() else None,
        )

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        if not self.norm:
            return obs
        return np.clip((obs - self._mean) * self._scale, -self._clip, self._clip)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(B, obs_dim) raw observations -> (B, action_dim) deterministic actions, clipped."""
        action, _ = self.model.predict(
            self.normalize(np.asarray(obs, np.float64)), deterministic=True
        )
        action = np.asarray(action, np.float64)
        if self.rescaled:
            action = self.low + (np.clip(action, -1.0, 1.0) + 1.0) * (self.high - self.low) / 2.0
        return np.clip(action, self.low, self.high)

    @property
    def parameter_count(self) -> int:
        """Parameters of the deployed part (the actor: features, policy net, action head)."""
        policy = self.model.policy
        if hasattr(policy, "actor"):  # SAC
            return sum(p.numel() for p in policy.actor.parameters())
        skip = ("value_net", "mlp_extractor.value_net", "log_std")
        return sum(p.numel() for n, p in policy.named_parameters() if not n.startswith(skip))


def _norm_state(venv) -> dict[str, Any]:
    return {
        "mean": venv.obs_rms.mean.tolist(),
        "var": venv.obs_rms.var.tolist(),
        "count": float(venv.obs_rms.count),
        "ret_mean": float(venv.ret_rms.mean),
        "ret_var": float(venv.ret_rms.var),
        "ret_count": float(venv.ret_rms.count),
        "clip_obs": float(venv.clip_obs),
        "epsilon": float(venv.epsilon),
    }


def _load_norm_state(venv, state: dict[str, Any]) -> None:
    venv.obs_rms.mean = np.asarray(state["mean"], np.float64)
    venv.obs_rms.var = np.asarray(state["var"], np.float64)
    venv.obs_rms.count = state["count"]
    venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = (
        np.float64(state["ret_mean"]),
        np.float64(state["ret_var"]),
        state["ret_count"],
    )


def _save_model_atomic(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)


def _save_model_and_norm(model, venv: Any, folder: Path) -> None:
    """model.zip, and obs_norm.json when `venv` (a VecNormalize) is given."""
    _save_model_atomic(model, folder / "model.zip")
    if venv is not None:
        write_json(folder / "obs_norm.json", _norm_state(venv))


def _make_venv(cfg: TrainConfig, seed: int, n_envs: int, training: bool):
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    def factory(i: int):
        def make():
            env = make_env(cfg.env, seed=seed + i, randomize=training)
            if cfg.teacher.normalize_actions:
                import gymnasium as gym

                env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
            return Monitor(env)

        return make

    # worker processes step the envs in parallel (cfg.teacher.subproc_envs, for the training envs)
    parallel = training and cfg.teacher.subproc_envs and n_envs > 1
    if parallel:
        venv = SubprocVecEnv([factory(i) for i in range(n_envs)], start_method="spawn")
    else:
        venv = DummyVecEnv([factory(i) for i in range(n_envs)])
    venv.seed(seed)
    if cfg.teacher.normalize:
        venv = VecNormalize(
            venv,
            norm_obs=True,
            norm_reward=training and cfg.teacher.algo == "PPO",
            training=training,
            gamma=cfg.teacher.hyperparams.get("gamma", 0.99),
        )
    return venv


def _write_action_bounds(cfg: TrainConfig, out: Path) -> None:
    """actions.json: the env's action bounds, onto which a [-1, 1] teacher's actions map
    (teacher.normalize_actions; nothing otherwise)."""
    if not cfg.teacher.normalize_actions:
        return
    probe = make_env(cfg.env, seed=cfg.seed, randomize=False)
    space = probe.action_space
    write_json(out / ACTIONS_FILE, {"low": space.low.tolist(), "high": space.high.tolist()})
    probe.close()


def train_teacher(cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train (or resume, or skip if done) the teacher; returns its folder."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback

    out = Path(run_dir) / "teacher"
    if (out / "done.json").exists():
        return out
    t = cfg.teacher
    torch.set_num_threads(cfg.torch_threads)
    ckpt_dir = out / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    venv = _make_venv(cfg, cfg.seed, t.n_envs, training=True)
    eval_env = _make_venv(cfg, cfg.seed + 10_000, 1, training=False)
    _write_action_bounds(cfg, out)
    algo = _algo(t.algo)
    index = ckpt_dir / "checkpoint.json"
    if index.exists():
        state = read_json(index)
        model = algo.load(
            ckpt_dir / state["model"], env=venv, device="cpu", tensorboard_log=str(out / "tb")
        )
        if t.normalize:
            _load_norm_state(venv, read_json(ckpt_dir / state["norm"]))
        done_steps = int(state["num_timesteps"])
    else:
        model = algo(
            "MlpPolicy",
            venv,
            seed=cfg.seed,
            device="cpu",
            verbose=0,
            tensorboard_log=str(out / "tb"),
            policy_kwargs={
                "net_arch": list(t.net_arch),
                **({} if t.log_std_init is None else {"log_std_init": t.log_std_init}),
            },
            **t.hyperparams,
        )
        done_steps = 0

    class Checkpoint(BaseCallback):
        """Every `checkpoint_freq` steps: model + normaliser, then the index that names them."""

        def __init__(self) -> None:
            super().__init__()
            self.last = done_steps

        def _on_step(self) -> bool:
            if self.num_timesteps - self.last >= t.checkpoint_freq:
                self.last = self.num_timesteps
                save_checkpoint(self.model, venv, ckpt_dir, self.num_timesteps)
            return True

    class Progress(BaseCallback):
        shown = 0  # evaluations shown on the bar

        def _on_training_start(self) -> None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=t.total_timesteps,
                initial=done_steps,
                desc="teacher",
                unit="step",
                disable=not progress,
                mininterval=2.0,
            )

        def _on_step(self) -> bool:
            self.bar.update(self.num_timesteps - self.bar.n)
            if evaluator.evaluations_results and len(evaluator.evaluations_results) != self.shown:
                self.shown = len(evaluator.evaluations_results)
                self.bar.set_postfix(eval=f"{evaluator.last_mean_reward:.1f}",
                                     best=f"{evaluator.best_mean_reward:.1f}")  # fmt: skip
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    best_dir = out / "best"

    evaluator = EvalCallback(
        eval_env,
        n_eval_episodes=t.eval_episodes,
        eval_freq=max(t.eval_freq // t.n_envs, 1),
        log_path=str(out / "eval"),
        best_model_save_path=None,
        callback_on_new_best=_save_best(best_dir, venv if t.normalize else None),
        deterministic=True,
        verbose=0,
    )
    if (best_dir / "best.json").exists():  # (resumed: a new best must beat the one kept)
        evaluator.best_mean_reward = float(read_json(best_dir / "best.json")["return"])
    previous = out / "eval" / "evaluations.npz"
    if done_steps and previous.exists():  # keep the learning curve from before the interruption
        with np.load(previous, allow_pickle=False) as data:
            keep = data["timesteps"] <= done_steps
            evaluator.evaluations_timesteps = data["timesteps"][keep].tolist()
            evaluator.evaluations_results = data["results"][keep].tolist()
            evaluator.evaluations_length = data["ep_lengths"][keep].tolist()
    remaining = t.total_timesteps - done_steps
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=CallbackList([Checkpoint(), Progress(), evaluator]),
            reset_num_timesteps=done_steps == 0,
            tb_log_name=t.algo,
        )

    def save_final() -> None:
        _save_model_and_norm(model, venv if t.normalize else None, out)

    record = {"num_timesteps": int(model.num_timesteps), "algo": t.algo}
    record.update(keep_teacher(out, evaluator.evaluations_results, save_final))
    write_json(out / "done.json", record)
    venv.close()
    eval_env.close()
    return out


def _save_best(best_dir: Path, venv: Any):
    """A callback for EvalCallback's new bests: the model and its normaliser (of `venv`, if
    normalised), then best.json naming the step and the return."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SaveBest(BaseCallback):
        def _on_step(self) -> bool:
            best_dir.mkdir(exist_ok=True)
            _save_model_and_norm(self.model, venv, best_dir)
            write_json(best_dir / "best.json", {"num_timesteps": int(self.num_timesteps),
                                                "return": float(self.parent.best_mean_reward)})  # fmt: skip
            return True

    return SaveBest()


def keep_teacher(out: Path, evaluations: list, save_final) -> dict[str, Any]:
    """model.zip + obs_norm.json in `out`: the best-by-evaluation teacher of ``out/best`` if its
    return beat the last of `evaluations` (EvalCallback's returns per evaluation; a late collapse
    is not kept), else the final one (`save_final()`). Returns what was kept, for done.json."""
    import shutil

    last = float(np.mean(evaluations[-1])) if len(evaluations) else None
    best_dir = out / "best"
    best = read_json(best_dir / "best.json") if (best_dir / "best.json").exists() else None
    kept: dict[str, Any] = {"kept": "final"}
    if best is not None and last is not None and best["return"] > last:
        for name in ("model.zip", "obs_norm.json"):
            if (best_dir / name).exists():
                tmp = out / f".{name}.tmp"
                shutil.copyfile(best_dir / name, tmp)
                os.replace(tmp, out / name)
        kept.update(kept="best", best_timesteps=best["num_timesteps"])
    else:
        save_final()
    kept.update(best_return=best["return"] if best else None, last_eval_return=last)
    return kept


def save_checkpoint(model, venv, ckpt_dir: Path, num_timesteps: int) -> None:
    """Model and normaliser under step-numbered names, then the index; older ones removed."""
    name = f"model_{num_timesteps}.zip"
    _save_model_atomic(model, ckpt_dir / name)
    norm = None
    if hasattr(venv, "obs_rms"):
        norm = f"norm_{num_timesteps}.json"
        write_json(ckpt_dir / norm, _norm_state(venv))
    write_json(
        ckpt_dir / "checkpoint.json", {"num_timesteps": num_timesteps, "model": name, "norm": norm}
    )
    for old in ckpt_dir.iterdir():
        if old.name not in (name, norm, "checkpoint.json") and not old.name.startswith("."):
            old.unlink(missing_ok=True)


def learning_curve(teacher_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """(timesteps, mean eval return) from EvalCallback's log, if any."""
    path = Path(teacher_dir) / "eval" / "evaluations.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return data["timesteps"], data["results"].mean(axis=1)
