"""`edge-agent watch`: a small subscriber that prints what devices publish, one line a message."""

from __future__ import annotations

import json
import queue
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def summarize(topic: str, payload: bytes) -> str:
    """One human line for a message."""
    try:
        body = json.loads(payload)
    except ValueError:
        return f"{topic}: {payload[:80].decode('utf-8', 'replace')}"
    if not isinstance(body, dict):
        return f"{topic}: {body!r}"
    dets = body.get("detections")
    if isinstance(dets, list):
        items = ", ".join(f"{d.get('label')} {d.get('score', 0):.2f}" for d in dets[:6])
        more = f" +{len(dets) - 6}" if len(dets) > 6 else ""
        extra = " [sample, jpeg]" if "image" in body else ""
        return f"{topic} frame {body.get('frame')}: {items or '-'}{more}{extra}"
    if "counters" in body:
        return f"{topic}: {len(body['counters'])} counters"
    return f"{topic}: {str(body)[:120]}"


def watch(host: str, port: int, topic: str, count: int, until_offline: bool, timeout: float) -> int:
    """Subscribe and print until count/offline/timeout; returns 0, or 1 if nothing arrived."""
    inbox: queue.Queue[Any] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, msg: inbox.put(msg)
    client.connect(host, port)
    client.loop_start()
    seen = 0
    deadline = time.monotonic() + timeout if timeout > 0 else None
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                msg = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            line = summarize(msg.topic, msg.payload)
            print(f"{line} (retained)" if msg.retain else line, flush=True)
            seen += 1
            if count and seen >= count:
                break
            if (
                until_offline
                and msg.topic.endswith("/status")
                and msg.payload == b"offline"
                and not msg.retain
            ):
                break
    finally:
        client.disconnect()
        client.loop_stop()
    return 0 if seen else 1
