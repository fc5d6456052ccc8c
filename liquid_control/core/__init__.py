"""The deploy core: numpy only (no torch, no ROS).

Wiring, LTC runtime, interface spec, message adapters and the policy file. `native` is the
compiled core (`_cltc.c` and `csrc/`: the LTC step and training kernel, the safety core and the
input decoder in C), with these numpy modules as its fallback and reference.
"""

from .adapters import ActionWriter, MessageRejected, ObservationAssembler
from .policy import Policy
from .policy_file import PolicyFileError
from .spec import ActionElement, InterfaceSpec, ObservationElement, SpecError
from .wiring import NCP, AutoNCP, FullyConnected, Random, Wiring, WiringError

__all__ = [
    "ActionElement",
    "ActionWriter",
    "AutoNCP",
    "FullyConnected",
    "InterfaceSpec",
    "MessageRejected",
    "NCP",
    "ObservationAssembler",
    "ObservationElement",
    "Policy",
    "PolicyFileError",
    "Random",
    "SpecError",
    "Wiring",
    "WiringError",
]
