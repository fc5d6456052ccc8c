"""Offline replay: a policy run on the observations and elapsed times of a recording, compared
with the commands recorded there (the check before a policy goes on the robot).

Each episode starts from the zero state, as the node does after a reset or a safe stretch. On a
bag of our own policy node with ``debug: true`` the replay uses the node's rows, so the same
policy file reproduces the published commands exactly (up to the safety layer: a rate limit or a
fade-in changes what was published, and the report shows where).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..core.policy import Policy
from .dataset import Dataset, DatasetError

__all__ = ["format_replay", "replay"]


def replay(policy: Policy, data: Dataset, warmup_s: float = 2.0) -> dict[str, Any]:
    """Per action channel: rms error, correlation and the largest difference (with its time
    and episode) between the policy's actions and the recorded ones; the actions themselves.

    An episode whose start state is unknown (a recording that joined a run midway, lost debug
    rows) runs from the zero state here; its first `warmup_s` seconds, while the state forgets
    the difference, are left out of the figures (`compared_ticks` says how many count)."""
    policy.spec.check_compatible(data.spec)
    p = copy.deepcopy(policy)
    predicted = np.empty_like(data.action)
    compared = np.zeros(data.dt.size, bool)
    for sl in data.episodes:
        p.reset()
        predicted[sl] = p.rollout(data.obs[sl], data.dt[sl])
        known = bool(data.reset[sl.start])
        compared[sl] = known or np.cumsum(data.dt[sl]) > warmup_s
    if not compared.any():
        raise DatasetError(
            f"nothing to compare: no episode starts from a reset or lasts over {warmup_s} s"
        )
    diff = (predicted - data.action)[compared]
    t, episode = data.t[compared], data.episode[compared]
    channels = {}
    for j, a in enumerate(data.spec.actions):
        d = diff[:, j]
        k = int(np.argmax(np.abs(d)))
        x, y = predicted[compared, j], data.action[compared, j]
        corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
        channels[a.name] = {
            "rms_error": float(np.sqrt(np.mean(d**2))),
            "correlation": corr,
            "max_abs_diff": float(abs(d[k])),
            "max_at_t_s": float(t[k]),
            "max_in_episode": int(episode[k]),
            "recorded_std": float(y.std()),
        }
    return {
        "ticks": int(data.dt.size),
        "compared_ticks": int(compared.sum()),
        "episodes": len(data.episodes),
        "source": data.source,
        "max_abs_diff": float(np.abs(diff).max()) if diff.size else float("nan"),
        "channels": channels,
        "predicted": predicted,
    }


def format_replay(result: dict[str, Any]) -> str:
    lines = [
        f"replayed {result['ticks']} ticks in {result['episodes']} episodes "
        f"({result['source']} data), compared {result['compared_ticks']} (the episodes that "
        f"start from a reset); largest difference {result['max_abs_diff']:.3g}",
        f"{'channel':<24} {'rms error':>10} {'corr':>7} {'max diff':>10}  where",
    ]
    for name, c in result["channels"].items():
        lines.append(
            f"{name:<24} {c['rms_error']:>10.4g} {c['correlation']:>7.3f} "
            f"{c['max_abs_diff']:>10.4g}  t={c['max_at_t_s']:.3f} s (episode {c['max_in_episode']})"
        )
    return "\n".join(lines)
