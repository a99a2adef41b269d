"""cProfile of agent runs in every thread, and which of the agent's functions run per box."""

from __future__ import annotations

import cProfile
import pstats
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config.loader import load_config
from edge_agent.runtime import Agent

PER_BOX = 0.5  # extra calls per extra box from which a function counts as running per box
IDLE = ("_thread.lock", "select.select", "time.sleep", "(wait)", "queue.py")  # blocked waits
TOP = 12


@contextmanager
def profiled() -> Iterator[dict[str, cProfile.Profile]]:
    """cProfile in this thread and in every thread started meanwhile, keyed by thread name
    (a cProfile.Profile sees only the thread that enabled it)."""
    main = cProfile.Profile()
    profiles = {threading.current_thread().name: main}

    def hook(*_: Any) -> None:
        prof = cProfile.Profile()
        profiles[threading.current_thread().name] = prof
        prof.enable()  # replaces this hook for the rest of the thread

    threading.setprofile(hook)
    main.enable()
    try:
        yield profiles
    finally:
        main.disable()
        threading.setprofile(None)


ROLES = (("detect", "detect"), ("post", "camera steps"), ("capture", "capture"), ("mqtt", "mqtt"))


@contextmanager
def thread_cpu() -> Iterator[dict[str, float]]:
    """CPU seconds of the Python threads started meanwhile, summed by role (detect workers,
    camera steps, capture, mqtt, other), plus `main` for this thread. The interpreters' own
    pool threads are not Python threads: they are the process CPU minus all of these."""
    spent: dict[str, float] = {}
    lock = threading.Lock()
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        try:
            original(self)
        finally:
            role = next((r for prefix, r in ROLES if self.name.startswith(prefix)), "other")
            with lock:
                spent[role] = spent.get(role, 0.0) + time.thread_time()

    main = time.thread_time()
    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]
        spent["main"] = time.thread_time() - main


@dataclass
class Profiled:
    """One profiled agent run: stats of every thread and of the frame path, and the counts."""

    everything: pstats.Stats
    path: pstats.Stats  # capture and inference threads: not main, not MQTT
    threads: list[str]
    frames: int
    runs: int  # detector invocations (frames, until a motion gate skips some)
    boxes: int  # raw detections over the clip at this run's score floor


def profiled_agent(cfg: Path, camera: str, count_boxes: Callable[[float], int]) -> Profiled:
    """Run the agent on a replay under cProfile (prepare(), the model load, outside it);
    count_boxes(floor) gives the detections the agent's detector sees at its score floor."""
    agent = Agent(load_config(cfg))
    agent.prepare()
    boxes = count_boxes(getattr(getattr(agent, "detector", None), "min_score", 0.5))
    with profiled() as profiles:
        code = agent.run()
    if code != 0:
        raise RuntimeError(f"profiled agent run exited {code}")
    counters = agent.counters.snapshot()
    frames = counters.get(f"frames.processed.{camera}", 0)
    on_path = [
        p for n, p in profiles.items() if n != "MainThread" and not n.startswith(("mqtt", "paho"))
    ]
    return Profiled(
        pstats.Stats(*profiles.values()),
        pstats.Stats(*on_path),
        sorted(profiles),
        frames,
        counters.get(f"detector.runs.{camera}", frames) or frames,
        boxes,
    )


def _name(key: tuple[str, int, str]) -> str:
    file, line, func = key
    if file == "~":
        return func  # a builtin or C method
    parts = Path(file).parts
    where = "/".join(parts[parts.index("edge_agent") :]) if "edge_agent" in parts else parts[-1]
    return f"{where}:{line}({func})"


def _top(stats: pstats.Stats, key: str) -> list[dict[str, Any]]:
    raw = stats.stats  # type: ignore[attr-defined]
    rows = [
        {"function": _name(k), "calls": v[1], "tottime": v[2], "cumtime": v[3]}
        for k, v in raw.items()
    ]
    busy = [r for r in rows if not any(s in r["function"] for s in IDLE)]
    return sorted(busy, key=lambda r: -r[key])[:TOP]


def _kind(calls: int, runs: int, extra: float | None) -> str:
    if extra is None:
        return "unknown"
    if extra >= PER_BOX:
        return "per box"
    ratio = calls / runs
    if abs(ratio - round(ratio)) <= 0.05:
        return f"{round(ratio)} per frame" if ratio >= 0.95 else "some frames"
    return f"{ratio:.2f} per frame, varies"


def summarize(base: Profiled, other: Profiled) -> dict[str, Any]:
    """Top functions of `base`; the agent's functions on the frame path called at least every
    other frame, with their extra calls per extra box between the two runs (same frames,
    other box counts): about 1 or more means a Python step per box. With too few boxes
    between the runs to tell, every kind is "unknown"."""
    calls = {k: v[1] for k, v in base.path.stats.items()}  # type: ignore[attr-defined]
    more = {k: v[1] for k, v in other.path.stats.items()}  # type: ignore[attr-defined]
    more_boxes = other.boxes - base.boxes
    telling = abs(more_boxes) >= base.frames / 2
    path = []
    for key in calls.keys() | more.keys():
        n, m = calls.get(key, 0), more.get(key, 0)
        if "edge_agent" not in key[0] or max(n, m) < base.frames / 2:
            continue
        extra = (m - n) / more_boxes if telling else None
        path.append({"function": _name(key), "calls": n, "per_frame": n / base.frames,
                     "per_box": extra, "kind": _kind(n, base.runs, extra)})  # fmt: skip
    path.sort(key=lambda r: (r["kind"] != "per box", -r["calls"]))
    flagged = [r for r in path if r["kind"] == "per box"]
    return {
        "frames": base.frames,
        "runs": base.runs,
        "boxes": (base.boxes, other.boxes),
        "telling": telling,
        "threads": base.threads,
        "cumulative": _top(base.path, "cumtime"),
        "tottime": _top(base.everything, "tottime"),
        "path": flagged + [r for r in path if r["kind"] != "per box"][:TOP],
    }
