"""NCP wiring rules, determinism, equality with ncps, and the exact serialisation round trip."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liquid_control.core.wiring import (
    NCP,
    AutoNCP,
    FullyConnected,
    Random,
    Wiring,
    WiringError,
    recipe_from_dict,
)

ncp_configs = st.builds(
    lambda inter, command, motor, sf, itf, rec, mf, seed, inputs: (
        NCP(inter, command, motor, min(sf, inter), min(itf, command), rec, min(mf, command), seed),
        inputs,
    ),
    st.integers(1, 12),
    st.integers(1, 10),
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(1, 10),
    st.integers(0, 12),
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
    st.integers(1, 10),
)


@settings(max_examples=60, deadline=None)
@given(ncp_configs)
def test_ncp_follows_the_published_layer_rules(cfg):
    recipe, inputs = cfg
    w = recipe.build(inputs)
    motor, command, inter = w.neurons_of("motor"), w.neurons_of("command"), w.neurons_of("inter")
    assert motor == list(range(recipe.motor_neurons))  # motor neurons first: they are the outputs
    # sensory synapses only into inter neurons; each input reaches at least sensory_fanout of them
    assert not w.sensory_adjacency[:, motor + command].any()
    assert (np.count_nonzero(w.sensory_adjacency[:, inter], axis=1) >= recipe.sensory_fanout).all()
    # recurrent synapses only inter->command, command->command, command->motor
    allowed = np.zeros((w.units, w.units), bool)
    allowed[np.ix_(inter, command)] = True
    allowed[np.ix_(command, command)] = True
    allowed[np.ix_(command, motor)] = True
    assert not w.adjacency[~allowed].any()
    # no unreachable neurons: every inter, command and motor neuron has an input
    assert (np.count_nonzero(w.sensory_adjacency[:, inter], axis=0) >= 1).all()
    assert (np.count_nonzero(w.adjacency[np.ix_(inter, command)], axis=0) >= 1).all()
    assert (
        np.count_nonzero(w.adjacency[np.ix_(command, motor)], axis=0) >= recipe.motor_fanin
    ).all()
    # every command neuron drives a motor neuron, every inter neuron a command neuron
    assert (np.count_nonzero(w.adjacency[np.ix_(command, motor)], axis=1) >= 1).all()
    assert (
        np.count_nonzero(w.adjacency[np.ix_(inter, command)], axis=1) >= recipe.inter_fanout
    ).all()
    assert set(np.unique(w.adjacency)) <= {-1, 0, 1}


@settings(max_examples=40, deadline=None)
@given(ncp_configs)
def test_ncp_draws_equal_the_ncps_library_for_the_same_seed(cfg):
    ncps_wirings = pytest.importorskip("ncps.wirings")
    recipe, inputs = cfg
    theirs = ncps_wirings.NCP(
        *[
            getattr(recipe, f)
            for f in (
                "inter_neurons",
                "command_neurons",
                "motor_neurons",
                "sensory_fanout",
                "inter_fanout",
                "recurrent_command_synapses",
                "motor_fanin",
            )
        ],
        seed=recipe.seed,
    )
    theirs.build(inputs)
    ours = recipe.build(inputs)
    assert np.array_equal(ours.adjacency, theirs.adjacency_matrix)
    assert np.array_equal(ours.sensory_adjacency, theirs.sensory_adjacency_matrix)


@pytest.mark.parametrize(
    "units,outputs,sparsity,seed", [(19, 1, 0.5, 0), (19, 2, 0.5, 7), (32, 4, 0.7, 3)]
)
def test_auto_ncp_equals_ncps_auto_ncp(units, outputs, sparsity, seed):
    ncps_wirings = pytest.importorskip("ncps.wirings")
    theirs = ncps_wirings.AutoNCP(units, outputs, sparsity_level=sparsity, seed=seed)
    theirs.build(8)
    ours = AutoNCP(units, outputs, sparsity, seed).build(8)
    assert np.array_equal(ours.adjacency, theirs.adjacency_matrix)
    assert np.array_equal(ours.sensory_adjacency, theirs.sensory_adjacency_matrix)
    assert ours.layers == tuple(theirs.get_type_of_neuron(i) for i in range(units))


@pytest.mark.parametrize(
    "recipe",
    [
        FullyConnected(7, 2, seed=3),
        FullyConnected(5, self_connections=False),
        Random(9, 3, 0.6, seed=1),
        NCP(5, 4, 2, 3, 2, 4, 2, seed=9),
        AutoNCP(19, 2, seed=5),
    ],
)
def test_wiring_round_trips_exactly_through_json(recipe):
    w = recipe.build(6)
    again = Wiring.from_dict(json.loads(json.dumps(w.to_dict())))
    assert again == w
    assert again.recipe == w.recipe
    assert again.summary() == w.summary()
    # the recipe stored in the dict rebuilds the same circuit
    assert recipe_from_dict(w.to_dict()["recipe"]).build(6) == w


def test_same_seed_same_wiring_different_seed_different_wiring():
    assert AutoNCP(19, 2, seed=1).build(8) == AutoNCP(19, 2, seed=1).build(8)
    assert AutoNCP(19, 2, seed=1).build(8) != AutoNCP(19, 2, seed=2).build(8)


def test_parameter_count_counts_only_existing_synapses():
    w = AutoNCP(19, 1, seed=0).build(5)
    s = w.summary()
    assert s["units"] == 19 and s["motor"] == 1 and s["inter"] + s["command"] == 18
    expected = 3 * 19 + 4 * (w.synapse_count + w.sensory_synapse_count) + 2 * 5 + 2 * 1
    assert w.parameter_count() == expected
    dense = 3 * 19 + 4 * (19 * 19 + 5 * 19) + 2 * 5 + 2
    assert w.parameter_count() < dense / 3


@pytest.mark.parametrize(
    "recipe,inputs,match",
    [
        (NCP(3, 2, 1, 5, 1, 1, 1), 4, "sensory_fanout: is 5 but there are only 3 inter"),
        (NCP(3, 2, 1, 1, 3, 1, 1), 4, "inter_fanout"),
        (NCP(3, 2, 1, 1, 1, 1, 3), 4, "motor_fanin"),
        (NCP(0, 2, 1, 1, 1, 1, 1), 4, "inter_neurons"),
        (AutoNCP(5, 4), 4, "output_size"),
        (AutoNCP(19, 2, sparsity_level=0.01), 4, "sparsity_level"),
        (Random(5, sparsity_level=1.0), 4, "sparsity_level"),
        (FullyConnected(5), 0, "input_dim"),
    ],
)
def test_bad_recipes_name_the_field(recipe, inputs, match):
    with pytest.raises(WiringError, match=match):
        recipe.build(inputs)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("adjacency"), "missing fields"),
        (
            lambda d: d.update(adjacency=[[2] * 19] * 19),
            "adjacency\\[0\\]\\[0\\]: expected -1, 0 or \\+1",
        ),
        (lambda d: d.update(units=20), "expected 20 rows of 20 entries, got 19 rows"),
        (lambda d: d["adjacency"][3].__setitem__(2, 2**70), "adjacency\\[3\\]\\[2\\]: expected -1"),
        (lambda d: d["adjacency"][0].__setitem__(0, 1.0), "adjacency\\[0\\]\\[0\\]: expected -1"),
        (lambda d: d["adjacency"][0].__setitem__(0, True), "adjacency\\[0\\]\\[0\\]: expected -1"),
        (lambda d: d.update(layers=[["motor"]] * 19), "layers: expected a list of layer names"),
        (lambda d: d.update(units=10**30), "units: expected an integer <= 1024"),
        (lambda d: d.update(layers=["motor"] * 18), "layers: expected 19 names"),
        (lambda d: d.update(layers=["brain"] * 19), "unknown layer names"),
        (lambda d: d.update(output_dim=0), "output_dim"),
    ],
)
def test_corrupt_serialised_wiring_is_refused(mutate, match):
    d = AutoNCP(19, 2, seed=1).build(4).to_dict()
    mutate(d)
    with pytest.raises(WiringError, match=match):
        Wiring.from_dict(d)


def test_built_wiring_matrices_are_read_only():
    w = AutoNCP(19, 2).build(3)
    with pytest.raises(ValueError):
        w.adjacency[0, 0] = 1
