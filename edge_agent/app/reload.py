"""Live reload (SIGHUP and the `reload` command): a valid, changed config takes effect without
restarting the process.

Everything that can fail is built first, while the old pipeline runs (the model when `model:`
changed, label checks, classifiers, face models, replay sources, the new outbox): a failure
refuses the reload with its located error and nothing changes. Then the cameras stop, the
workers finish what was captured (tracks end cleanly), the publisher and outbox are replaced
only when `mqtt`, `outbox`, `device_id` or `commands.enabled` changed (after delivering, within
`runtime.shutdown_timeout`), and the pipeline is rebuilt from the new config and started.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.app.build import Parts, build_parts, close_sources, load_detectors, open_outbox_at
from edge_agent.config.loader import LoadedConfig
from edge_agent.config.schema import AgentConfig, ModelConfig
from edge_agent.files import file_sha256
from edge_agent.publish.client import read_password, tls_context
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.stores import default_path
from edge_agent.workers import ModelId

if TYPE_CHECKING:
    import threading

    from edge_agent.assemble import Threads
    from edge_agent.control.service import ControlService
    from edge_agent.detect.detector import Detector
    from edge_agent.health import Counters
    from edge_agent.health.stats import Health
    from edge_agent.publish.outbox import Outbox

log = logging.getLogger(__name__)

PUBLISHER_SECTIONS = ("mqtt", "outbox", "device_id")  # the publisher and outbox are replaced
RESTART_SECTIONS = ("log", "metrics")  # read once at start: a restart applies them


@dataclass(frozen=True)
class ActiveModel:
    """The model the detect workers run: its config section and identity."""

    cfg: ModelConfig
    id: ModelId

    @staticmethod
    def of(cfg: ModelConfig) -> ActiveModel:
        """The model a config names."""
        return ActiveModel(cfg, ModelId(cfg.path.name, file_sha256(cfg.path)))


class Host(Protocol):
    """The agent as a reload sees it."""

    loaded: LoadedConfig
    cfg: AgentConfig
    counters: Counters
    start_ts: float
    threads: Threads | None
    publisher: MqttPublisher | None
    outbox: Outbox | None
    control: ControlService | None
    model: ActiveModel | None
    health: Health
    signalled: threading.Event

    def stop_pipeline(self) -> None:
        """Stop the cameras and let the workers finish what was captured."""

    def start_pipeline(self, parts: Parts) -> None:
        """Build the threads from `parts` and the current config, and start them."""


def changed_sections(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The top-level sections (and keys) whose values differ."""
    return [name for name in type(old).model_fields if getattr(old, name) != getattr(new, name)]


def publisher_changes(old: AgentConfig, new: AgentConfig) -> bool:
    """Whether the publisher (and outbox) must be replaced."""
    if any(getattr(old, s) != getattr(new, s) for s in PUBLISHER_SECTIONS):
        return True
    return old.commands.enabled != new.commands.enabled  # subscriptions are made at connect


def outbox_path(cfg: AgentConfig) -> str:
    """The outbox file a config uses ("" when it keeps messages in memory)."""
    if not cfg.outbox.enabled:
        return ""
    return str(cfg.outbox.path or default_path(cfg.device_id, os.environ))


def current_detectors(host: Host) -> list[Detector]:
    """The detectors the workers hold now (a model update may have swapped them)."""
    return [w.detector for w in host.threads.detect] if host.threads is not None else []


def _detectors(host: Host, fresh: LoadedConfig) -> tuple[list[Detector], ActiveModel]:
    """Keep the running detectors unless `model:` changed (more workers load more)."""
    want = fresh.config.runtime.detect_workers
    if fresh.config.model != host.cfg.model:
        detectors = load_detectors(fresh, want)
        return detectors, ActiveModel.of(fresh.config.model)
    model = host.model or ActiveModel.of(host.cfg.model)
    kept = current_detectors(host)[:want]
    if len(kept) < want:
        kept += load_detectors(fresh, want - len(kept), model.cfg)
    return kept, model


def apply_config(host: Host, fresh: LoadedConfig) -> dict[str, Any]:
    """Apply `fresh` (validated); the result names what changed. A UserError (located)
    refuses it: the running config stays."""
    old = host.cfg
    changed = changed_sections(old, fresh.config)
    if not changed:
        log.info("config %s is unchanged", fresh.file)
        return {"changed": []}
    detectors, model = _detectors(host, fresh)
    parts = build_parts(fresh, detectors, host.start_ts, host.counters)
    swap = publisher_changes(old, fresh.config)
    outbox: Outbox | None = None
    try:
        if swap:
            read_password(fresh.config.mqtt)  # the files the new publisher needs, checked now
            if fresh.config.mqtt.tls.enabled:
                tls_context(fresh.config.mqtt)
            if outbox_path(fresh.config) != outbox_path(old):
                outbox = open_outbox_at(fresh, host.counters)
    except Exception:
        close_sources(parts.sources)
        raise
    log.info("config %s changed (%s): applying it", fresh.file, ", ".join(changed))
    host.stop_pipeline()
    if swap:
        _replace_publisher(host, fresh, outbox)
    host.loaded, host.cfg, host.model = fresh, fresh.config, model
    host.start_pipeline(parts)
    later = [s for s in changed if s in RESTART_SECTIONS]
    if later:
        log.warning("config sections %s apply at the next start", ", ".join(later))
    log.info("config reloaded: %s changed", ", ".join(changed))
    return {"changed": changed, "restart_needed": later}


def _replace_publisher(host: Host, fresh: LoadedConfig, outbox: Outbox | None) -> None:
    """Deliver what is pending (bounded), close the publisher and its outbox, open the new
    ones and start publishing."""
    old = host.publisher
    if old is not None:
        timeout = host.cfg.runtime.shutdown_timeout
        if not old.wait_delivered(timeout, host.signalled):
            log.warning("%d messages stay in the previous outbox", old.undelivered())
        old.close()
    cfg = fresh.config
    host.outbox = outbox or open_outbox_at(fresh, host.counters)
    host.publisher = MqttPublisher(cfg.mqtt, cfg.device_id, host.counters, host.outbox)
    host.cfg = cfg  # the command subscriptions follow the new config
    if host.control is not None:
        host.control.attach(host.publisher)
    host.publisher.start()
