"""Acceptance 5: two collectors on one shared subscription while 2,200 samples are published;
one is SIGKILLed midway and restarted. Every sample ends up stored exactly once in the union
of the two dataset folders: none lost, none twice (the index and the image files agree)."""

from __future__ import annotations

import copy
import threading
import uuid
from pathlib import Path

import cv2
import pytest

from tests.helpers import IMAGES, SSD, SSD_LABELS, Broker, Run, base_config, run_to_end
from tests.test_collect import (
    CollectorProcess,
    Publisher,
    det,
    dumps,
    index_ids,
    sample,
    unique_prefix,
    wait_until,
)

N = 2200
KILL_AFTER = 300  # samples the first collector has stored when it is killed


def _payloads() -> tuple[list[str], list[bytes]]:
    """N distinct small samples (one real JPEG, ~6 KB, shared; ids and frames differ)."""
    frame = cv2.resize(cv2.imread(str(IMAGES / "zidane.jpg")), (192, 108))
    base = sample(frame, [det("person", 0.41, [0.1, 0.06, 0.89, 0.99], 1)], max_side=192)
    ids, payloads = [], []
    for n in range(N):
        body = copy.copy(base)
        body.update(id=uuid.uuid4().hex, frame=n, ts=1_760_000_000.0 + n / 10)
        ids.append(body["id"])
        payloads.append(dumps(body))
    return ids, payloads


def _union(outs: dict[str, Path]) -> int:
    return sum(len(index_ids(out)) for out in outs.values())


def _stored_images(out: Path) -> list[str]:
    return [p.stem for p in (out / "images").rglob("*.jpg")]


def test_two_collectors_share_the_samples_and_a_killed_one_loses_none(
    broker: Broker, tmp_path: Path
) -> None:
    prefix, group = unique_prefix(), f"g{uuid.uuid4().hex[:8]}"
    outs = {name: tmp_path / name for name in ("a", "b")}

    def start(name: str) -> CollectorProcess:
        args = ["--topic", f"{prefix}/+/+/samples", "--group", group, "--log-level", "debug"]
        return CollectorProcess(broker.port, outs[name], *args, "--client-id", f"{group}-{name}")

    ids, payloads = _payloads()
    a, b = start("a"), start("b")
    pub = Publisher(broker.port)
    sender = threading.Thread(target=pub.send, args=(f"{prefix}/dev-1/cam/samples", payloads))
    restarted = None
    try:
        sender.start()
        assert wait_until(lambda: len(index_ids(outs["a"])) >= KILL_AFTER, 120), a.output
        a.proc.kill()  # SIGKILL: no flush, no acknowledgement of what is in flight
        assert a.proc.wait(10) == -9
        sender.join(120)
        assert not sender.is_alive()
        restarted = start("a")  # same folder, same client id: the broker session resumes
        assert wait_until(lambda: _union(outs) >= N, 120, step=0.5), restarted.output
        assert restarted.stop() == 0 and b.stop() == 0, restarted.output + b.output
    finally:
        pub.close()
        for col in (a, b, restarted):
            if col is not None:
                col.kill()
    stored = {name: index_ids(out) for name, out in outs.items()}
    assert sorted(stored["a"] + stored["b"]) == sorted(ids)  # every sample, none twice
    assert len(stored["a"]) > KILL_AFTER and len(stored["b"]) > N // 10  # both took a share
    for name, out in outs.items():
        assert sorted(_stored_images(out)) == sorted(stored[name])
    print(
        f"\nshared subscription: a stored {len(stored['a'])}, b {len(stored['b'])}; "
        f"after the restart a found {restarted.totals()['duplicates']} duplicates"
    )


def test_a_broker_restart_mid_stream_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    """The broker goes down while the collector holds unacknowledged messages: those are
    never acknowledged on the new connection (their packet ids belong to the old one); the
    resumed session sends them again and the index recognises what it already stored."""
    broker = Broker(persistent=True).start()
    prefix, out = unique_prefix(), tmp_path / "ds"
    ids, payloads = _payloads()
    ids, payloads = ids[:600], payloads[:600]
    col = CollectorProcess(
        broker.port, out, "--topic", f"{prefix}/+/+/samples", "--log-level", "debug"
    )
    pub = Publisher(broker.port)
    try:
        pub.send(f"{prefix}/dev-1/cam/samples", payloads)
        pub.close()
        assert wait_until(lambda: len(index_ids(out)) >= 100, 60), col.output
        broker.stop()  # mosquitto saves its sessions and their queued messages
        broker.start()
        assert col.wait_for_line("session present: True", 30), col.output
        assert wait_until(lambda: len(index_ids(out)) >= len(ids), 60), col.output
        assert col.stop() == 0, col.output
    finally:
        col.kill()
        broker.stop()
    assert sorted(index_ids(out)) == sorted(ids)
    assert sorted(_stored_images(out)) == sorted(ids)
    print(f"\nbroker restart: {col.totals()['duplicates']} redelivered duplicates recognised")


@pytest.mark.slow
def test_while_the_agent_publishes_2200_samples_a_killed_collector_loses_none(
    broker: Broker, tmp_path: Path
) -> None:
    """The same with the real agent as the publisher: 2,200 frames, each one a sample."""
    frames = tmp_path / "frames"
    frames.mkdir()
    base = cv2.resize(cv2.imread(str(IMAGES / "bus.jpg")), (144, 192))
    for n in range(N):
        frame = base.copy()
        cv2.putText(frame, str(n), (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 255), 2)
        cv2.imwrite(str(frames / f"{n:05d}.png"), frame)
    cfg = base_config(
        broker.port,
        SSD,
        SSD_LABELS,
        {
            "cam": {
                "source": {"type": "images", "path": str(frames), "fps": 10},
                "motion": {"enabled": False},
                "samples": {
                    "enabled": True,
                    "strategies": {"random": {"probability": 1.0, "per_day": None}},
                    "dedup": {"enabled": False},
                },
            }
        },
    )
    cfg["device_id"] = device = f"agent-{uuid.uuid4().hex[:8]}"
    group = f"g{uuid.uuid4().hex[:8]}"
    outs = {name: tmp_path / name for name in ("a", "b")}

    def start(name: str) -> CollectorProcess:
        args = ["--topic", f"edge/{device}/+/samples", "--group", group, "--log-level", "debug"]
        return CollectorProcess(broker.port, outs[name], *args, "--client-id", f"{group}-{name}")

    a, b = start("a"), start("b")
    runs: list[Run] = []
    agent = threading.Thread(target=lambda: runs.append(run_to_end(broker.port, tmp_path, cfg)))
    restarted = None
    try:
        agent.start()
        assert wait_until(lambda: len(index_ids(outs["a"])) >= KILL_AFTER, 300), a.output
        a.proc.kill()
        assert a.proc.wait(10) == -9
        agent.join(600)
        assert runs, "the agent run failed"
        restarted = start("a")
        assert wait_until(lambda: _union(outs) >= N, 120, step=0.5), restarted.output
        assert restarted.stop() == 0 and b.stop() == 0, restarted.output + b.output
    finally:
        for col in (a, b, restarted):
            if col is not None:
                col.kill()
    published = [body["id"] for body in runs[0].bodies("/cam/samples")]
    assert runs[0].counters.get("samples.published.cam") == len(published) == N
    stored = {name: index_ids(out) for name, out in outs.items()}
    assert sorted(stored["a"] + stored["b"]) == sorted(published)  # every sample, none twice
    for name, out in outs.items():
        assert sorted(_stored_images(out)) == sorted(stored[name])
    print(f"\nagent -> shared subscription: a stored {len(stored['a'])}, b {len(stored['b'])}")
