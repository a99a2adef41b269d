"""Smoke test of bench/pipeline.py: one `--quick` run (100 frames, SSD) renders every table.

The five tests that read the run are marked slow (about a minute together). Only the shape
and sign of the figures are checked, never their size: timings on a shared
machine prove nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import pipeline
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "bench/pipeline.py", "--quick", "--models", "ssd", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = (out / "pipeline.md").read_text()
    assert run.stdout.strip().endswith(text.strip()[-200:])  # the same tables on stdout
    return text, out


def rows(text: str, marker: str) -> list[list[str]]:
    """Body rows of the first table after `marker`, as stripped cells."""
    after = text.split(marker, 1)[1].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    end = next((i for i, line in enumerate(after[start:], start) if not line.startswith("|")), None)
    return [[c.strip() for c in line.strip("|").split("|")] for line in after[start + 2 : end]]


@pytest.mark.slow
def test_throughput_ratios_are_positive_numbers(report) -> None:
    table = rows(report[0], "## Throughput")
    threads = pipeline.THREADS
    assert [r[:2] for r in table] == [
        ["ssd", f"agent, 1 interpreter x {threads} threads"],
        ["ssd", f"agent, {threads} interpreters x 1 thread"],
        ["ssd", f"agent, 1 interpreter x {threads} threads, no steps after detection"],
        ["ssd", f"agent, {threads} interpreters x 1 thread, no steps after detection"],
    ]
    for row in table:
        bare, agent = (int(n) for n in row[2].split("/"))
        assert bare == agent == pipeline.QUICK_FRAMES
        for cell in row[3:11]:  # fps, ratios, CPU ms/frame, ratios
            assert float(cell) > 0


@pytest.mark.slow
def test_cpu_by_thread_adds_up_to_the_agent_total(report) -> None:
    table = rows(report[0], "CPU ms per frame by thread")
    assert [r[1] for r in table] == ["agent", "split", "agent-nosteps", "split-nosteps"]
    head = next(ln for ln in report[0].splitlines() if ln.startswith("| model | agent | bare"))
    names = [c.strip() for c in head.strip("|").split("|")][4:]
    assert {"detect", "camera steps", "mqtt", "capture", "main", "interpreter pool"} <= set(names)
    for row in table:
        total, parts = float(row[3]), [float(c) for c in row[4:]]
        assert all(p >= 0 for p in parts)
        assert sum(parts) == pytest.approx(total, rel=0.02, abs=0.05)  # one run: they add up


@pytest.mark.slow
def test_memory_and_latency_rows(report) -> None:
    memory = rows(report[0], "## Peak RSS")
    assert [r[1] for r in memory[:3]] == [
        "replay, 1 x 2 threads, libraries cold",
        "replay, 1 x 2 threads, libraries warm",
        "replay, 2 x 1 thread, libraries warm",  # the split setting: an arena per interpreter
    ]
    assert memory[3][1].startswith("live MJPEG")
    assert all(float(r[2]) > 50 for r in memory)  # an agent with a model is tens of MiB
    for replay in memory[:3]:  # peak RSS >= each part's peak; both parts present
        rss, anon, file = (float(c) for c in replay[2:5])
        assert rss + 0.1 >= max(anon, file) and anon > 10 and file > 10
    (latency,) = rows(report[0], "## Live latency")
    p50, p95, p99 = (float(c) for c in latency[-3:])
    assert 0 < p50 <= p95 <= p99
    assert int(latency[3]) > 0  # messages in the window


@pytest.mark.slow
def test_motion_rows_cover_both_clips(report) -> None:
    motion = rows(report[0], "## Motion gate")
    assert {r[0] for r in motion} == {pipeline.CAR.name, pipeline.PERSON.name}
    assert all(int(r[2]) == pipeline.QUICK_FRAMES for r in motion)  # read = processed + still


@pytest.mark.slow
def test_profile_names_the_per_box_verdict_and_hot_functions(report) -> None:
    text = report[0]
    assert re.search(r"once per box on the frame path: \*\*.+\*\*", text)
    top = rows(text, "Top by cumulative time")
    assert any("detect_arrays" in r[0] for r in top)  # the detector's work is on the path
    path = rows(text, "called at least every other frame")
    kinds = r"per box|\d+ per frame|some frames|\d+\.\d\d per frame, varies|unknown"
    assert path
    assert all(re.fullmatch(kinds, r[4]) and float(r[2]) >= 0 for r in path)


@pytest.mark.slow
def test_chart_is_a_png(report) -> None:
    assert (report[1] / "pipeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),
        ([float(i) for i in range(101)], 95, 95.0),
        ([0.0, 10.0], 99, 9.9),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert pipeline.percentile(values, q) == pytest.approx(expected)
