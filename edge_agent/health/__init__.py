"""Health of the agent: counters, the periodic stats message (system figures, inference
times, drift), and the Prometheus endpoint.

Only `Counters` is imported here: the other modules are imported where they are used, so
`import edge_agent.health` stays cheap and never loads optional libraries.
"""

from edge_agent.health.counters import Counters

__all__ = ["Counters"]
