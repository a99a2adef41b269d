"""Acceptance 6: every kind of bad samples message, sent through a real broker between good
ones, is rejected with its reason, counted, kept under `rejected/`, and acknowledged; the
collector stores the good messages before and after them and exits 0."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from tests.helpers import Broker
from tests.test_collect import CollectorProcess, Publisher, dumps, index_ids, unique_prefix
from tests.test_collect_units import BAD, MAX_IMAGE_BYTES, good_crops, good_full

REJECTED_KEEP = 1 << 20


def _reasons(line: str) -> Counter[str]:
    """`... rejected (bad_box 1, schema 4); ...` -> counts by reason."""
    found = re.search(r"rejected \(([^)]*)\)", line)
    assert found, line
    pairs = (item.rsplit(" ", 1) for item in found.group(1).split(", "))
    return Counter({reason: int(n) for reason, n in pairs})


def test_bad_payloads_are_rejected_counted_kept_and_acknowledged(
    broker: Broker, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    prefix = unique_prefix()
    topic = f"{prefix}/dev-1/cam/samples"
    goods = [good_full(), good_crops(), good_full()]
    bad = [(case, make(), reason) for case, make, reason in BAD]
    assert any(len(payload) > REJECTED_KEEP for _, payload, _ in bad)  # kept cut at 1 MiB
    messages = [dumps(goods[0])] + [p for _, p, _ in bad[:10]] + [dumps(goods[1])]
    messages += [p for _, p, _ in bad[10:]] + [dumps(goods[2])]
    col = CollectorProcess(
        broker.port, out, "--topic", f"{prefix}/+/+/samples", "--log-level", "debug",
        "--max-image-bytes", str(MAX_IMAGE_BYTES),
    )  # fmt: skip
    pub = Publisher(broker.port)
    try:
        pub.send(topic, messages)
        assert col.wait_handled(len(messages), 60), col.output
        assert col.proc.poll() is None, "the collector must keep running"
        assert col.stop() == 0, col.output
    finally:
        pub.close()
        col.kill()
    assert sorted(index_ids(out)) == sorted(g["id"] for g in goods)
    final = col.finished()
    assert f"{len(goods)} accepted, 0 duplicates, {len(bad)} rejected" in final
    assert _reasons(final) == Counter(reason for _, _, reason in bad)
    assert "Traceback" not in col.output
    _check_rejected_files(out / "rejected", topic, bad)


def _check_rejected_files(folder: Path, topic: str, bad: list[tuple[str, bytes, str]]) -> None:
    infos = sorted(folder.glob("*.reason.json"))
    assert len(infos) == len(bad)
    stored: list[tuple[str, bytes]] = []
    for info_path in infos:
        info = json.loads(info_path.read_text())
        assert info["topic"] == topic
        raw = info_path.with_name(info_path.name.replace(".reason.json", ".json")).read_bytes()
        assert info["bytes"] >= len(raw) and info["truncated"] == (info["bytes"] > len(raw))
        stored.append((info["reason"], raw))
    for case, payload, reason in bad:
        kept = payload[:REJECTED_KEEP]
        assert (reason, kept) in stored, case
        if len(payload) > REJECTED_KEEP:
            assert len(kept) == REJECTED_KEEP, case
    assert all(re.fullmatch(r"\d{8}T\d{6}-\d+(\.reason)?\.json", p.name) for p in folder.iterdir())
