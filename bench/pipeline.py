"""The agent's pipeline against a bare decode + invoke loop, for both models, in one run.

.venv/bin/python bench/pipeline.py [--quick] [--models ssd yolov8n] [--reps 3] [--out DIR]

1. Throughput: the bare loop (cv2 decode -> the detector's resize/letterbox -> invoke() -> read
   the outputs; no box decoding, no publishing) vs the in-process Agent on the same clip,
   interleaved (bare, agent, bare, agent ...); best frames/s and process CPU ms per frame.
2. Peak RSS (VmHWM) of `edge-agent run` with one camera, a replay and the live run of 5.
3. cProfile of one agent run in every thread: top functions, and which of the agent's functions
   run per frame and which per box.
4. Motion gate on vs off on both shared clips: detector runs, CPU, tracks and events.
5. Live latency: the clip served as MJPEG over HTTP at its native rate to `edge-agent run`;
   subscriber receipt time minus the detection payload's `ts` (the capture time).
Writes the tables to stdout and DIR/pipeline.md, the chart to DIR/pipeline.png. Helpers:
pipeline_config (configs; the per-camera pipeline keys), pipeline_child (`edge-agent run` as a
child, MQTT receiver), pipeline_profile (cProfile per thread), pipeline_report (Markdown, PNG).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]  # _broker, and tests.streams' MJPEG camera
import pipeline_config  # noqa: E402
from _broker import start_broker  # noqa: E402
from pipeline_child import Receiver, evict_libraries, percentile, run_child  # noqa: E402
from pipeline_config import (  # noqa: E402
    CAM,
    CAR,
    MODELS,
    PERSON,
    SHARED,
    THREADS,
    config,
    cut,
    interpreters,
    second_floor,
    wiring_accepted,
)
from pipeline_profile import profiled_agent, summarize, thread_cpu  # noqa: E402
from pipeline_report import AGENTS, chart, markdown  # noqa: E402

from edge_agent.config.loader import load_config  # noqa: E402
from edge_agent.config.schema import ModelConfig  # noqa: E402
from edge_agent.detect.detector import Detector  # noqa: E402
from edge_agent.preprocess import prepare  # noqa: E402
from edge_agent.runtime import Agent  # noqa: E402
from tests.streams import MjpegServer  # noqa: E402

QUICK_FRAMES = 100


# ---- 1. throughput


@dataclass(frozen=True)
class Run:
    """One timed pass: frames, wall seconds and process CPU seconds (for an agent run, also
    the CPU seconds of its threads by role: pipeline_profile.thread_cpu)."""

    frames: int
    wall: float
    cpu: float
    roles: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        """Frames per wall second."""
        return self.frames / self.wall

    @property
    def cpu_ms(self) -> float:
        """Process CPU ms per frame."""
        return self.cpu / self.frames * 1000


def bare_loop(model: str, clip: Path) -> Run:
    """Decode, place in the input tensor the way the agent's detector does, invoke, read."""
    path, labels = MODELS[model]
    models = SHARED / "models"
    det = Detector(ModelConfig(path=models / path, labels=models / labels, threads=THREADS), 0.5)
    interp, index, outputs = det.model.interpreter, det.input.index, det.model.outputs
    cap = cv2.VideoCapture(str(clip))
    frames, wall, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        ok, image = cap.read()
        if not ok:
            break
        tensor, _ = prepare(image, det.plan)
        interp.set_tensor(index, tensor)
        interp.invoke()
        for out in outputs:
            interp.get_tensor(out.index)
        frames += 1
    run = Run(frames, time.perf_counter() - wall, time.process_time() - cpu)
    cap.release()
    return run


def done_event(agent: Agent) -> threading.Event | None:
    """The event set once the last frame is through the pipeline (run() then flushes)."""
    threads = getattr(agent, "threads", None)  # the per-camera pipeline's worker threads
    return getattr(threads, "done", None) or getattr(agent, "_pipeline_done", None)


def counters_of(agent: Agent) -> dict[str, int]:
    """The agent's counters with the cameras' track and event counters, as in its stats."""
    threads = getattr(agent, "threads", None)
    return {**agent.counters.snapshot(), **(threads.counters() if threads is not None else {})}


def agent_run(cfg: Path) -> tuple[Run, dict[str, int]]:
    """The in-process Agent over a replay; prepare() (model load) is outside the timing.

    Wall time ends when the last frame is through the pipeline; CPU time when run() returns,
    so it includes delivering every message to the broker."""
    agent = Agent(load_config(cfg))
    agent.prepare()
    event, done = done_event(agent), []

    def watch() -> None:
        if event is not None and event.wait():
            done.append(time.perf_counter())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with thread_cpu() as roles:
        wall, cpu = time.perf_counter(), time.process_time()
        code = agent.run()
        end_cpu, end_wall = time.process_time(), time.perf_counter()
    watcher.join(1.0)
    if code != 0:
        raise RuntimeError(f"agent exited {code} on {cfg}")
    counters = counters_of(agent)
    frames = counters.get(f"frames.processed.{CAM}", 0)
    roles["interpreter pool"] = max(0.0, end_cpu - cpu - sum(roles.values()))
    return Run(frames, (done[0] if done else end_wall) - wall, end_cpu - cpu, roles), counters


def throughput(
    port: int, models: list[str], clip: Path, reps: int, wired: bool
) -> dict[str, dict[str, list[Run]]]:
    """Bare and agent runs interleaved per model, `reps` times: {model: {kind: runs}}.
    `agent` has one interpreter with the bare loop's threads; `split` (with the per-camera
    pipeline keys) the same number of threads as one-thread interpreters in as many detect
    workers; `-nosteps`: the same with nothing after detection (pipeline_config.NO_STEPS)."""
    kinds = ("bare", *AGENTS) if wired else ("bare", "agent")
    runs: dict[str, dict[str, list[Run]]] = {m: {k: [] for k in kinds} for m in models}
    warm = cut(clip, 20)  # first use of the decoder, the model files and the imports, untimed
    for model in models:
        bare_loop(model, warm)
        agent_run(config(port, model, {"type": "video", "path": str(warm)}, wired))
    for rep in range(reps):
        for model in models:
            runs[model]["bare"].append(bare_loop(model, clip))
            for kind in kinds[1:]:
                source = {"type": "video", "path": str(clip)}
                split, no_steps = kind.startswith("split"), kind.endswith("-nosteps")
                cfg = config(port, model, source, wired, split=split, no_steps=no_steps)
                runs[model][kind].append(agent_run(cfg)[0])
            logging.info("rep %d %s: %s", rep, model, runs[model])
    return runs


# ---- 2. peak RSS, 5. live latency (both run `edge-agent run` as a child)


def peak_rss(port: int, model: str, clip: Path, wired: bool) -> list[dict[str, Any]]:
    """Peak memory of one replay of the clip at full speed, one camera: first with the shared
    libraries and the model read from disk (as after a boot), then again with them in the
    page cache as the first run left them; with the per-camera pipeline keys, also the
    `split` setting of the throughput part (one interpreter, so one arena, per thread)."""
    source = {"type": "video", "path": str(clip)}
    model_files = [p for p in (SHARED / "models").rglob("*") if p.is_file()]
    runs = [("cold", False), ("warm", False)] + ([("warm", True)] if wired else [])
    rows = []
    for cache, split in runs:
        if cache == "cold":
            evict_libraries(model_files)
        cfg = config(port, model, source, wired, split=split)
        sub = Receiver(port, load_config(cfg).config.device_id)
        try:
            peak = run_child(cfg)
            time.sleep(0.2)  # the final stats message
        finally:
            sub.close()
        workers, threads = interpreters(split)
        rows.append(
            {
                "model": model,
                "source": "replay",
                "page_cache": cache,
                "interpreters": f"{workers} x {threads} thread{'s' if threads > 1 else ''}",
                "rss_mib": peak.hwm / 1024,
                "anon_mib": peak.anon / 1024,
                "file_mib": peak.file / 1024,
                "frames": sub.last_counters().get(f"frames.processed.{CAM}", 0),
            }
        )
    return rows


WARMUP = 1.0  # seconds after the first message: frames captured before its end are left out


def live_latency(
    port: int, model: str, clip: Path, seconds: float, wired: bool, motion: bool | None = None
) -> dict[str, Any]:
    """The clip as MJPEG over HTTP at its native rate into `edge-agent run`, for `seconds` after
    the first detection message; latency = receipt time - payload ts (capture time)."""
    cap = cv2.VideoCapture(str(clip))
    fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    with MjpegServer(fps=fps, video=clip, frames=count) as server:
        cfg = config(port, model, {"type": "rtsp", "url": server.url}, wired, motion=motion)
        sub = Receiver(port, load_config(cfg).config.device_id)
        try:
            peak = run_child(cfg, lambda: _window_over(sub, seconds))
            time.sleep(0.2)
        finally:
            sub.close()
    got = sub.detections()
    if not got:
        raise RuntimeError(f"no detections message from the live run of {model}")
    # Frames captured while the agent was starting (model warm-up, broker connect) arrive in
    # a burst; the window starts WARMUP s after the first message, by capture time.
    start = got[0][0] + WARMUP
    ms = [(t - body["ts"]) * 1000 for t, body in got if body["ts"] >= start]
    counters = sub.last_counters()
    return {
        "model": model,
        "motion": motion,
        "fps": fps,
        "messages": len(ms),
        "skipped": counters.get(f"frames.skipped.{CAM}", 0),
        "processed": counters.get(f"frames.processed.{CAM}", 0),
        "detector_runs": counters.get(f"detector.runs.{CAM}") if wired else None,
        **{f"p{q}": percentile(ms, q) for q in (50, 95, 99)},
        "rss_mib": peak.hwm / 1024,
    }


def _window_over(sub: Receiver, seconds: float) -> bool:
    got = sub.messages
    first = next((t for t, topic, _ in got if topic.endswith("/detections")), None)
    return first is not None and time.time() - first >= seconds + WARMUP


# ---- 3. profile


def count_boxes(model: str, clip: Path, min_score: float) -> int:
    """Raw detections (after NMS, above the detector's floor) over the clip."""
    path, labels = MODELS[model]
    models = SHARED / "models"
    cfg = ModelConfig(path=models / path, labels=models / labels, threads=THREADS)
    det, cap, boxes = Detector(cfg, min_score), cv2.VideoCapture(str(clip)), 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        boxes += len(det.detect_arrays(image)[0].score)
    cap.release()
    return boxes


def profile_run(port: int, model: str, clip: Path, wired: bool) -> dict[str, Any]:
    """Two profiled agent runs on the clip, at the default score floor and at a second one
    (other box counts, the same frames); see pipeline_profile.summarize."""
    source = {"type": "video", "path": str(clip)}
    floor = second_floor(wired)
    runs = [
        profiled_agent(config(port, model, source, wired, floor=score), CAM,
                       lambda f: count_boxes(model, clip, f))
        for score in (None, floor)
    ]  # fmt: skip
    return {"model": model, "second_floor": floor, **summarize(*runs)}


# ---- 4. motion gate


def motion_runs(
    port: int, model: str, clips: list[tuple[Path, str]], wired: bool
) -> list[dict[str, Any]]:
    """Each clip with the motion gate on and off (one run without the key until it is accepted)."""
    rows = []
    for clip, label in clips:
        for motion in (True, False) if wired else (None,):
            cfg = config(port, model, {"type": "video", "path": str(clip)}, wired, label, motion)
            run, counters = agent_run(cfg)

            def get(name: str, c: dict[str, int] = counters) -> int | None:
                return c.get(f"{name}.{CAM}", 0) if wired else None

            still = get("frames.still")
            rows.append({
                "clip": clip.name, "motion": motion, "frames": run.frames + (still or 0),
                "detector_runs": get("detector.runs"), "still": still,
                "cpu_s": run.cpu, "tracks": get("tracks.confirmed"), "events": get("events.new"),
            })  # fmt: skip
    return rows


# ---- all of it


def collect(args: argparse.Namespace, port: int) -> dict[str, Any]:
    """Run every part; returns what pipeline_report renders (with each part's seconds)."""
    wired = wiring_accepted(port)
    car, person = (cut(c, QUICK_FRAMES) for c in (CAR, PERSON)) if args.quick else (CAR, PERSON)
    reps = 1 if args.quick else args.reps
    seconds = 5.0 if args.quick else 30.0
    # A live camera has the motion gate on by default; off, every frame meets the detector.
    gates = ((False,) if args.quick else (False, True)) if wired else (None,)
    first = args.models[0]
    # The children's memory is measured first, before this process loads the interpreter
    # runtime itself: pages of a library this process maps cannot leave the page cache, and a
    # kernel that caches files in large folios maps them whole into the child (~20 MB more).
    parts: dict[str, Callable[[], Any]] = {
        "rss": lambda: [row for m in args.models for row in peak_rss(port, m, car, wired)],
        "latency": lambda: [
            live_latency(port, m, car, seconds, wired, g) for m in args.models for g in gates
        ],
        "throughput": lambda: throughput(port, args.models, car, reps, wired),
        "motion": lambda: motion_runs(port, first, [(car, "car"), (person, "person")], wired),
        "profile": lambda: profile_run(port, first, car, wired),
    }
    res: dict[str, Any] = {"motion_model": first}
    took, load = {}, [os.getloadavg()[0]]
    for name, part in parts.items():
        start = time.monotonic()
        res[name] = part()
        took[name] = time.monotonic() - start
    frames = res["throughput"][first]["bare"][0].frames
    res["meta"] = {"clip": CAR.name, "frames": frames, "quick": args.quick, "reps": reps,
                   "wired": wired, "threads": THREADS, "cpus": os.cpu_count(),
                   "took": took, "load": [*load, os.getloadavg()[0]]}  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the Markdown and the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_FRAMES} frames, 1 rep")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    proc, port = start_broker()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
            pipeline_config.WORK = Path(work)
            res = collect(args, port)
    finally:
        proc.terminate()
        proc.wait(10)
    text = markdown(res)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.md").write_text(text)
    chart(res, args.out / "pipeline.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
