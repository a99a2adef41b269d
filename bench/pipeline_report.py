"""Markdown tables and the PNG chart of bench/pipeline.py's results."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

PENDING = "pending"  # a figure that needs the per-camera pipeline keys the agent does not take yet


AGENTS = {
    "agent": "agent, 1 interpreter x {t} threads",
    "split": "agent, {t} interpreters x 1 thread",
    "agent-nosteps": "agent, 1 interpreter x {t} threads, no steps after detection",
    "split-nosteps": "agent, {t} interpreters x 1 thread, no steps after detection",
}


def summary(runs: dict[str, list[Any]], kind: str = "agent") -> dict[str, float]:
    """Best frames/s and best CPU ms/frame of bare and `kind` (load from elsewhere on the
    machine only ever slows a run down), their ratios, and the medians of the per-pair ratios
    (each agent run against the bare run just before it)."""
    out: dict[str, float] = {}
    for k in ("bare", kind):
        name = "agent" if k == kind else k
        out[f"{name}_fps"] = max(r.fps for r in runs[k])
        out[f"{name}_cpu_ms"] = min(r.cpu_ms for r in runs[k])
    out["fps_ratio"] = out["agent_fps"] / out["bare_fps"]
    out["cpu_ratio"] = out["agent_cpu_ms"] / out["bare_cpu_ms"]
    pairs = list(zip(runs["bare"], runs[kind], strict=True))
    out["fps_median"] = statistics.median(a.fps / b.fps for b, a in pairs)
    out["cpu_median"] = statistics.median(a.cpu_ms / b.cpu_ms for b, a in pairs)
    return out


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _throughput(res: dict[str, Any]) -> list[str]:
    rows = []
    threads = res["meta"]["threads"]
    for model, runs in res["throughput"].items():
        for kind in [k for k in AGENTS if k in runs]:
            s = summary(runs, kind)
            pairs = list(zip(runs["bare"], runs[kind], strict=True))
            fps = " ".join(f"{a.fps / b.fps:.2f}" for b, a in pairs)
            cpu = " ".join(f"{a.cpu_ms / b.cpu_ms:.2f}" for b, a in pairs)
            rows.append([
                model, AGENTS[kind].format(t=threads),
                f"{runs['bare'][0].frames}/{runs[kind][0].frames}",
                f"{s['bare_fps']:.1f}", f"{s['agent_fps']:.1f}", f"{s['fps_ratio']:.3f}",
                f"{s['fps_median']:.3f}", f"{s['bare_cpu_ms']:.2f}", f"{s['agent_cpu_ms']:.2f}",
                f"{s['cpu_ratio']:.3f}", f"{s['cpu_median']:.3f}", fps, cpu,
            ])  # fmt: skip
    head = ["model", "agent", "frames bare/agent", "bare fps", "agent fps", "fps agent/bare",
            "median of pairs", "bare CPU ms/frame", "agent CPU ms/frame", "CPU/frame agent/bare",
            "median of pairs", "fps agent/bare per pair", "CPU agent/bare per pair"]  # fmt: skip
    return [
        "## Throughput: bare loop vs agent",
        "",
        f"The bare loop runs one interpreter with {threads} threads. `agent` runs the same "
        f"interpreter; `split` the same {threads} threads as {threads} one-thread interpreters "
        "(`runtime.detect_workers`), each taking whole frames. `no steps after detection`: the "
        "same two, with no tracking, zones, events or per-frame messages (the object filter "
        "only): what the agent's threads and hand-offs cost by themselves. Best of the repetitions "
        "(fastest frames/s, least CPU per frame) and the median of the per-pair ratios; a pair "
        "is one bare run and the agent run right after it.",
        "",
        *_table(head, rows),
        "",
        *_roles(res),
    ]


def _roles(res: dict[str, Any]) -> list[str]:
    """Where the agent's CPU goes per frame, by thread role (median over its runs)."""
    rows = []
    roles: list[str] = []
    for runs in res["throughput"].values():
        for kind in [k for k in AGENTS if k in runs]:
            for name in runs[kind][0].roles:
                if name not in roles:
                    roles.append(name)
    for model, runs in res["throughput"].items():
        bare = statistics.median(r.cpu_ms for r in runs["bare"])
        for kind in [k for k in AGENTS if k in runs]:
            per = [
                statistics.median(r.roles.get(n, 0.0) / r.frames * 1000 for r in runs[kind])
                for n in roles
            ]
            total = statistics.median(r.cpu_ms for r in runs[kind])
            rows.append([model, kind, f"{bare:.2f}", f"{total:.2f}", *(f"{v:.2f}" for v in per)])
    if not rows:
        return []
    return [
        "CPU ms per frame by thread (medians): `detect` is the detect workers' own threads (the "
        "caller's share of invoke(), output decoding), `interpreter pool` the interpreters' "
        "worker threads; the bare loop does its decode, resize and invoke on one Python thread "
        "plus the same pool.",
        "",
        *_table(["model", "agent", "bare total", "agent total", *roles], rows),
    ]


def _memory(res: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["model"],
            f"{r['source']}, {r.get('interpreters', '1 interpreter')}, libraries "
            f"{r.get('page_cache', '?')}",
            f"{r['rss_mib']:.1f}",
            _mib(r.get("anon_mib")),
            _mib(r.get("file_mib")),
            r["frames"],
        ]
        for r in res["rss"]
    ]
    rows += [
        [
            r["model"],
            f"live MJPEG, gate {_gate(r['motion'])}",
            f"{r['rss_mib']:.1f}",
            "",
            "",
            r["processed"],
        ]
        for r in res["latency"]
    ]
    head = ["model", "source", "peak RSS MiB", "anon MiB", "file MiB", "frames processed"]
    note = (
        "`cold`: the shared libraries and the model were dropped from the page cache before the "
        "run (a device after boot). `warm`: the same run again. Files written moments ago (a "
        "fresh `pip install`) can add ~40 MiB of shared, clean file pages on kernels that cache "
        "ext4 files in large folios; the anonymous (private) part does not change. "
        "`2 x 1 thread`: the throughput part's `split` setting; each interpreter has its own "
        "tensor arena and packed weights. The live runs use one interpreter with 2 threads."
    )
    return ["## Peak RSS of `edge-agent run`, one camera", "", note, "", *_table(head, rows)]


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _cell(value: Any) -> str:
    return PENDING if value is None else str(value)


def _gate(motion: bool | None) -> str:
    return "default" if motion is None else ("on" if motion else "off")


def _latency(res: dict[str, Any]) -> list[str]:
    rows = [
        [r["model"], _gate(r["motion"]), f"{r['fps']:.1f}", r["messages"], r["processed"],
         r["skipped"], _cell(r["detector_runs"]), f"{r['p50']:.1f}", f"{r['p95']:.1f}",
         f"{r['p99']:.1f}"]
        for r in res["latency"]
    ]  # fmt: skip
    head = ["model", "motion gate", "source fps", "messages", "frames processed",
            "frames skipped", "detector runs", "p50 ms", "p95 ms", "p99 ms"]  # fmt: skip
    return ["## Live latency: receipt - capture ts", "", *_table(head, rows)]


def _motion(res: dict[str, Any]) -> list[str]:
    rows = [
        [r["clip"], _gate(r["motion"]), r["frames"], _cell(r["detector_runs"]),
         _cell(r["still"]), f"{r['cpu_s']:.1f}", f"{r['cpu_s'] / r['frames'] * 1000:.2f}",
         _cell(r["tracks"]), _cell(r["events"])]
        for r in res["motion"]
    ]  # fmt: skip
    head = ["clip", "motion gate", "frames", "detector runs", "frames still", "CPU s",
            "CPU ms/frame", "tracks confirmed", "events new"]  # fmt: skip
    return [
        f"## Motion gate on vs off ({res['motion_model']})",
        "",
        "frames = frames read from the clip (through the pipeline + skipped as still); CPU of "
        "the whole process per frame read.",
        "",
        *_table(head, rows),
    ]


def _functions(rows: list[dict[str, Any]], frames: int) -> list[list[Any]]:
    return [
        [f"`{r['function']}`", r["calls"], f"{r['calls'] / frames:.2f}",
         f"{r['tottime']:.2f}", f"{r['cumtime']:.2f}"]
        for r in rows
    ]  # fmt: skip


def _profile(res: dict[str, Any]) -> list[str]:
    p = res["profile"]
    frames, (boxes, other_boxes) = p["frames"], p["boxes"]
    head = ["function", "calls", "calls/frame", "tottime s", "cumtime s"]
    flagged = [r["function"] for r in p["path"] if r["kind"] == "per box"]
    verdict = ", ".join(f"`{f}`" for f in flagged) or "none"
    if not p["telling"]:
        verdict = "cannot tell (the two runs' box counts are too close)"
    path = [
        [f"`{r['function']}`", r["calls"], f"{r['per_frame']:.2f}",
         "?" if r["per_box"] is None else f"{r['per_box']:.2f}", r["kind"]]
        for r in p["path"]
    ]  # fmt: skip
    return [
        f"## Profile of one agent run ({p['model']}, {frames} frames, {p['runs']} detector "
        f"runs, {boxes} boxes = {boxes / max(frames, 1):.2f} per frame)",
        "",
        f"Threads profiled: {', '.join(p['threads'])}. Python functions of the agent that run "
        f"once per box on the frame path: **{verdict}**.",
        "",
        "Top by cumulative time, capture and inference threads (waits left out):",
        "",
        *_table(head, _functions(p["cumulative"], frames)),
        "",
        "Top by own time, every thread (waits left out):",
        "",
        *_table(head, _functions(p["tottime"], frames)),
        "",
        "The agent's functions on the frame path called at least every other frame. A second "
        f"profiled run with the score floor at {p['second_floor']} gives {other_boxes} boxes on "
        "the same frames; *extra calls/box* = (its calls - these calls) / (its boxes - these "
        "boxes): about 1 or more means once per box, about 0 means per frame.",
        "",
        *_table(["function", "calls", "calls/frame", "extra calls/box", "kind"], path),
    ]


def markdown(res: dict[str, Any]) -> str:
    """Every table, with a header saying what was run."""
    meta = res["meta"]
    wiring = (
        "on (track, one zone, one line, events)"
        if meta["wired"]
        else "not accepted by the agent yet: cameras run with source + detect only; "
        f"figures marked {PENDING} need them"
    )
    lines = [
        "# Pipeline benchmark",
        "",
        f"Clip `{meta['clip']}` ({meta['frames']} frames{', --quick' if meta['quick'] else ''}), "
        f"{meta['reps']} interleaved repetition(s); "
        f"interpreter threads {meta['threads']}; {meta['cpus']} CPUs. "
        f"Per-camera pipeline keys: {wiring}. Seconds per part: "
        + ", ".join(f"{k} {v:.0f}" for k, v in meta["took"].items())
        + ". Load average (1 min) at start / end: "
        + " / ".join(f"{v:.1f}" for v in meta["load"])
        + " (other work on the machine slows any run; compare within a pair).",
        "",
        *_throughput(res),
        "",
        *_memory(res),
        "",
        *_latency(res),
        "",
        *_motion(res),
        "",
        *_profile(res),
    ]
    return "\n".join(lines) + "\n"


def chart(res: dict[str, Any], path: Path) -> None:
    """Frames/s and CPU ms/frame per model, bare vs agent; latency percentiles per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(res["throughput"])
    kinds = [k for k in ("bare", *AGENTS) if k in res["throughput"][models[0]]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.38
    xs = range(len(models))
    step = 2 * width / len(kinds)
    for ax, key, title in ((axes[0], "fps", "frames/s"), (axes[1], "cpu_ms", "CPU ms/frame")):
        for i, kind in enumerate(kinds):
            pick = max if key == "fps" else min
            values = [pick(getattr(r, key) for r in res["throughput"][m][kind]) for m in models]
            offsets = [x - width + (i + 0.5) * step for x in xs]
            bars = ax.bar(offsets, values, step, label=kind)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(list(xs), models)
        ax.set_title(title)
        ax.legend()
    ax = axes[2]
    for i, r in enumerate(res["latency"]):
        values = [r["p50"], r["p95"], r["p99"]]
        label = f"{r['model']}, gate {_gate(r['motion'])}"
        step = width * 2 / max(len(res["latency"]), 1)
        bars = ax.bar([q - width + (i + 0.5) * step for q in range(3)], values, step, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(3), ["p50", "p95", "p99"])
    ax.set_yscale("log")  # p50 is tens of ms, a stalled shared machine puts p99 near a second
    ax.set_title("live latency ms (receipt - capture)")
    ax.legend()
    fig.suptitle(f"edge-agent pipeline, {res['meta']['clip']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
