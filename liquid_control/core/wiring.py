"""Wirings: which neuron talks to which, with what polarity (numpy only).

A *recipe* (`FullyConnected`, `Random`, `NCP`, `AutoNCP`) holds the design parameters; `recipe.build(
input_dim)` draws a concrete `Wiring`: the adjacency matrices, polarities and neuron layers. The random
draws follow the published NCP rules (Lechner et al. 2020) in the same order as the `ncps` library, so
the same seed gives the same circuit there and here.

Neurons are numbered motor first, then command, then inter (the `ncps` convention): the first
`output_dim` neurons' states are the network's outputs.

`Wiring.to_dict()` stores the matrices themselves (and the recipe that drew them), and
`Wiring.from_dict()` gives back an equal wiring, which `ncps`'s `get_config`/`from_config` does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LAYER_NAMES = ("motor", "command", "inter")
# Far above any NCP a robot runs (19-neuron policies steer cars), far below what a crafted file
# could use to exhaust memory or time.
MAX_UNITS = 1024
MAX_INPUTS = 4096


class WiringError(ValueError):
    """A wiring recipe or serialised wiring is invalid."""


@dataclass(frozen=True, eq=False)
class Wiring:
    """A built wiring.

    Attributes:
        adjacency: (units, units) int8, ``adjacency[src, dest]`` in {-1, 0, +1}: 0 = no synapse,
            +1 excitatory, -1 inhibitory (the initial reversal potential sign).
        sensory_adjacency: (input_dim, units) int8, the same for sensory inputs.
        layers: one name per neuron ("motor" | "command" | "inter").
        output_dim: number of motor neurons (outputs), always neurons ``0 .. output_dim-1``.
        recipe: the recipe parameters that drew it (provenance; the matrices are authoritative).
    """

    adjacency: np.ndarray
    sensory_adjacency: np.ndarray
    layers: tuple[str, ...]
    output_dim: int
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        adj = np.asarray(self.adjacency)
        sadj = np.asarray(self.sensory_adjacency)
        if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
            raise WiringError(f"adjacency: expected a square matrix, got shape {adj.shape}")
        units = adj.shape[0]
        if sadj.ndim != 2 or sadj.shape[1] != units:
            raise WiringError(
                f"sensory_adjacency: expected shape (input_dim, {units}), got {sadj.shape}"
            )
        for name, m in (("adjacency", adj), ("sensory_adjacency", sadj)):
            bad = ~np.isin(m, (-1, 0, 1))
            if bad.any():
                raise WiringError(f"{name}: entries must be -1, 0 or +1, got {m[bad][0]!r}")
        if len(self.layers) != units:
            raise WiringError(f"layers: expected {units} names, got {len(self.layers)}")
        unknown = set(self.layers) - set(LAYER_NAMES)
        if unknown:
            raise WiringError(
                f"layers: unknown layer names {sorted(unknown)}, expected {LAYER_NAMES}"
            )
        if not 1 <= int(self.output_dim) <= units:
            raise WiringError(f"output_dim: expected 1..{units}, got {self.output_dim}")
        object.__setattr__(self, "adjacency", adj.astype(np.int8))
        object.__setattr__(self, "sensory_adjacency", sadj.astype(np.int8))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "output_dim", int(self.output_dim))
        self.adjacency.setflags(write=False)
        self.sensory_adjacency.setflags(write=False)

    # -- shape -----------------------------------------------------------------------------
    @property
    def units(self) -> int:
        """Number of neurons."""
        return int(self.adjacency.shape[0])

    @property
    def input_dim(self) -> int:
        """Number of sensory inputs."""
        return int(self.sensory_adjacency.shape[0])

    @property
    def mask(self) -> np.ndarray:
        """(units, units) float mask of existing recurrent synapses."""
        return np.abs(self.adjacency).astype(np.float64)

    @property
    def sensory_mask(self) -> np.ndarray:
        """(input_dim, units) float mask of existing sensory synapses."""
        return np.abs(self.sensory_adjacency).astype(np.float64)

    def neurons_of(self, layer: str) -> list[int]:
        """Indices of the neurons of one layer (motor, command, inter)."""
        return [i for i, name in enumerate(self.layers) if name == layer]

    # -- counts ----------------------------------------------------------------------------
    @property
    def synapse_count(self) -> int:
        """Number of recurrent synapses."""
        return int(np.count_nonzero(self.adjacency))

    @property
    def sensory_synapse_count(self) -> int:
        """Number of sensory synapses."""
        return int(np.count_nonzero(self.sensory_adjacency))

    def parameter_count(self, input_mapping: str = "affine", output_mapping: str = "affine") -> int:
        """Effective trainable parameters of an LTC on this wiring: masked synapses are not counted.

        Per neuron: gleak, vleak, cm. Per synapse (sensory and recurrent): w, sigma, mu, erev.
        Plus the affine input (2 per input) and output (2 per motor neuron) mappings.
        """
        maps = {"affine": 2, "linear": 1, "none": 0}
        for name, value in (("input_mapping", input_mapping), ("output_mapping", output_mapping)):
            if value not in maps:
                raise WiringError(f"{name}: expected one of {sorted(maps)}, got {value!r}")
        return (
            3 * self.units
            + 4 * (self.synapse_count + self.sensory_synapse_count)
            + maps[input_mapping] * self.input_dim
            + maps[output_mapping] * self.output_dim
        )

    def summary(self) -> dict[str, Any]:
        """Neurons per layer and synapse counts, for `inspect` and reports."""
        return {
            "units": self.units,
            "sensory": self.input_dim,
            "inter": len(self.neurons_of("inter")),
            "command": len(self.neurons_of("command")),
            "motor": len(self.neurons_of("motor")),
            "synapses": self.synapse_count,
            "sensory_synapses": self.sensory_synapse_count,
            "excitatory": int((self.adjacency > 0).sum() + (self.sensory_adjacency > 0).sum()),
            "inhibitory": int((self.adjacency < 0).sum() + (self.sensory_adjacency < 0).sum()),
            "parameters": self.parameter_count(),
        }

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `Wiring.from_dict(w.to_dict()) == w`."""
        return {
            "units": self.units,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "layers": list(self.layers),
            "adjacency": self.adjacency.tolist(),
            "sensory_adjacency": self.sensory_adjacency.tolist(),
            "recipe": dict(self.recipe),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wiring:
        """The wiring `to_dict` wrote; every field is type- and range-checked (WiringError naming
        the field), so a crafted file cannot reach numpy with values it would choke on."""
        if not isinstance(data, dict):
            raise WiringError(f"wiring: expected a dict, got {type(data).__name__}")
        required = ("units", "input_dim", "output_dim", "layers", "adjacency", "sensory_adjacency")
        missing = [k for k in required if k not in data]
        if missing:
            raise WiringError(f"wiring: missing fields {missing}")
        units = _check_positive_int("wiring.units", data["units"], maximum=MAX_UNITS)
        input_dim = _check_positive_int("wiring.input_dim", data["input_dim"], maximum=MAX_INPUTS)
        output_dim = _check_positive_int("wiring.output_dim", data["output_dim"], maximum=units)
        adj = _polarity_matrix("wiring.adjacency", data["adjacency"], units, units)
        sadj = _polarity_matrix(
            "wiring.sensory_adjacency", data["sensory_adjacency"], input_dim, units
        )
        layers = data["layers"]
        if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
            raise WiringError(f"wiring.layers: expected a list of layer names, got {layers!r:.80}")
        recipe = data.get("recipe", {})
        if not isinstance(recipe, dict):
            raise WiringError(f"wiring.recipe: expected a mapping, got {recipe!r:.80}")
        return cls(adj, sadj, tuple(layers), output_dim, dict(recipe))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Wiring):
            return NotImplemented
        return (
            self.output_dim == other.output_dim
            and self.layers == other.layers
            and np.array_equal(self.adjacency, other.adjacency)
            and np.array_equal(self.sensory_adjacency, other.sensory_adjacency)
        )

    def __hash__(self) -> int:
        return hash((self.adjacency.tobytes(), self.sensory_adjacency.tobytes(), self.layers))


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise WiringError(f"{name}: expected an integer >= {minimum}, got {value!r:.40}")
    if maximum is not None and value > maximum:
        raise WiringError(f"{name}: expected an integer <= {maximum}, got {value!r:.40}")
    return int(value)


def _polarity_matrix(name: str, value: Any, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) list of lists of -1/0/+1 integers (no floats, no booleans) as int8."""
    if not isinstance(value, list) or len(value) != rows:
        got = f"{len(value)} rows" if isinstance(value, list) else repr(value)[:40]
        raise WiringError(f"{name}: expected {rows} rows of {cols} entries, got {got}")
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != cols:
            got = f"{len(row)} entries" if isinstance(row, list) else repr(row)[:40]
            raise WiringError(f"{name}[{i}]: expected {cols} entries, got {got}")
        for j, v in enumerate(row):
            if type(v) is not int or v not in (-1, 0, 1):
                raise WiringError(f"{name}[{i}][{j}]: expected -1, 0 or +1, got {v!r:.40}")
    return np.array(value, np.int8).reshape(rows, cols)


@dataclass(frozen=True)
class FullyConnected:
    """Every neuron to every neuron (and every input to every neuron); polarity 2:1 excitatory."""

    units: int
    output_dim: int | None = None
    seed: int = 1111
    self_connections: bool = True

    def build(self, input_dim: int) -> Wiring:
        """Draw the wiring for `input_dim` sensory inputs."""
        units = _check_positive_int("units", self.units)
        input_dim = _check_positive_int("input_dim", input_dim)
        out = (
            units if self.output_dim is None else _check_positive_int("output_dim", self.output_dim)
        )
        rng = np.random.default_rng(self.seed)
        adj = np.zeros((units, units), np.int8)
        for src in range(units):
            for dest in range(units):
                if src == dest and not self.self_connections:
                    continue
                adj[src, dest] = rng.choice([-1, 1, 1])
        sadj = np.zeros((input_dim, units), np.int8)
        for src in range(input_dim):
            for dest in range(units):
                sadj[src, dest] = rng.choice([-1, 1, 1])
        layers = ("motor",) * out + ("inter",) * (units - out)
        return Wiring(adj, sadj, layers, out, {"kind": "FullyConnected", **self.__dict__})


@dataclass(frozen=True)
class Random:
    """A random sparse wiring: a `sparsity_level` fraction of the synapses is removed."""

    units: int
    output_dim: int | None = None
    sparsity_level: float = 0.0
    seed: int = 1111

    def build(self, input_dim: int) -> Wiring:
        """Draw the wiring for `input_dim` sensory inputs."""
        units = _check_positive_int("units", self.units)
        input_dim = _check_positive_int("input_dim", input_dim)
        out = (
            units if self.output_dim is None else _check_positive_int("output_dim", self.output_dim)
        )
        if not 0.0 <= self.sparsity_level < 1.0:
            raise WiringError(
                f"sparsity_level: expected a value in [0, 1), got {self.sparsity_level}"
            )
        rng = np.random.default_rng(self.seed)
        adj = np.zeros((units, units), np.int8)
        pairs = [(s, d) for s in range(units) for d in range(units)]
        n = int(np.round(units * units * (1 - self.sparsity_level)))
        for src, dest in rng.choice(pairs, size=n, replace=False):
            adj[src, dest] = rng.choice([-1, 1, 1])
        sadj = np.zeros((input_dim, units), np.int8)
        pairs = [(s, d) for s in range(input_dim) for d in range(units)]
        n = int(np.round(input_dim * units * (1 - self.sparsity_level)))
        for src, dest in rng.choice(pairs, size=n, replace=False):
            sadj[src, dest] = rng.choice([-1, 1, 1])
        layers = ("motor",) * out + ("inter",) * (units - out)
        return Wiring(adj, sadj, layers, out, {"kind": "Random", **self.__dict__})


@dataclass(frozen=True)
class NCP:
    """Neural Circuit Policy wiring: sensory -> inter -> command (recurrent) -> motor.

    Args:
        inter_neurons, command_neurons, motor_neurons: layer sizes (motor = number of outputs).
        sensory_fanout: synapses from each sensory input to distinct inter neurons.
        inter_fanout: synapses from each inter neuron to distinct command neurons.
        recurrent_command_synapses: random command -> command synapses.
        motor_fanin: synapses into each motor neuron from distinct command neurons.
        seed: seed of the random draws (the same draws as `ncps.wirings.NCP`).
    Neurons left unreachable by the fan-out draws get synapses of the layer's mean fan-in.
    """

    inter_neurons: int
    command_neurons: int
    motor_neurons: int
    sensory_fanout: int
    inter_fanout: int
    recurrent_command_synapses: int
    motor_fanin: int
    seed: int = 22222

    def _validate(self, input_dim: int) -> None:
        for name in (
            "inter_neurons",
            "command_neurons",
            "motor_neurons",
            "sensory_fanout",
            "inter_fanout",
            "motor_fanin",
        ):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("recurrent_command_synapses", self.recurrent_command_synapses, 0)
        _check_positive_int("input_dim", input_dim)
        for fan, fan_name, layer, layer_name in (
            (self.motor_fanin, "motor_fanin", self.command_neurons, "command"),
            (self.sensory_fanout, "sensory_fanout", self.inter_neurons, "inter"),
            (self.inter_fanout, "inter_fanout", self.command_neurons, "command"),
        ):
            if fan > layer:
                raise WiringError(
                    f"{fan_name}: is {fan} but there are only {layer} {layer_name} neurons"
                )

    def build(self, input_dim: int) -> Wiring:
        """Draw the wiring for `input_dim` sensory inputs."""
        self._validate(input_dim)
        n_motor, n_cmd, n_inter = self.motor_neurons, self.command_neurons, self.inter_neurons
        units = n_motor + n_cmd + n_inter
        motor = list(range(n_motor))
        command = list(range(n_motor, n_motor + n_cmd))
        inter = list(range(n_motor + n_cmd, units))
        sensory = list(range(input_dim))
        rng = np.random.RandomState(self.seed)
        adj = np.zeros((units, units), np.int8)
        sadj = np.zeros((input_dim, units), np.int8)

        def fan_layer(matrix, sources, targets, fanout, src_is_row=True):
            # Each source draws `fanout` distinct targets; targets nobody reached then draw
            # mean-fan-in sources. Draw order mirrors ncps so seeds give identical circuits.
            unreachable = list(targets)
            for a in sources:
                for b in rng.choice(targets, size=fanout, replace=False):
                    if b in unreachable:
                        unreachable.remove(b)
                    pol = rng.choice([-1, 1])
                    if src_is_row:
                        matrix[a, b] = pol
                    else:
                        matrix[b, a] = pol
            mean_fanin = int(np.clip(int(len(sources) * fanout / len(targets)), 1, len(sources)))
            for b in unreachable:
                for a in rng.choice(sources, size=mean_fanin, replace=False):
                    pol = rng.choice([-1, 1])
                    if src_is_row:
                        matrix[a, b] = pol
                    else:
                        matrix[b, a] = pol

        fan_layer(sadj, sensory, inter, self.sensory_fanout)  # sensory -> inter
        fan_layer(adj, inter, command, self.inter_fanout)  # inter -> command
        for _ in range(self.recurrent_command_synapses):  # command -> command
            src = rng.choice(command)
            dest = rng.choice(command)
            adj[src, dest] = rng.choice([-1, 1])
        # command -> motor: each motor neuron draws `motor_fanin` command neurons (rows = motor).
        fan_layer(adj, motor, command, self.motor_fanin, src_is_row=False)
        layers = ("motor",) * n_motor + ("command",) * n_cmd + ("inter",) * n_inter
        return Wiring(adj, sadj, layers, n_motor, {"kind": "NCP", **self.__dict__})


@dataclass(frozen=True)
class AutoNCP:
    """An NCP sized from the total neuron count and the number of outputs (as `ncps.wirings.AutoNCP`)."""

    units: int
    output_size: int
    sparsity_level: float = 0.5
    seed: int = 22222

    def to_ncp(self) -> NCP:
        """The NCP recipe with the layer sizes and fan-outs this AutoNCP chooses."""
        _check_positive_int("units", self.units)
        _check_positive_int("output_size", self.output_size)
        if self.output_size >= self.units - 2:
            raise WiringError(
                f"output_size: must be less than units - 2 = {self.units - 2}, got {self.output_size}"
            )
        if not 0.1 <= self.sparsity_level <= 1.0:
            raise WiringError(
                f"sparsity_level: expected a value in [0.1, 1.0], got {self.sparsity_level}"
            )
        density = 1.0 - self.sparsity_level
        inter_and_command = self.units - self.output_size
        command = max(int(0.4 * inter_and_command), 1)
        inter = inter_and_command - command
        return NCP(
            inter_neurons=inter,
            command_neurons=command,
            motor_neurons=self.output_size,
            sensory_fanout=max(int(inter * density), 1),
            inter_fanout=max(int(command * density), 1),
            recurrent_command_synapses=max(int(command * density * 2), 1),
            motor_fanin=max(int(command * density), 1),
            seed=self.seed,
        )

    def build(self, input_dim: int) -> Wiring:
        """Draw the wiring for `input_dim` sensory inputs."""
        built = self.to_ncp().build(input_dim)
        return Wiring(
            built.adjacency,
            built.sensory_adjacency,
            built.layers,
            built.output_dim,
            {"kind": "AutoNCP", **self.__dict__},
        )


RECIPES = {"FullyConnected": FullyConnected, "Random": Random, "NCP": NCP, "AutoNCP": AutoNCP}


def recipe_from_dict(data: dict[str, Any]):
    """Recipe object from ``{"kind": ..., **params}`` (as in a training YAML)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in RECIPES:
        raise WiringError(f"wiring.kind: expected one of {sorted(RECIPES)}, got {kind!r}")
    try:
        return RECIPES[kind](**data)
    except TypeError as exc:
        raise WiringError(f"wiring ({kind}): {exc}") from exc
