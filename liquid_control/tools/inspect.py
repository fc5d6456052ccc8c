"""`liquid-control inspect POLICY [--wiring-png FILE] [--json]`: what a policy file holds.

Prints the wiring (neurons per layer, synapses, parameters), the interface spec (every observation
and action element with its source, units, normalisation and limits), the model settings,
provenance and content hash; optionally draws the wiring diagram as a PNG
(sensory -> inter -> command -> motor; excitatory synapses green, inhibitory red, by the sign of the
trained reversal potential).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from ..core.policy import Policy
from ..core.policy_file import PolicyFileError, atomic_write_bytes

COLUMNS = ("sensory", "inter", "command", "motor")
EXCITATORY, INHIBITORY = "#2a9d3c", "#d1332e"


def describe(policy: Policy) -> str:
    """Human-readable summary of a policy."""
    w = policy.wiring.summary()
    spec = policy.spec
    lines = [
        f"policy        {policy.path or '(in memory)'}",
        f"content hash  {policy.content_hash}",
        f"robot         {spec.robot}  ({spec.description})"
        if spec.description
        else f"robot         {spec.robot}",
        f"model         LTC, {policy.ode_unfolds} ODE unfolds per step, LTC time unit {policy.time_unit_s:g} s, "
        f"control rate {spec.control_rate_hz:g} Hz",
        f"wiring        {w['units']} neurons: {w['inter']} inter, {w['command']} command, {w['motor']} motor; "
        f"{w['sensory']} sensory inputs ({policy.wiring.recipe.get('kind', 'custom')})",
        f"synapses      {w['synapses']} recurrent + {w['sensory_synapses']} sensory "
        f"({w['excitatory']} excitatory, {w['inhibitory']} inhibitory at init)",
        f"parameters    {w['parameters']} effective (masked synapses not counted)",
        "",
        f"observations ({spec.obs_dim}):",
    ]
    for i, e in enumerate(spec.observations):
        where = (
            e.key
            if e.key
            else (
                f"[{e.index}/{e.sectors}]"
                if e.sectors
                else (f"[{e.index}]" if e.index is not None else "")
            )
        )
        tf = f" {e.transform}" if e.transform != "identity" else ""
        lines.append(
            f"  {i:2d} {e.name:22s} {e.topic} {e.msg_type} .{e.field} {where}{tf}  [{e.unit}]  "
            f"mean {e.mean:.4g} std {e.std:.4g} noise {e.noise_std:.3g}"
        )
    lines.append(f"actions ({spec.action_dim}):")
    for j, e in enumerate(spec.actions):
        where = e.key if e.key else (f"[{e.index}]" if e.index is not None else "")
        lines.append(
            f"  {j:2d} {e.name:22s} {e.topic} {e.msg_type} .{e.field} {where}  [{e.unit}]  "
            f"= {e.offset:.4g} + {e.scale:.4g} * u, limits [{e.low:.4g}, {e.high:.4g}]"
        )
    if policy.provenance:
        lines.append("provenance:")
        for k, v in sorted(policy.provenance.items()):
            lines.append(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return "\n".join(lines)


def _positions(policy: Policy) -> dict[tuple[str, int], tuple[float, float]]:
    wiring = policy.wiring
    groups = {
        "sensory": list(range(wiring.input_dim)),
        "inter": wiring.neurons_of("inter"),
        "command": wiring.neurons_of("command"),
        "motor": wiring.neurons_of("motor"),
    }
    pos = {}
    for col, name in enumerate(COLUMNS):
        ids = groups[name]
        for row, i in enumerate(ids):
            y = 1.0 - (row + 0.5) / max(len(ids), 1)
            pos[("sensory" if name == "sensory" else "neuron", i)] = (float(col), y)
    return pos


def draw_wiring(policy: Policy, path: str) -> None:
    """Draw the wiring diagram to a PNG (written atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyArrowPatch
    except ImportError as exc:
        raise SystemExit(
            f"--wiring-png needs matplotlib ({exc}); install it with: pip install matplotlib"
        ) from exc

    wiring, params = policy.wiring, policy.params
    pos = _positions(policy)
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    edges: list[tuple[Any, Any, float, float]] = []
    for s, d in zip(*np.nonzero(wiring.sensory_adjacency), strict=True):
        edges.append(
            (("sensory", s), ("neuron", d), params["sensory_erev"][s, d], params["sensory_w"][s, d])
        )
    for s, d in zip(*np.nonzero(wiring.adjacency), strict=True):
        edges.append((("neuron", s), ("neuron", d), params["erev"][s, d], params["w"][s, d]))
    wmax = max((float(w) for *_, w in edges), default=1.0) or 1.0
    for a, b, erev, w in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        same_column = x0 == x1
        arrow = FancyArrowPatch(
            (x0, y0),
            (x1, y1),
            arrowstyle="-|>",
            mutation_scale=8,
            connectionstyle="arc3,rad=0.6" if same_column else "arc3,rad=0.05",
            color=EXCITATORY if erev >= 0 else INHIBITORY,
            alpha=0.25 + 0.6 * float(w) / wmax,
            lw=0.5 + 1.5 * float(w) / wmax,
            shrinkA=7,
            shrinkB=7,
        )
        ax.add_patch(arrow)
    colors = {"sensory": "#8c8c3c", "inter": "#3b6fb6", "command": "#7b4fa8", "motor": "#e08a1e"}
    obs_names = [e.name for e in policy.spec.observations]
    act_names = [e.name for e in policy.spec.actions]
    for (kind, i), (x, y) in pos.items():
        layer = "sensory" if kind == "sensory" else wiring.layers[i]
        ax.scatter(
            [x], [y], s=180, color=colors[layer], zorder=3, edgecolors="black", linewidths=0.5
        )
        if layer == "sensory":
            ax.text(x - 0.08, y, obs_names[i], ha="right", va="center", fontsize=7)
        elif layer == "motor":
            ax.text(x + 0.08, y, act_names[i], ha="left", va="center", fontsize=8)
        else:
            ax.text(x, y, str(i), ha="center", va="center", fontsize=6, color="white", zorder=4)
    for col, name in enumerate(COLUMNS):
        ax.text(col, 1.04, name, ha="center", fontsize=10, weight="bold")
    ax.plot([], [], color=EXCITATORY, label="excitatory")
    ax.plot([], [], color=INHIBITORY, label="inhibitory")
    ax.legend(loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.06))
    s = wiring.summary()
    ax.set_title(
        f"{policy.spec.robot}: {s['units']} neurons, {s['synapses'] + s['sensory_synapses']} synapses",
        fontsize=11,
    )
    ax.set_xlim(-0.9, 3.9)
    ax.set_ylim(-0.05, 1.1)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run(args) -> int:
    try:
        policy = Policy.load(args.policy)
    except PolicyFileError as exc:
        print(f"error: {exc}")
        return 2
    if args.json:
        print(
            json.dumps(
                {"path": policy.path, **policy.summary(), "spec": policy.spec.to_dict()}, indent=2
            )
        )
    else:
        print(describe(policy))
    if args.wiring_png:
        draw_wiring(policy, args.wiring_png)
        print(f"wiring diagram written to {args.wiring_png}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="summarise a policy file and draw its wiring", description=__doc__
    )
    p.add_argument("policy", help="policy file (.lcp)")
    p.add_argument("--wiring-png", metavar="FILE", help="draw the wiring diagram to this PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
