"""Stage 4, evaluation: teacher vs LTC-19 vs LSTM-19, nominal and perturbed.

Every agent runs the same episodes (one seed each, seeds disjoint from training) under each case:
nominal, then every configured perturbation alone. The LTC runs through the numpy deploy runtime
(`core.Policy`, what the robot executes), not through torch. Each row gives the returns and the
smoothness of the actions sent (train/smoothness.py, mean over the episodes): ``mean_abs_delta``
(mean |a[t] - a[t-1]| as a share of each action's range) and ``hf_energy`` (share of the action
energy above a quarter of the control rate), and for our robots their registry entry's episode
figures as ``fig_<name>`` (the Go2's falls and velocity error, the Panda's reach success, ...:
episode means). Writes into ``RUN/evaluate/``:
``results.csv``, ``results.md`` (table), ``results.json``, ``learning_curves.png``,
``perturbations.png`` and ``ltc_activity.png`` (motor and hidden neuron states over one episode).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.policy import Policy
from ..core.policy_file import atomic_write_bytes
from .config import EnvConfig, TrainConfig
from .envs import make_env, perturbation_cases
from .io import read_json, write_json
from .rollout import Episodes, PolicyAgent, TeacherAgent, TorchStudentAgent, mean_figures
from .rollout import run_episodes as _run
from .smoothness import Smoothness, mean_smoothness, table_cell

EVAL_SEED = 100_000


def run_episodes(
    agent,
    env_cfg: EnvConfig,
    episodes: int,
    seed: int = EVAL_SEED,
    perturb: dict[str, float] | None = None,
    obs_std: np.ndarray | None = None,
    record: bool = False,
) -> np.ndarray | Episodes:
    """Returns of `episodes` episodes (seeds seed, seed+1, ...); the Episodes if `record`."""
    result = rollouts(agent, env_cfg, episodes, seed, perturb, obs_std, record)
    return result if record else result.returns


def rollouts(
    agent,
    env_cfg: EnvConfig,
    episodes: int,
    seed: int = EVAL_SEED,
    perturb: dict[str, float] | None = None,
    obs_std: np.ndarray | None = None,
    record: bool = False,
) -> Episodes:
    """`episodes` episodes (seeds seed, seed+1, ...): returns and actions, full traces if `record`."""
    return _run(
        agent,
        lambda s: make_env(env_cfg, seed=s, randomize=False, perturb=perturb, obs_std=obs_std),
        [seed + i for i in range(episodes)],
        record=record,
    )


def agents_of_run(cfg: TrainConfig, run_dir: Path) -> tuple[dict[str, Any], dict[str, int], Policy]:
    """{label: agent}, {label: parameter count} and the LTC policy of a run."""
    from .distill import load_best
    from .teacher import Teacher

    teacher = Teacher.load(run_dir / "teacher", cfg.teacher.algo)
    students, spec = load_best(cfg, run_dir)
    ltc_policy = students["ltc"].to_policy(spec)
    agents: dict[str, Any] = {"teacher": TeacherAgent(teacher), "ltc19": PolicyAgent(ltc_policy)}
    params = {"teacher": teacher.parameter_count, "ltc19": ltc_policy.wiring.parameter_count()}
    if "lstm" in students:
        agents["lstm19"] = TorchStudentAgent(students["lstm"], spec)
        params["lstm19"] = students["lstm"].parameter_count()
    finetuned = run_dir / "finetune" / "ltc19_finetuned.lcp"
    if finetuned.exists():
        agents["ltc19_finetuned"] = PolicyAgent(Policy.load(finetuned))
        params["ltc19_finetuned"] = params["ltc19"]
    return agents, params, ltc_policy


def evaluate_run(cfg: TrainConfig, run_dir: str | os.PathLike, progress: bool = True) -> Path:
    from tqdm import tqdm

    run_dir = Path(run_dir)
    out = run_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    agents, params, ltc_policy = agents_of_run(cfg, run_dir)
    cases = perturbation_cases(cfg.evaluate.perturbations)
    n = cfg.evaluate.episodes
    spec = ltc_policy.spec  # (the env's interface: every agent's action limits and names)
    obs_std = spec.obs_std
    rows: list[dict[str, Any]] = []
    smooth: list[Smoothness] = []  # (one per row)
    bar = tqdm(
        total=len(cases) * len(agents),
        desc="evaluate",
        unit="run",
        disable=not progress,
        mininterval=2.0,
    )
    for case, perturb in cases.items():
        for label, agent in agents.items():
            result = rollouts(agent, cfg.env, n, EVAL_SEED, perturb, obs_std)
            returns = result.returns
            rows.append(
                {
                    "task": cfg.name,
                    "agent": label,
                    "case": case,
                    "parameters": params[label],
                    "episodes": n,
                    "mean_return": float(np.mean(returns)),
                    "std_return": float(np.std(returns)),
                    "min_return": float(np.min(returns)),
                }
            )
            smooth.append(mean_smoothness(result.actions, spec.action_low, spec.action_high))
            # the robot's own figures (falls, tracking error, reach success), episode means
            rows[-1].update({f"fig_{k}": v for k, v in mean_figures(result).items()})
            bar.update(1)
    bar.close()
    teacher_of = {r["case"]: r["mean_return"] for r in rows if r["agent"] == "teacher"}
    names = [a.name for a in spec.actions]
    for r, sm in zip(rows, smooth, strict=True):
        r["vs_teacher"] = _ratio(r["mean_return"], teacher_of[r["case"]])
        r["mean_abs_delta"] = sm.mean_abs_delta
        r["hf_energy"] = sm.hf_energy
        # robot units per action, by name: results.json only (the CSV keeps the scalars)
        r["mean_abs_delta_units"] = dict(zip(names, sm.mean_abs_delta_units.tolist(), strict=True))
    write_results(out, rows)
    trace = run_episodes(PolicyAgent(ltc_policy), cfg.env, 1, EVAL_SEED, None, obs_std, record=True)
    plot_all(cfg, run_dir, rows, trace.traces[0], ltc_policy)
    write_json(out / "done.json", {"rows": len(rows)})
    return out


def _ratio(value: float, reference: float) -> float:
    """The share of the reference's return: value / reference for a positive reference, and the
    same relative difference for a negative one (-6.58 against -6.23 is 0.944, not 1.056)."""
    if abs(reference) <= 1e-9:
        return float("nan")
    return float(1.0 + (value - reference) / abs(reference))


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv (the scalar columns), results.json (every key) and results.md (the table)."""
    buf = io.StringIO()
    scalars = [k for k, v in rows[0].items() if not isinstance(v, (dict, list))]
    writer = csv.DictWriter(buf, fieldnames=scalars, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    write_json(out / "results.json", rows)
    atomic_write_bytes(out / "results.md", markdown_table(rows).encode())


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per agent: parameters, mean return (and % of the teacher) per case, then the
    smoothness of its actions in the nominal case: mean |delta a| as % of the range per step, and
    the share of the action energy above a quarter of the control rate ("-" where not measured)."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    agents = list(dict.fromkeys(r["agent"] for r in rows))
    by = {(r["agent"], r["case"]): r for r in rows}
    task = rows[0]["task"]
    nominal = cases[0]
    smooth_head = [f"smoothness \\|Δa\\| ({nominal})", f"hf energy ({nominal})"]
    figs = [k for k in by[(agents[0], nominal)] if k.startswith("fig_")]
    smooth_head += [f"{k[4:]} ({nominal})" for k in figs]
    lines = [
        f"| {task} | params | " + " | ".join([*cases, *smooth_head]) + " |",
        "|---|---:|" + "---:|" * (len(cases) + len(smooth_head)),
    ]
    for a in agents:
        cells = []
        for c in cases:
            r = by[(a, c)]
            # a share of the teacher's return means something only when that return is positive
            positive = by[("teacher", c)]["mean_return"] > 0
            pct = f" ({100 * r['vs_teacher']:.0f}%)" if a != "teacher" and positive else ""
            cells.append(f"{r['mean_return']:.1f} ± {r['std_return']:.1f}{pct}")
        first = by[(a, nominal)]
        cells += [
            table_cell(first.get("mean_abs_delta"), percent=True),
            table_cell(first.get("hf_energy")),
            *(f"{first[k]:.3g}" if k in first else "-" for k in figs),
        ]
        lines.append(f"| {a} | {first['parameters']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_all(
    cfg: TrainConfig,
    run_dir: Path,
    rows: list[dict[str, Any]],
    trace: dict[str, np.ndarray],
    policy: Policy,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .teacher import learning_curve

    out = run_dir / "evaluate"
    # learning curves: teacher (EvalCallback) and DAgger rounds (closed-loop return of each student)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    curve = learning_curve(run_dir / "teacher")
    if curve is not None:
        axes[0].plot(*curve, marker=".", label="evaluation")
        kept = _kept_teacher_step(run_dir / "teacher", curve)
        if kept is not None:
            axes[0].plot(*kept[:2], marker="*", markersize=14, linestyle="none", color="tab:red",
                         label=f"kept ({kept[2]})")  # fmt: skip
        axes[0].legend(fontsize=8)
    axes[0].set(
        title=f"{cfg.name}: teacher ({cfg.teacher.algo})", xlabel="env steps", ylabel="eval return"
    )
    axes[0].xaxis.set_major_locator(MaxNLocator(5))  # (long step counts do not overlap)
    axes[0].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    teacher_level = next((r["mean_return"] for r in rows
                          if r["agent"] == "teacher" and r["case"] == "nominal"), None)  # fmt: skip
    if teacher_level is not None:
        axes[1].axhline(teacher_level, color="gray", linestyle="--",
                        label=f"teacher {teacher_level:.1f}")  # fmt: skip
    history_path = run_dir / "distill" / "history.json"
    if history_path.exists():
        history = read_json(history_path)
        done = run_dir / "distill" / "done.json"
        best = read_json(done).get("best", {}) if done.exists() else {}
        for key in ("ltc", "lstm"):
            if f"{key}_return" in history[0]:
                (line,) = axes[1].plot(
                    [h["iteration"] for h in history],
                    [h[f"{key}_return"] for h in history],
                    marker="o",
                    label=f"{key.upper()}-{cfg.student.units}",
                )
                if key in best:  # the round whose student was kept
                    axes[1].plot(best[key]["iteration"], best[key]["return"], marker="*",
                                 markersize=14, color=line.get_color(), linestyle="none")  # fmt: skip
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(fontsize=8)
    axes[1].set(title="DAgger rounds (star: kept)", xlabel="round", ylabel="closed-loop return")
    _save(fig, out / "learning_curves.png")

    # return under each perturbation
    cases = list(dict.fromkeys(r["case"] for r in rows))
    agents = list(dict.fromkeys(r["agent"] for r in rows))
    by = {(r["agent"], r["case"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 3.5))
    width = 0.8 / len(agents)
    for k, a in enumerate(agents):
        x = np.arange(len(cases)) + k * width
        ax.bar(
            x,
            [by[(a, c)]["mean_return"] for c in cases],
            width,
            yerr=[by[(a, c)]["std_return"] for c in cases],
            label=a,
            capsize=2,
        )
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2, cases, rotation=20, fontsize=8)
    ax.set(title=f"{cfg.name}: return per case", ylabel="return")
    ax.legend(fontsize=8)
    _save(fig, out / "perturbations.png")

    plot_activity(
        trace,
        policy,
        out / "ltc_activity.png",
        title=f"{cfg.name}: LTC-{policy.wiring.units}, nominal episode seed {EVAL_SEED}",
    )


def _kept_teacher_step(teacher_dir: Path, curve) -> tuple[float, float, str] | None:
    """(step, return, which) of the teacher kept, from teacher/done.json."""
    done = teacher_dir / "done.json"
    if not done.exists() or len(curve[0]) == 0:
        return None
    record = read_json(done)
    steps, returns = np.asarray(curve[0]), np.asarray(curve[1])
    if record.get("kept") == "best" and record.get("best_timesteps") is not None:
        i = int(np.argmin(np.abs(steps - record["best_timesteps"])))
        return float(steps[i]), float(returns[i]), "best evaluation"
    return float(steps[-1]), float(returns[-1]), "final"


def plot_activity(
    trace: dict[str, np.ndarray], policy: Policy, path: Path, title: str = "", max_steps: int = 300
) -> None:
    """Observations, actions and every neuron's potential over (the first `max_steps` steps of)
    an episode; neurons grouped by layer (motor, command, inter), in the wiring's order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trace = {k: v[:max_steps] for k, v in trace.items()}  # a readable stretch of a long episode
    t = np.cumsum(trace["dt"]) - trace["dt"][0]
    state = trace["state"]
    motor = policy.wiring.output_dim
    has_obs = "obs" in trace and len(trace["obs"]) == len(t)
    rows = 4 if has_obs else 3
    ratios = [1, 1, 1, 2] if has_obs else [1, 1, 2]
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.2 * rows + 1), sharex=True,
                             gridspec_kw={"height_ratios": ratios})  # fmt: skip
    axes[0].set_title(title + (f" (first {len(t)} steps)" if len(t) == max_steps else ""))
    k = 0
    if has_obs:  # in the spec's normalised units, so channels of any scale share an axis
        obs = policy.spec.normalize(np.asarray(trace["obs"], np.float64))
        for j in range(obs.shape[1]):
            names = [o.name for o in policy.spec.observations]
            axes[0].plot(t, obs[:, j], lw=1, label=names[j] if j < len(names) else f"obs {j}")
        axes[0].set(ylabel="observation (norm.)")
        if obs.shape[1] <= 12:
            axes[0].legend(fontsize=6, loc="upper right", ncol=2)
        k = 1
    for j in range(trace["action"].shape[1]):
        axes[k].plot(t, trace["action"][:, j], label=policy.spec.actions[j].name)
    axes[k].set(ylabel="action")
    axes[k].legend(fontsize=7, loc="upper right")
    for j in range(motor):
        axes[k + 1].plot(t, state[:, j], lw=1)
    axes[k + 1].set(ylabel="motor neurons v")
    ax = axes[k + 2]
    im = ax.imshow(
        state.T,
        aspect="auto",
        origin="lower",
        cmap="coolwarm",
        extent=(t[0], t[-1] if len(t) > 1 else 1.0, -0.5, state.shape[1] - 0.5),
    )
    layers = list(getattr(policy.wiring, "layers", ()) or ())
    if len(layers) == state.shape[1]:  # a band and a name per layer
        start = 0
        for i in range(1, len(layers) + 1):
            if i == len(layers) or layers[i] != layers[start]:
                ax.text(t[0], (start + i - 1) / 2, f" {layers[start]}", va="center", fontsize=7)
                if i < len(layers):
                    ax.axhline(i - 0.5, color="black", lw=0.8)
                start = i
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(ylabel="neuron", xlabel="time (s)")
    fig.colorbar(im, ax=ax, label="potential")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
