"""Deploy step at batch 1 (19 neurons, 8 inputs): numpy runtime vs ncps LTC vs torch.nn.LSTM(8, 19).

    .venv/bin/python benchmarks/deploy_step.py [--number 2000]

"compiled Policy.step" is the whole robot-side step (normalise, LTC with elapsed time, scale,
clip) in one call to the C core; "numpy Policy.step" the same on the numpy runtime (the fallback);
"numpy LTC cell" the numpy network alone. The anchors run one step of a sequence with the state carried,
under torch.no_grad(), one torch thread. Prints microseconds per step and the ratios of this run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000, help="steps per timing repeat")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import ncps.torch
    import ncps.wirings

    from liquid_control.core import native
    from liquid_control.core.spec import ActionElement, InterfaceSpec, ObservationElement
    from liquid_control.core.wiring import AutoNCP
    from liquid_control.nn import LTC

    S, M = 8, 2
    spec = InterfaceSpec(
        "bench",
        [
            ObservationElement(f"x{i}", "obs", "std_msgs/Float64MultiArray", "data", index=i)
            for i in range(S)
        ],
        [
            ActionElement(f"a{j}", "cmd", "std_msgs/Float64MultiArray", "data", index=j)
            for j in range(M)
        ],
        100.0,
    )
    policy = LTC(S, AutoNCP(19, M, seed=1)).to_policy(spec)
    numpy_policy = copy.deepcopy(policy)
    numpy_policy._net = None  # the numpy runtime (what runs without the compiled core)
    cell = policy._cell
    obs = np.random.default_rng(0).normal(size=S)
    v = cell.zero_state()

    ref = ncps.torch.LTC(S, ncps.wirings.AutoNCP(19, M, seed=1)).eval()
    lstm = torch.nn.LSTM(S, 19, batch_first=True).eval()
    xt = torch.as_tensor(obs, dtype=torch.float32).view(1, 1, S)
    state = {"ncps": torch.zeros(1, 19), "lstm": None}

    def ncps_step():
        with torch.no_grad():
            _, state["ncps"] = ref(xt, state["ncps"])

    def lstm_step():
        with torch.no_grad():
            _, state["lstm"] = lstm(xt, state["lstm"])

    contenders = {}
    if policy.native:
        contenders["compiled Policy.step"] = lambda: policy.step(obs, dt=0.0101)
    results = compare(
        {
            **contenders,
            "numpy Policy.step": lambda: numpy_policy.step(obs, dt=0.0101),
            "numpy LTC cell": lambda: cell.step(obs, v, 1.0),
            "ncps.torch.LTC": ncps_step,
            "torch.nn.LSTM(8, 19)": lstm_step,
        },
        number=args.number,
        repeats=args.repeats,
    )
    print(
        f"deploy step, batch 1, 8 inputs, 19 neurons ({cell.wiring.synapse_count + cell.wiring.sensory_synapse_count} "
        f"synapses), 6 unfolds; numpy {np.__version__}, torch {torch.__version__} (1 thread)"
    )
    ours = "compiled Policy.step" if policy.native else "numpy Policy.step"
    if not policy.native:
        print(f"(compiled core not in use: {native.why_not()})")
    print(table(results, ours, unit="us"))


if __name__ == "__main__":
    main()
