"""How a run ends (edge_agent.runtime's Agent): the cameras stop, the workers finish what was
captured, messages are delivered, the final stats go last, and the publisher and the metrics
endpoint close.

A batch run delivers everything unless a signal arrives; from a signal on, everything (the
final stats included) fits in `runtime.shutdown_timeout`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from edge_agent.publish.payloads import camera_state_message

if TYPE_CHECKING:
    from edge_agent.runtime import Agent

log = logging.getLogger(__name__)

FINAL_STATS_WAIT = 5.0  # seconds the final stats message may add to a stop


def shutdown(agent: Agent) -> None:
    """Stop the pipeline, deliver what is pending, publish the final stats and close."""
    pub = agent._pub()
    signalled = agent.signalled.is_set()
    agent.notifier.stopping("stopping: finishing captured frames, delivering messages")
    if signalled:
        log.info("stopping: finishing captured frames")
    agent.stop.set()
    agent.stop_pipeline()  # capture threads stop; the workers drain what was captured
    threads = agent._threads()
    for name, runner in agent.runners.items():
        halted = runner.halt()
        if halted is not None:
            pub.submit(
                camera_state_message(pub.topics, agent.cfg.device_id, name, halted.to_json())
            )
    # Batch runs wait for delivery until signalled; a signalled stop waits a bounded time.
    # The final stats go last, so they count what happened to every message before them.
    # From the signal on, everything (final stats included) fits in shutdown_timeout.
    timeout = agent.cfg.runtime.shutdown_timeout
    until: float | None = time.monotonic() + timeout if signalled else None
    if until is None and not pub.wait_delivered(None, agent.signalled):
        until = time.monotonic() + timeout  # a signal arrived while delivering
    if until is not None and not pub.wait_delivered(until - time.monotonic()):
        log.warning("shutdown timeout: %d messages undelivered", pub.undelivered())
    agent.publish_stats()
    if until is None:
        wait_batch_delivery(agent, min(FINAL_STATS_WAIT, timeout))
    else:
        pub.wait_delivered(max(min(FINAL_STATS_WAIT, until - time.monotonic()), 0.2))
    pub.close()
    if agent.metrics is not None:
        agent.metrics.stop()
    log.info("stopped; counters %s", {**agent.counters.snapshot(), **threads.counters()})


def wait_batch_delivery(agent: Agent, timeout: float) -> None:
    """Until delivered; once a signal arrives, at most `timeout` more."""
    pub = agent._pub()
    if not pub.wait_delivered(None, agent.signalled):
        pub.wait_delivered(timeout)
