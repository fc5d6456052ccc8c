"""Training configuration: one YAML per task under config/train/ (rl_zoo3-like).

    name: cartpole
    seed: 0
    env: {id: LiquidControl/CartPoleSwingUp-v0, wrappers: {...}, max_episode_steps: 500}
    teacher: {algo: PPO, total_timesteps: 300000, n_envs: 4, normalize: true, hyperparams: {...}}
    student: {units: 19, ode_unfolds: 6, sparsity_level: 0.5, wiring_seed: 22222}
    distill: {iterations: 10, steps_per_iteration: 8000, window: 32, burn_in: 8, ...}
    finetune: {enabled: false, total_timesteps: 50000, ...}
    evaluate: {episodes: 10, perturbations: {obs_noise: 0.1, action_latency: 1, ...}}
    export: {onnx: true}

Every section maps to a frozen dataclass; unknown keys and wrong types raise `ConfigError` naming
the field (``teacher.total_timesteps``), the value seen and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from ..envs.wrappers import PERTURBATIONS  # the one list, beside the wrappers it names


class ConfigError(ValueError):
    """A training YAML is invalid (the message names the field)."""


@dataclass(frozen=True)
class EnvConfig:
    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # training-time randomisation, passed to liquid_control.envs.wrappers.make_env (own robots)
    wrappers: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None


@dataclass(frozen=True)
class TeacherConfig:
    algo: str = "PPO"
    total_timesteps: int = 200_000
    n_envs: int = 4
    normalize: bool = True  # VecNormalize on observations (the stats travel with the teacher)
    hyperparams: dict[str, Any] = field(default_factory=dict)  # SB3 constructor arguments
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    eval_freq: int = 10_000  # environment steps between EvalCallback runs
    eval_episodes: int = 5
    checkpoint_freq: int = 20_000  # environment steps between resumable checkpoints
    subproc_envs: bool = False  # step the n_envs training envs in worker processes
    normalize_actions: bool = False  # the teacher acts in [-1, 1], rescaled to the env's bounds
    log_std_init: float | None = None  # initial log std of the Gaussian policy (None: SB3's)


@dataclass(frozen=True)
class StudentConfig:
    units: int = 19
    ode_unfolds: int = 6
    sparsity_level: float = 0.5
    wiring_seed: int = 22222


@dataclass(frozen=True)
class DistillConfig:
    iterations: int = 8  # DAgger rounds
    steps_per_iteration: int = 5_000  # environment steps collected per round
    n_envs: int = 8  # environments rolled out side by side
    beta0: float = 1.0  # probability of executing the teacher's action in round 0
    beta_decay: float = 0.5  # beta_k = beta0 * beta_decay**k
    window: int = 32  # truncated BPTT length (steps)
    burn_in: int = 8  # steps at the start of a window that warm the state without loss
    epochs: int = 6  # passes over the aggregated data per round (in windows)
    batch_size: int = 16
    lr: float = 1e-2  # LTC (it needs more and larger steps than the LSTM)
    lstm_lr: float = 3e-3
    grad_clip: float = 1.0
    # weight of mean (y[t] - y[t-1])**2 of the student's outputs (network units) in the loss
    action_rate_weight: float = 0.0
    max_dataset_steps: int = 200_000  # oldest data is dropped beyond this
    eval_episodes: int = 4  # closed-loop episodes that select the best student
    dt_jitter: float = 0.0  # relative dt randomisation while collecting (teaches dt use)
    lstm: bool = True  # also distill the LSTM baseline of equal neuron count


@dataclass(frozen=True)
class FinetuneConfig:
    enabled: bool = False
    total_timesteps: int = 50_000
    n_envs: int = 4
    n_steps: int = 256  # rollout length per env
    window: int = 32  # sequence length for the recurrent update
    epochs: int = 4
    batch_size: int = 16  # sequences per minibatch
    lr: float = 3e-4
    critic_lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.1
    ent_coef: float = 0.0
    init_log_std: float = -1.0
    critic_warmup_rollouts: int = 2  # rollouts that fit the critic only (protects the actor)
    eval_episodes: int = 4


@dataclass(frozen=True)
class ImitateConfig:
    """`liquid-control imitate`: BPTT on recorded demonstrations (window, burn_in, batch_size,
    lr, lstm_lr, grad_clip and action_rate_weight come from the distill section)."""

    max_rounds: int = 40  # rounds of `epochs_per_round` passes over the training windows
    epochs_per_round: int = 2
    val_fraction: float = 0.2  # episodes held out for validation (the tail of one if only one)
    patience: int = 6  # rounds without a better validation loss before stopping
    eval_episodes: int = 0  # closed-loop episodes per round on `env` (0: validation loss only)
    lstm: bool = True  # also train the LSTM of equal neuron count, for comparison
    # fine-tuning (--init POLICY): a round counts only if its return on `env` keeps this fraction
    # of the initial policy's (the guard against forgetting; needs eval_episodes > 0)
    keep_sim_return: float = 0.95
    # --mix-sim RUN: each round, this many DAgger steps in RUN's sim (the LTC drives, RUN's teacher
    # labels) join the training windows, so the logs do not pull the policy off what the sim taught
    mix_sim_steps: int = 2000
    mix_sim_max_steps: int = 20000  # the sim buffer keeps the newest trajectories up to this


@dataclass(frozen=True)
class EvaluateConfig:
    episodes: int = 10  # one seed per episode
    perturbations: dict[str, float] = field(
        default_factory=lambda: {
            "obs_noise": 0.1,  # Gaussian noise, fraction of each observation's std
            "action_latency": 1,  # control steps of delay
            "mass_scale": 1.2,  # all body masses x
            "friction_scale": 0.7,  # all friction coefficients x
            "dt_jitter": 0.3,  # dt ~ U[1-j, 1+j] x nominal, every step
        }
    )


@dataclass(frozen=True)
class ExportConfig:
    onnx: bool = True


@dataclass(frozen=True)
class TrainConfig:
    name: str
    env: EnvConfig
    seed: int = 0
    torch_threads: int = 1
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    imitate: ImitateConfig = field(default_factory=ImitateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    source: str = ""  # the YAML path it was read from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TEACHER_ALGOS = ("PPO", "SAC")


def _check(where: str, value: Any, tp: Any) -> Any:  # noqa: C901 (split when the training config is reworked)
    """Value converted to type `tp`, or ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(where, value, inner[0])
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        import difflib

        public = sorted(k for k in known if not (cls is TrainConfig and k == "source"))
        near = difflib.get_close_matches(str(unknown[0]), public, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"{where or 'top level'}: unknown field(s) {unknown}{hint}; expected some of {public}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _check(name, data[f.name], hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{name}: missing (required)")
    return cls(**kwargs)


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: expected {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range checks that types alone do not catch."""
    t, s, d, f = cfg.teacher, cfg.student, cfg.distill, cfg.finetune
    if t.algo not in TEACHER_ALGOS:
        raise ConfigError(f"teacher.algo: expected one of {TEACHER_ALGOS}, got {t.algo!r}")
    for where, v in (
        ("teacher.total_timesteps", t.total_timesteps),
        ("teacher.n_envs", t.n_envs),
        ("teacher.eval_freq", t.eval_freq),
        ("teacher.eval_episodes", t.eval_episodes),
        ("teacher.checkpoint_freq", t.checkpoint_freq),
        ("student.units", s.units),
        ("student.ode_unfolds", s.ode_unfolds),
        ("distill.iterations", d.iterations),
        ("distill.steps_per_iteration", d.steps_per_iteration),
        ("distill.n_envs", d.n_envs),
        ("distill.window", d.window),
        ("distill.epochs", d.epochs),
        ("distill.batch_size", d.batch_size),
        ("distill.lr", d.lr),
        ("distill.lstm_lr", d.lstm_lr),
        ("distill.eval_episodes", d.eval_episodes),
        ("finetune.n_envs", f.n_envs),
        ("finetune.n_steps", f.n_steps),
        ("finetune.window", f.window),
        ("finetune.lr", f.lr),
        ("evaluate.episodes", cfg.evaluate.episodes),
        ("imitate.max_rounds", cfg.imitate.max_rounds),
        ("imitate.epochs_per_round", cfg.imitate.epochs_per_round),
        ("imitate.patience", cfg.imitate.patience),
        ("imitate.mix_sim_steps", cfg.imitate.mix_sim_steps),
        ("imitate.mix_sim_max_steps", cfg.imitate.mix_sim_max_steps),
        ("torch_threads", cfg.torch_threads),
    ):
        _positive(where, v)
    if not 0.0 < cfg.imitate.val_fraction < 1.0:
        raise ConfigError(
            f"imitate.val_fraction: expected a value in (0, 1), got {cfg.imitate.val_fraction!r}"
        )
    if not 0.0 <= cfg.imitate.keep_sim_return <= 1.0:
        raise ConfigError(
            "imitate.keep_sim_return: expected a fraction in [0, 1], got "
            f"{cfg.imitate.keep_sim_return!r}"
        )
    if cfg.imitate.eval_episodes < 0:
        raise ConfigError(
            f"imitate.eval_episodes: expected >= 0, got {cfg.imitate.eval_episodes!r}"
        )
    if not 0 <= d.burn_in < d.window:
        raise ConfigError(
            f"distill.burn_in: expected 0 <= burn_in < window ({d.window}), got {d.burn_in}"
        )
    if not (np.isfinite(d.action_rate_weight) and d.action_rate_weight >= 0):
        raise ConfigError(
            f"distill.action_rate_weight: expected a finite number >= 0, got {d.action_rate_weight!r}"
        )
    for where, v in (("distill.beta0", d.beta0), ("distill.beta_decay", d.beta_decay)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{where}: expected a value in [0, 1], got {v!r}")
    if not 0.0 <= d.dt_jitter < 1.0:
        raise ConfigError(f"distill.dt_jitter: expected a value in [0, 1), got {d.dt_jitter!r}")
    for key, v in cfg.evaluate.perturbations.items():
        check_perturbation(f"evaluate.perturbations.{key}", key, v)
    if cfg.env.max_episode_steps is not None:
        _positive("env.max_episode_steps", cfg.env.max_episode_steps)
        if "max_episode_steps" in cfg.env.kwargs:
            raise ConfigError(
                "env.kwargs.max_episode_steps: the episode length is set twice; keep "
                f"env.max_episode_steps ({cfg.env.max_episode_steps}) only"
            )
    return cfg


# what each perturbation accepts: (test, expectation)
_PERTURBATION_RANGES = {
    "obs_noise": (lambda v: v >= 0, "a number >= 0 (a fraction of each observation's std)"),
    "action_latency": (
        lambda v: v >= 0 and float(v).is_integer(),
        "a whole number of control steps >= 0",
    ),
    "mass_scale": (lambda v: v > 0, "a factor > 0"),
    "friction_scale": (lambda v: v > 0, "a factor > 0"),
    "dt_jitter": (lambda v: 0 <= v < 1, "a fraction in [0, 1) (dt ~ U[1-j, 1+j] x nominal)"),
}


def check_perturbation(where: str, name: str, value: Any) -> float:
    """One evaluation perturbation checked against its range (ConfigError naming `where`)."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"{where}: unknown perturbation; expected one of {list(PERTURBATIONS)}")
    test, expected = _PERTURBATION_RANGES[name]
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok or not np.isfinite(value) or not test(value):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return float(value)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and validate a training YAML."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return config_from_dict(data, source=str(path))


def config_from_dict(data: Any, source: str = "") -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source or 'config'}: expected a mapping at the top level, got {data!r}"
        )
    data = {k: v for k, v in data.items() if k != "source"}
    return dataclasses.replace(validate(_build(TrainConfig, data, "")), source=source)
