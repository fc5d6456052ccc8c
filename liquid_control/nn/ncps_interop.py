"""Take a trained `ncps.torch.LTC` (or `LTCCell`) into liquid_control.

    from liquid_control.nn import from_ncps
    ours = from_ncps(trained_ncps_ltc)          # same outputs to float precision
    policy = ours.to_policy(spec)               # then deploy with the numpy runtime

The wiring (adjacency, polarity, layers) is read from the ncps wiring; the parameters are copied
as they are (the ncps names are ours), keeping the module's constraint mode (softplus or clipping).
ncps's "linear"/"none" input and output mappings become our affine mapping with the bias (and
weight) fixed at the identity values. ncps itself is not needed at run time: only this function
imports nothing from it, it reads the module's attributes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.ltc import PARAM_NAMES
from ..core.wiring import LAYER_NAMES, Wiring
from .ltc import LTC


def _wiring_from_ncps(w) -> Wiring:
    if w.input_dim is None:
        raise ValueError(
            "ncps wiring is not built (input_dim unknown): run the module once or call wiring.build()"
        )
    layers = tuple(w.get_type_of_neuron(i) for i in range(w.units))
    unknown = set(layers) - set(LAYER_NAMES)
    if unknown:
        raise ValueError(f"ncps wiring has neuron types {sorted(unknown)}, expected {LAYER_NAMES}")
    recipe = {"kind": f"ncps.{type(w).__name__}"}
    return Wiring(
        np.asarray(w.adjacency_matrix),
        np.asarray(w.sensory_adjacency_matrix),
        layers,
        int(w.output_dim),
        recipe,
    )


def from_ncps(module) -> LTC:
    """Our `LTC` with the weights, masks and constraint mode of an ncps LTC / LTCCell."""
    if getattr(module, "use_mixed", False):
        raise ValueError(
            "ncps LTC with mixed_memory=True is not an LTC policy (it adds an LSTM); not supported"
        )
    cell = getattr(module, "rnn_cell", module)
    if type(cell).__name__ != "LTCCell":
        raise TypeError(f"expected ncps.torch.LTC or LTCCell, got {type(module).__name__}")
    wiring = _wiring_from_ncps(cell._wiring)
    ours = LTC(
        wiring.input_dim,
        wiring,
        ode_unfolds=cell._ode_unfolds,
        epsilon=cell._epsilon,
        implicit_param_constraints=cell._implicit_param_constraints,
    )
    params = cell._params
    identity = {
        "input_w": torch.ones(wiring.input_dim),
        "input_b": torch.zeros(wiring.input_dim),
        "output_w": torch.ones(wiring.output_dim),
        "output_b": torch.zeros(wiring.output_dim),
    }
    with torch.no_grad():
        for name in PARAM_NAMES:
            value = params[name] if name in params else identity[name]
            getattr(ours, name).copy_(value.detach().to(torch.float32))
    for name, ours_mask in (
        ("sparsity_mask", ours.sparsity_mask),
        ("sensory_sparsity_mask", ours.sensory_sparsity_mask),
    ):
        if not torch.equal(params[name].detach().float().cpu(), ours_mask):
            raise ValueError(
                f"ncps {name} differs from its wiring's adjacency; edited masks are not supported"
            )
    return ours
