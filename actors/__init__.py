"""The dramatiq side of MiniFlow: the actors, their middleware, the step registry and the broker.

    node         Node: the actors of one process for its roles, and its background threads
    handlers     the coordinator and results handlers (one transaction each, publish after commit)
    executor     the executor role: run a step, classify its failure, hand in the result
    isolation    running a (redelivered) step in a forked child process
    reconciler   the coordinator's loop: workflow deadlines and repairs after lost messages
    relay        publishing the outbox after commit, and sweeping what crashed processes left
    timer        the cron timer loop
    broker       RabbitMQ or embedded broker set-up; MiniFlow's sends (``publish``)
    guard        the gate every consumed body passes before dramatiq decodes it
    registry     the step registry (``@step``) and StepContext
    middleware/  rejections (dead-letter reports) and tracing, one per module
"""

from .broker import EmbeddedBroker, declare_topology, make_broker, publish
from .node import COORDINATOR, EXECUTOR, RESULTS, ROLES, Node
from .registry import Registry, StepContext, load_step_modules, registry, step

__all__ = [
    "COORDINATOR", "EXECUTOR", "RESULTS", "ROLES", "EmbeddedBroker", "Node", "Registry", "StepContext",
    "declare_topology", "load_step_modules", "make_broker", "publish", "registry", "step",
]
