"""What the agent (edge_agent.runtime) reports about itself while it runs: the progress line
(logged, and systemd's STATUS=), READY=1 once the cameras have started, and the watchdog."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_agent.runtime import Agent


def progress(agent: Agent) -> str:
    """Frames per camera (of the total, for a replay) and the messages not yet delivered."""
    parts = []
    for name, source in agent.sources.items():
        done = agent.counters.get(f"frames.processed.{name}")
        total = getattr(source, "total", None)
        state = agent.runners[name].status.state if name in agent.runners else "?"
        shown = f"{done}/{total}" if total else str(done)
        parts.append(f"{name} {shown}" + (f" ({state})" if state != "running" else ""))
    pending = agent.publisher.undelivered() if agent.publisher is not None else 0
    return f"frames {', '.join(parts)}; {pending} messages undelivered"


def service(agent: Agent, now: float) -> None:
    """systemd: READY=1 once every camera has delivered a frame or is retrying (or has
    finished, or failed); the watchdog fed while every pipeline thread beats."""
    if not agent.notifier.ready_sent and all(
        r.status.state != "starting" for r in agent.runners.values()
    ):
        agent.notifier.ready(progress(agent))
    ages = agent._threads().heartbeats.ages()
    for name, runner in agent.runners.items():
        stuck = runner.stuck_age(now)
        if stuck is not None:
            ages[f"capture-{name}"] = round(stuck, 3)
    agent.notifier.watchdog(now, ages)
