"""Training step (forward + backward), B=64, T=64, on the CPU: our LTC vs ncps LTC vs LSTM-19.

    .venv/bin/python benchmarks/train_step.py [--batch 64] [--time 64] [--threads 1]

Same wiring (AutoNCP(19, 2), 8 inputs) and the same numerics for every LTC (6 unfolds, softplus
constraints). "compiled" is our module on the C training kernel (`_cltc.c`, the default where it
is built), "fused" the same module on the torch kernel with its hand-written backward (the
fallback), "autograd" step by step in torch ops. Prints ms per step and the ratios of this run.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--time", type=int, default=64)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import ncps.torch
    import ncps.wirings

    from liquid_control.core.wiring import AutoNCP
    from liquid_control.nn import LTC

    B, T, S = args.batch, args.time, args.inputs
    x = torch.randn(B, T, S)
    elapsed = torch.ones(B, T)
    ours = LTC(S, AutoNCP(19, 2, seed=1))
    ref = ncps.torch.LTC(S, ncps.wirings.AutoNCP(19, 2, seed=1))
    lstm = torch.nn.LSTM(S, 19, batch_first=True)

    def run(module, fn):
        def step():
            module.zero_grad(set_to_none=True)
            y = fn()
            y.square().mean().backward()

        return step

    import liquid_control.nn.ltc as ltc_module
    from liquid_control.core import native

    available = native.available  # (ltc_module.native is this module: keep the original)

    def torch_kernel():
        ltc_module.native.available = lambda: False
        try:
            return ours(x, None, elapsed)[0]
        finally:
            ltc_module.native.available = available

    compiled = {}
    if native.available():
        compiled["liquid_control LTC (compiled)"] = run(ours, lambda: ours(x, None, elapsed)[0])
    else:
        print(f"(compiled core not in use: {native.why_not()})")
    results = compare(
        {
            **compiled,
            "liquid_control LTC (fused)": run(ours, torch_kernel),
            "liquid_control LTC (autograd)": run(
                ours, lambda: ours(x, None, elapsed, fused=False)[0]
            ),
            "ncps.torch.LTC": run(ref, lambda: ref(x)[0]),
            "torch.nn.LSTM(8, 19)": run(lstm, lambda: lstm(x)[0]),
        },
        number=1,
        repeats=args.repeats,
    )
    print(
        f"training step fwd+bwd, B={B}, T={T}, {S} inputs, 19 neurons, torch threads={args.threads}, "
        f"torch {torch.__version__}"
    )
    ours_name = next(iter(results))
    print(table(results, ours_name, unit="ms"))


if __name__ == "__main__":
    main()
