"""The dramatiq side of MiniFlow: the actors, the step registry and broker set-up."""

from .app import COORDINATOR, EXECUTOR, RESULTS, ROLES, Node
from .broker import EmbeddedBroker, declare_topology, make_broker
from .registry import Registry, StepContext, load_step_modules, registry, step

__all__ = [
    "COORDINATOR", "EXECUTOR", "RESULTS", "ROLES", "EmbeddedBroker", "Node", "Registry", "StepContext",
    "declare_topology", "load_step_modules", "make_broker", "registry", "step",
]
