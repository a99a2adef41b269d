"""Remote commands over MQTT against the real agent, a private mosquitto and the real SSD
model: allow-list, snapshot, detect on/off, stats, MQTT 5 response topic and correlation
data, commands after a broker restart; live reload; model updates with rollback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import queue
import re
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.camera.pipeline import CameraEnv, CameraPipeline
from edge_agent.config.schema import CameraConfig
from edge_agent.control.commands import Commands, Refused, authorize, parse_args, valid_topic
from edge_agent.control.config import CommandsConfig
from edge_agent.control.model_update import FetchError, fetch
from edge_agent.core.detections import Detections
from edge_agent.health import Counters
from edge_agent.publish.inbox import Inbox, Incoming
from edge_agent.publish.payloads import Topics
from edge_agent.types import Frame
from edge_agent.workers import ModelId
from tests.helpers import (
    SSD,
    SSD_LABELS,
    VIDEO,
    YOLO_LABELS,
    YOLOV8,
    AgentProcess,
    Broker,
    base_config,
    wait_until,
    write_config,
)
from tests.test_systemd import Listener

DEVICE = "cmd-dev"
BASE = f"edge/{DEVICE}"
WAIT = 60.0  # generous bound on any single wait (slow shared CI machines)


@dataclass
class Got:
    """One message as the test client saw it (with its MQTT 5 properties)."""

    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None

    def json(self) -> Any:
        """Payload parsed as JSON."""
        return json.loads(self.payload)


class Commander:
    """An MQTT 5 client that records everything under the device and sends commands."""

    def __init__(self, port: int, extra_topics: tuple[str, ...] = ()) -> None:
        self.messages: list[Got] = []
        self._lock = threading.Lock()
        self._subscribed: queue.Queue[bool] = queue.Queue()
        self.topics = (f"{BASE}/#", *extra_topics)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.put(True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._subscribed.get(timeout=10)

    def _on_connect(self, client: Any, *_: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            self.messages.append(Got(msg.topic, msg.payload, bool(msg.retain), correlation))

    def on(self, suffix: str) -> list[Got]:
        """Messages whose topic ends with suffix, in arrival order."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def index(self) -> int:
        """How many messages arrived so far (a position in arrival order)."""
        with self._lock:
            return len(self.messages)

    def since(self, start: int, suffix: str) -> list[Got]:
        """Messages after position `start` whose topic ends with suffix."""
        with self._lock:
            return [m for m in self.messages[start:] if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Any, timeout: float = WAIT) -> bool:
        """Poll until predicate() is true."""
        return wait_until(predicate, timeout, 0.05)

    def send(
        self,
        name: str,
        body: Any = None,
        sender: str | None = "ops",
        response: str | None = None,
        correlation: bytes | None = None,
    ) -> int:
        """Publish a command; returns the arrival position before it (to find its result)."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if sender is not None:
            props.UserProperty = [("sender", sender)]
        if response is not None:
            props.ResponseTopic = response
        if correlation is not None:
            props.CorrelationData = correlation
        start = self.index()
        payload = b"" if body is None else json.dumps(body).encode()
        self.client.publish(f"{BASE}/cmd/{name}", payload, qos=1, properties=props)
        return start

    def result(self, name: str, start: int, topic: str | None = None) -> Got:
        """The first result of command `name` after position `start`."""
        suffix = topic or f"cmd/{name}/result"
        assert self.wait_for(lambda: self.since(start, suffix)), f"no result for {name}"
        return self.since(start, suffix)[0]

    def call(self, name: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        """Send a command and return its parsed result."""
        start = self.send(name, body, **kw)
        return dict(self.result(name, start).json())

    def stats(self) -> dict[str, int]:
        """Ask for a stats message and return its counters."""
        start = self.send("stats")
        assert self.call_ok(self.result("stats", start))
        assert self.wait_for(lambda: self.since(start, f"{DEVICE}/stats"))
        return dict(self.since(start, f"{DEVICE}/stats")[0].json()["counters"])

    @staticmethod
    def call_ok(got: Got) -> bool:
        """Whether a result says ok."""
        return bool(got.json()["ok"])

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _config(port: int, tmp: Path, **commands: Any) -> dict[str, Any]:
    camera = {
        "source": {"type": "video", "path": str(VIDEO), "realtime": False, "loop": True},
        "motion": {"enabled": False},
        "track": {"enabled": True},
        "objects": {"person": {"min_score": 0.5}},
    }
    cfg = base_config(port, SSD, SSD_LABELS, {"lobby": camera})
    cfg["device_id"] = DEVICE
    cfg["outbox"] = {"path": str(tmp / "outbox.db")}
    cfg["runtime"] = {"stats_interval": 3600}
    cfg["commands"] = {"enabled": True, **commands}
    return cfg


# -- parsing and authorization (no broker) -------------------------------------------------

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("name", "payload", "reason", "text"),
    [
        ("reboot", b"{}", "unknown_command", "unknown command 'reboot'"),
        ("stats", b"[1]", "invalid", "payload must be a JSON object"),
        ("stats", b"{not json", "invalid", "payload is not JSON"),
        ("stats", b'{"x": 1}', "invalid", "x: unknown field"),
        ("detect", b'{"camera": "lobby"}', "invalid", "enabled: Field required"),
        ("detect", b'{"enabled": "no"}', "invalid", "enabled: Input should be a valid boolean"),
        ("snapshot", b'{"camera": 3}', "invalid", "camera: Input should be a valid string"),
        ("model", b'{"sha256": "' + SHA.encode() + b'"}', "invalid", "exactly one of url"),
        ("model", b'{"path": "/m", "sha256": "xyz"}', "invalid", "sha256: String should match"),
        (
            "model",
            b'{"path": "/m", "sha256": "' + SHA.encode() + b'", "labels_path": "/l"}',
            "invalid",
            "labels_url or labels_path go with labels_sha256",
        ),
    ],
)
def test_invalid_commands_name_the_field(name: str, payload: bytes, reason: str, text: str) -> None:
    with pytest.raises(Refused) as err:
        parse_args(name, payload)
    assert err.value.reason == reason and text in str(err.value), str(err.value)


def test_valid_commands_parse() -> None:
    assert parse_args("stats", b"").model_dump() == {}
    assert parse_args("detect", b'{"enabled": false}').enabled is False
    args = parse_args("model", json.dumps({"url": "http://h/m.tflite", "sha256": SHA}).encode())
    assert args.url == "http://h/m.tflite" and args.sha256 == SHA


@pytest.mark.parametrize(
    ("allow", "props", "ok"),
    [
        (None, (), True),
        (["ops"], (("sender", "ops"),), True),
        (["ops"], (("sender", "intruder"), ("sender", "ops")), True),
        (["ops"], (("sender", "intruder"),), False),
        (["ops"], (("other", "ops"),), False),
        (["ops"], (), False),
    ],
)
def test_allow_list(allow: list[str] | None, props: tuple[tuple[str, str], ...], ok: bool) -> None:
    cfg = CommandsConfig(enabled=True, allow=allow)
    incoming = Incoming(f"{BASE}/cmd/stats", b"", props)
    if ok:
        authorize(cfg, incoming)
    else:
        with pytest.raises(Refused, match="sender not allowed"):
            authorize(cfg, incoming)


@pytest.mark.parametrize(
    ("topic", "ok"), [("a/b", True), ("a/+/b", False), ("a/#", False), ("", False)]
)
def test_response_topics_must_be_publishable(topic: str, ok: bool) -> None:
    assert valid_topic(topic) is ok


def test_a_full_inbox_answers_busy() -> None:
    """The MQTT thread only queues; when the queue is full the sender is told "busy"."""
    sent: list[Any] = []
    counters = Counters()
    topics = Topics("edge", DEVICE)
    commands = Commands(
        lambda: CommandsConfig(enabled=True), lambda: topics, counters, sent.append, {}
    )
    inbox = Inbox([topics.cmd("+")], 1, commands.busy)
    commands.inbox = inbox
    message = paho.MQTTMessage(topic=topics.cmd("stats").encode())
    inbox.on_message(None, None, message)
    inbox.on_message(None, None, message)
    assert inbox.get() is not None and inbox.get() is None
    assert counters.get("commands.refused.busy") == 1
    body = json.loads(sent[0].payload)
    assert sent[0].topic == topics.cmd_result("stats") and sent[0].qos == 1 and not sent[0].retain
    assert body["ok"] is False and body["refused"] == "busy" and body["command"] == "stats"


def test_the_model_that_detected_a_frame_names_it_in_its_payloads() -> None:
    """A frame detected by a swapped-in model carries that model's name and sha256 in its
    detections and samples, whatever the camera's configured model is."""
    cam = CameraConfig.model_validate(
        {
            "source": {"type": "images", "path": "/tmp"},
            "samples": {
                "enabled": True,
                "dedup": {"enabled": False},
                "strategies": {"random": {"probability": 1.0, "per_day": 1000}},
            },
        }
    )
    env = CameraEnv("dev", "detect.tflite", ["person"], Topics("edge", "dev"), 1, Counters(), SHA)
    pipeline = CameraPipeline("cam", cam, env, None)
    raw = Detections(
        np.array([[0.1, 0.1, 0.5, 0.9]], np.float32), np.array([0.9], np.float32), np.array([0])
    )
    image = np.zeros((48, 64, 3), np.uint8)
    swapped = ModelId("ssd-v2.tflite", "cd" * 32)
    for i, (model, name, sha) in enumerate(
        [(None, "detect.tflite", SHA), (swapped, "ssd-v2.tflite", "cd" * 32)]
    ):
        ctx = pipeline.process(Frame("cam", i, 1000.0 + i, image), raw, 1.0, model)
        detections = json.loads(ctx.out[0].payload)
        assert detections["model"] == name
        assert [job.body["model"] for job in ctx.samples] == [name]
        assert [job.body["model_sha256"] for job in ctx.samples] == [sha]


def _fetch_case(tmp_path: Path, case: str) -> tuple[str, bool, str, tuple[int, float]]:
    """(source, is_url, sha256, limits) of one fetch case, with the files it needs."""
    data = b"model bytes " * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    good, limits = hashlib.sha256(data).hexdigest(), (10**6, 60.0)
    return {
        "path": (str(src), False, good, limits),
        "file_url": (src.as_uri(), True, good, limits),
        "relative": ("src.bin", False, good, limits),
        "scheme": ("ftp://host/m.tflite", True, good, limits),
        "missing": (str(tmp_path / "nope.tflite"), False, good, limits),
        "mismatch": (str(src), False, "0" * 64, limits),
        "outside": ("/etc/hostname", False, good, limits),
        "outside_url": ("file:///etc/hostname", True, good, limits),
        "too_large": (str(src), False, good, (1000, 60.0)),
        "too_slow": (src.as_uri(), True, good, (10**6, 1e-9)),
    }[case]


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("path", None),
        ("file_url", None),
        ("relative", "must be absolute"),
        ("scheme", "scheme 'ftp' is not supported"),
        ("missing", "cannot fetch"),
        ("mismatch", "sha256 mismatch: the file fetched is not 000"),
        ("outside", "local models are read only from"),
        ("outside_url", "local models are read only from"),
        ("too_large", "more than the limit (1000"),
        ("too_slow", "not done within commands.download_timeout"),
    ],
)
def test_fetch_verifies_and_bounds_downloads(tmp_path: Path, case: str, error: str | None) -> None:
    source, is_url, sha, limits = _fetch_case(tmp_path, case)
    folder = tmp_path / "models"
    roots = (tmp_path,)  # local files only from here
    if error is None:
        got = fetch(source, is_url, sha, folder, ".tflite", limits, roots)
        assert got == folder / f"{sha}.tflite" and _sha(got) == sha
        assert fetch("/gone", False, sha, folder, ".tflite", limits, roots) == got  # cached
    else:
        with pytest.raises(FetchError, match=re.escape(error)) as raised:
            fetch(source, is_url, sha, folder, ".tflite", limits, roots)
        assert _sha(Path(__file__)) not in str(raised.value)  # never a digest of its own
        assert not folder.exists() or not any(folder.iterdir())  # nothing left behind


# -- the real agent ------------------------------------------------------------------------


def _events(cmd: Commander, start: int, kind: str) -> list[dict[str, Any]]:
    return [m.json() for m in cmd.since(start, "lobby/events") if m.json()["type"] == kind]


def test_commands_end_to_end(tmp_path: Path) -> None:
    """One agent run: allow-list, stats, snapshot with a response topic and correlation data,
    detect off/on, and commands again after the broker restarts on the same port."""
    broker = Broker().start()
    cfg = _config(broker.port, tmp_path, allow=["ops"])
    agent = AgentProcess(write_config(tmp_path, cfg))
    cmd = Commander(broker.port, ("replies/#",))
    try:
        assert cmd.wait_for(lambda: len(cmd.on("lobby/detections")) >= 3), agent.output[-3000:]

        # 3. not on the allow-list: refused with a result and a counter; listed: works
        # (a stranger's response topic is not used: the refusal goes to the usual topic)
        refused = cmd.call("stats", sender="intruder", response="replies/intruder")
        assert refused["ok"] is False and refused["refused"] == "not_allowed"
        assert "sender not allowed" in refused["error"]
        assert cmd.call("stats", sender=None)["refused"] == "not_allowed"
        unknown = cmd.call("reboot")
        assert unknown["refused"] == "unknown_command" and "known: detect" in unknown["error"]
        bad = cmd.call("detect", {"enabled": "off"})
        assert bad["refused"] == "invalid" and bad["error"].startswith("enabled: ")
        cmd.stats()
        counters = cmd.stats()  # the second one counts the first
        assert counters["commands.refused.not_allowed"] == 2
        assert counters["commands.refused.unknown_command"] == 1
        assert counters["commands.refused.invalid"] == 1
        assert counters["commands.accepted.stats"] >= 1

        # 6 + 5. snapshot answered on the response topic with the correlation data
        start = cmd.send("snapshot", {}, response="replies/snap", correlation=b"\x00req-7")
        got = cmd.result("snapshot", start, topic="replies/snap")
        assert got.correlation == b"\x00req-7"
        assert not cmd.since(start, "cmd/snapshot/result")  # answered there instead
        result = got.json()
        assert result["ok"] is True and result["topic"] == f"{BASE}/lobby/snapshot"
        snaps = cmd.since(start, "lobby/snapshot")
        assert snaps and snaps[0].retain is False  # retained on the broker, live to us
        image = cv2.imdecode(np.frombuffer(snaps[-1].payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (432, 768, 3)
        assert result["bytes"] == len(snaps[-1].payload) and result["width"] == 768
        assert result["frame"] >= 0 and result["detections"] >= 0

        _detect_off_and_on(cmd)

        # 4. the broker restarts on the same port: commands work again
        broker.stop()
        broker.start()
        assert cmd.wait_for(lambda: len(cmd.on("/status")) >= 2)  # online again
        assert cmd.wait_for(lambda: cmd.on("/status")[-1].payload == b"online")
        assert cmd.call("stats")["ok"] is True
        assert agent.proc.poll() is None
    finally:
        cmd.close()
        agent.proc.terminate()
        code = agent.wait(60)
        broker.stop()
    assert code == 0, agent.output[-3000:]


def _detect_off_and_on(cmd: Commander) -> None:
    """Detection off: live tracks end, no detections while frames are still counted; on:
    detections resume."""
    assert cmd.wait_for(lambda: _events(cmd, 0, "new")), "no track was announced"
    before = cmd.stats()
    off = cmd.call("detect", {"camera": "lobby", "enabled": False})
    assert off == {**off, "ok": True, "camera": "lobby", "enabled": False, "changed": True}
    # Frames detected before the switch may still be published; once frames flow with
    # detection off, nothing more is.
    assert cmd.wait_for(lambda: cmd.stats().get("frames.detect_off.lobby", 0) >= 5)
    quiet_from = cmd.index()
    counters = cmd.stats()
    assert counters["frames.captured.lobby"] > before["frames.captured.lobby"]
    assert cmd.wait_for(lambda: cmd.stats()["frames.detect_off.lobby"] >= 20)
    assert not cmd.since(quiet_from, "lobby/detections")
    ends = _events(cmd, 0, "end")
    assert ends, "turning detection off ends the live tracks"
    on = cmd.call("detect", {"enabled": True})  # the only camera: no name needed
    assert on["ok"] is True and on["enabled"] is True
    start = cmd.index()
    assert cmd.wait_for(lambda: cmd.since(start, "lobby/detections"))


def _fresh_retained(port: int, topic: str) -> Got | None:
    """The retained message on `topic`, as a new subscriber gets it."""
    late = Commander(port, (topic,))
    try:
        late.wait_for(lambda: any(m.retain for m in late.on(topic)), 10)
        kept = [m for m in late.on(topic) if m.retain]
        return kept[0] if kept else None
    finally:
        late.close()


class Notify:
    """systemd's notify socket, read on a thread (READY=1, WATCHDOG=1 ...)."""

    def __init__(self, path: Path) -> None:
        self.listener = Listener(str(path))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            self.listener.drain(0.2)

    def count(self, field: str) -> int:
        """Datagrams so far carrying `field`."""
        return sum(1 for _, fields in list(self.listener.got) if field in fields)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def _in_zone(cmd: Commander, start: int, zone: str) -> bool:
    events = _events(cmd, start, "new") + _events(cmd, start, "update")
    return any(zone in (e.get("current_zones") or []) for e in events)


@pytest.mark.slow
def test_reload_refuses_a_broken_config_and_applies_a_changed_one(tmp_path: Path) -> None:
    """`reload`: a broken file is refused with its located error and the old config keeps
    running; a changed file (a new zone, another label) takes effect in the same process;
    SIGHUP with a changed `mqtt` section replaces the publisher and commands still work.
    READY=1 is sent once and the watchdog is fed across reloads. Home Assistant snapshots
    are published retained every `snapshot_interval`."""
    broker = Broker().start()
    cfg = _config(broker.port, tmp_path)
    cfg["homeassistant"] = {"enabled": True, "snapshot_interval": 1}
    path = write_config(tmp_path, cfg, "config.yaml")
    notify = Notify(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"}
    agent = AgentProcess(path, env=env)
    cmd = Commander(broker.port)
    try:
        assert cmd.wait_for(lambda: cmd.on("lobby/detections")), agent.output[-3000:]
        pid = agent.proc.pid
        # A late subscriber gets the retained snapshot only once the first one is out (a fast
        # detector publishes detections well before the first snapshot tick).
        assert cmd.wait_for(lambda: cmd.on("lobby/snapshot")), agent.output[-3000:]
        snap = _fresh_retained(broker.port, f"{BASE}/lobby/snapshot")
        assert snap is not None
        image = cv2.imdecode(np.frombuffer(snap.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (432, 768, 3)

        good = path.read_text()
        path.write_text(good.replace("min_score: 0.5", "min_score: 1.5"))
        refused = cmd.call("reload")
        assert refused["ok"] is False, refused
        where = r"config\.yaml:\d+: cameras\.lobby\.objects\.person\.min_score: "
        assert re.search(where, refused["error"]), refused["error"]
        start = cmd.index()
        assert cmd.wait_for(lambda: len(cmd.since(start, "lobby/detections")) >= 3)
        labels = {b["label"] for m in cmd.on("lobby/detections") for b in m.json()["detections"]}
        assert labels == {"person"}

        cam = cfg["cameras"]["lobby"]
        cam["objects"] = {"person": {"min_score": 0.5}, "chair": {"min_score": 0.3}}
        cam["zones"] = {"room": {"polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}}
        write_config(tmp_path, cfg, "config.yaml")
        start = cmd.send("reload")
        result = cmd.result("reload", start).json()
        assert result["ok"] is True and result["changed"] == ["cameras"], result
        after = cmd.index()
        assert cmd.wait_for(lambda: cmd.since(after, "lobby/zones/room/count/person"))
        assert cmd.wait_for(lambda: _in_zone(cmd, after, "room"))
        assert not any(
            "room" in str(m.payload) for m in cmd.messages[:start] if "events" in m.topic
        )

        # SIGHUP, and a changed mqtt section: the publisher is replaced, commands still work
        cfg["mqtt"]["keepalive"] = 20
        write_config(tmp_path, cfg, "config.yaml")
        pings = notify.count("WATCHDOG")
        agent.proc.send_signal(signal.SIGHUP)
        assert agent.wait_for_line("config reloaded: mqtt changed", WAIT), agent.output[-3000:]
        assert cmd.call("stats")["ok"] is True
        assert cmd.wait_for(lambda: notify.count("WATCHDOG") >= pings + 3)
        assert agent.proc.poll() is None and agent.proc.pid == pid
        assert notify.count("READY") == 1
        assert agent.count("watchdog not fed") == 0, agent.output[-3000:]
    finally:
        cmd.close()
        agent.proc.terminate()
        code = agent.wait(60)
        broker.stop()
        notify.close()
    assert code == 0, agent.output[-3000:]


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging every request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _models(cmd: Commander, start: int, end: int | None = None) -> list[str]:
    return [m.json()["model"] for m in cmd.messages[start:end] if m.topic.endswith("detections")]


@pytest.mark.slow
def test_model_update_verifies_swaps_between_frames_and_rolls_back(tmp_path: Path) -> None:
    """`model`: a wrong sha256 is refused (nothing kept); a good update swaps between frames
    (no detection before the result names the new model, every one after it does); a file
    that fails to load rolls back (the running model keeps detecting); new labels (SSD to
    YOLOv8) rebuild the pipeline."""
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(SSD, served / "ssd-v2.tflite")
    broken = served / "broken.tflite"
    broken.write_bytes(SSD.read_bytes()[:200_000])  # truncated: not loadable
    server = _serve(served)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    broker = Broker().start()
    agent = AgentProcess(write_config(tmp_path, _config(broker.port, tmp_path)))
    cmd = Commander(broker.port)
    models = tmp_path / "models"
    try:
        assert cmd.wait_for(lambda: cmd.on("lobby/detections")), agent.output[-3000:]

        wrong = cmd.call("model", {"url": f"{url}/ssd-v2.tflite", "sha256": "0" * 64})
        assert wrong["ok"] is False and "sha256 mismatch" in wrong["error"], wrong
        assert not any(models.iterdir())  # the download was removed

        start = cmd.send("model", {"url": f"{url}/ssd-v2.tflite", "sha256": _sha(SSD)})
        result = cmd.result("model", start)
        body = result.json()
        assert body["ok"] is True and body["model"] == "ssd-v2.tflite", body
        assert body["previous"] == "detect.tflite" and body["labels_changed"] is False
        at = cmd.messages.index(result)
        assert set(_models(cmd, 0, at)) == {"detect.tflite"}
        assert cmd.wait_for(lambda: len(_models(cmd, at)) >= 5)
        assert set(_models(cmd, at)) == {"ssd-v2.tflite"}
        assert (models / f"{_sha(SSD)}.tflite").exists()

        failed = cmd.call("model", {"url": f"{url}/broken.tflite", "sha256": _sha(broken)})
        assert failed["ok"] is False and failed["error"], failed
        after = cmd.index()
        assert cmd.wait_for(lambda: len(_models(cmd, after)) >= 3)
        assert set(_models(cmd, after)) == {"ssd-v2.tflite"}  # the old one keeps running

        counters = cmd.stats()
        assert counters["model.refused"] == 1 and counters["model.rollbacks"] == 1
        assert counters["model.updates"] == 1

        # Local files only from the state's models folder (or the configured model's).
        outside = cmd.call("model", {"path": str(YOLOV8), "sha256": _sha(YOLOV8)})
        assert outside["ok"] is False and "read only from" in outside["error"], outside
        shutil.copy(YOLOV8, models / YOLOV8.name)
        shutil.copy(YOLO_LABELS, models / YOLO_LABELS.name)
        yolo = {
            "path": str(models / YOLOV8.name),
            "sha256": _sha(YOLOV8),
            "labels_path": str(models / YOLO_LABELS.name),
            "labels_sha256": _sha(YOLO_LABELS),
        }
        start = cmd.send("model", yolo)
        result = cmd.result("model", start)
        assert result.json()["ok"] is True and result.json()["labels_changed"] is True
        at = cmd.messages.index(result)
        assert cmd.wait_for(lambda: len(_models(cmd, at)) >= 2)
        assert set(_models(cmd, at)) == {YOLOV8.name}
        assert "ssd-v2.tflite" in _models(cmd, 0, at)
        assert agent.proc.poll() is None
    finally:
        cmd.close()
        server.shutdown()
        agent.proc.terminate()
        code = agent.wait(60)
        broker.stop()
    assert code == 0, agent.output[-3000:]
