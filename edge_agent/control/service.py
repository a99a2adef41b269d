"""The agent's side of remote commands: the inbox attached to the publisher, the handlers of
each command, and the periodic snapshots. Everything here runs on the runtime's main loop
thread (`tick`), except answering "busy" when the inbox is full."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.app.reload import Host as ReloadHost
from edge_agent.control.commands import (
    CommandError,
    Commands,
    DetectArgs,
    Refused,
    Reply,
    SnapshotArgs,
)
from edge_agent.control.model_update import ModelUpdater
from edge_agent.control.snapshot import Every, Snapshot, render
from edge_agent.publish.inbox import Inbox
from edge_agent.publish.payloads import OutMessage, Topics

if TYPE_CHECKING:
    from edge_agent.config.schema import AgentConfig
    from edge_agent.publish.mqtt import MqttPublisher

log = logging.getLogger(__name__)

INBOX_SIZE = 16  # commands waiting for the main loop; more are answered "busy"


class Host(ReloadHost, Protocol):
    """What the commands act on (the runtime's Agent)."""

    def submit(self, msg: OutMessage) -> None:
        """Hand a message to the current publisher."""

    def publish_stats(self) -> None:
        """Publish the stats message now."""

    def reload_config(self) -> dict[str, Any]:
        """Re-read and apply the config file (CommandError with the located error)."""


def topics_of(cfg: AgentConfig) -> Topics:
    """The topic names of a config."""
    return Topics(cfg.mqtt.topic_prefix, cfg.device_id)


class ControlService:
    """Remote commands and periodic snapshots for one agent."""

    def __init__(self, host: Host, now: float) -> None:
        self.host = host
        self.commands = Commands(
            lambda: host.cfg.commands,
            lambda: topics_of(host.cfg),
            host.counters,
            host.submit,
            {
                "snapshot": self._snapshot,
                "detect": self._detect,
                "stats": lambda _args, reply: self._stats(reply),
                "reload": lambda _args, reply: reply.ok(host.reload_config()),
                "model": lambda args, reply: self.models.start(args, reply),
            },
        )
        self.models = ModelUpdater(host)
        self.inbox = Inbox([], INBOX_SIZE, self.commands.busy)
        self.commands.inbox = self.inbox
        self.snapshots = Every(self._snapshot_interval(), now)

    def _snapshot_interval(self) -> float:
        ha = self.host.cfg.homeassistant
        return float(ha.snapshot_interval) if ha.enabled else 0.0

    def attach(self, publisher: MqttPublisher) -> None:
        """Subscribe through `publisher` (on every connect) when commands are enabled; call
        for each new publisher, and after a reload (the config may have changed)."""
        cfg = self.host.cfg
        if not cfg.commands.enabled:
            publisher.inbox = None
            return
        self.inbox.filters = (topics_of(cfg).cmd("+"),)
        self.inbox.v5 = cfg.mqtt.protocol == "5"
        publisher.inbox = self.inbox
        log.info("accepting commands on %s", self.inbox.filters[0])

    def reconfigure(self, now: float) -> None:
        """The config changed: restart the snapshot period."""
        self.snapshots = Every(self._snapshot_interval(), now)

    def tick(self, now: float) -> None:
        """Run the commands that arrived, then the periodic snapshots when due."""
        for _ in range(INBOX_SIZE):
            incoming = self.inbox.get()
            if incoming is None:
                break
            self.commands.handle(incoming)
        self.models.poll()
        if self.snapshots.due(now):
            self.publish_snapshots()

    def publish_snapshots(self) -> None:
        """A retained snapshot of every camera that has processed a frame."""
        for camera in self.host.cfg.cameras:
            try:
                snap = self.snapshot(camera)
            except CommandError:
                continue  # nothing processed yet
            self.host.submit(snap.message(topics_of(self.host.cfg)))

    def camera(self, name: str | None) -> str:
        """The camera a command names (the only one when it names none)."""
        cameras = list(self.host.cfg.cameras)
        listed = ", ".join(cameras)
        if name is None:
            if len(cameras) == 1:
                return cameras[0]
            raise Refused("invalid", f"camera: required, one of {listed}")
        if name not in cameras:
            raise Refused("invalid", f"camera: no camera {name!r} (cameras: {listed})")
        return name

    def snapshot(self, camera: str) -> Snapshot:
        """Render `camera`'s last processed frame."""
        threads = self.host.threads
        worker = threads.workers.get(camera) if threads is not None else None
        last = worker.last_frame if worker is not None else None
        if worker is None or last is None:
            raise CommandError(f"camera {camera!r} has not processed a frame yet")
        cam = worker.pipeline.cam
        return render(camera, last, worker.pipeline.env.labels, cam.zones, cam.lines)

    def _snapshot(self, args: SnapshotArgs, reply: Reply) -> None:
        snap = self.snapshot(self.camera(args.camera))
        topics = topics_of(self.host.cfg)
        self.host.submit(snap.message(topics))
        reply.ok(snap.summary(topics))

    def _detect(self, args: DetectArgs, reply: Reply) -> None:
        camera = self.camera(args.camera)
        threads = self.host.threads
        if threads is None or camera not in threads.pipelines:
            raise CommandError(f"camera {camera!r} is not running")
        pipeline = threads.pipelines[camera]
        changed = pipeline.detect_enabled != args.enabled
        pipeline.detect_enabled = args.enabled
        if changed:
            log.info("camera %s: detection turned %s", camera, "on" if args.enabled else "off")
        reply.ok({"camera": camera, "enabled": args.enabled, "changed": changed})

    def _stats(self, reply: Reply) -> None:
        self.host.publish_stats()
        reply.ok()
