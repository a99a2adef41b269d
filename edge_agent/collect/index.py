"""The collector's SQLite index (WAL): one row per accepted sample, and the categories.

A sample id is the primary key, so a redelivered or re-sent message is recognised as a
duplicate. Category ids are handed out in the order labels are first seen and never change,
so the exports keep the same class numbers as the dataset grows. The exports are made from
this file alone (`--rebuild`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.collect.geometry import label_of
from edge_agent.collect.payload import Sample

INDEX_NAME = "index.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    camera TEXT NOT NULL,
    ts REAL NOT NULL,
    frame INTEGER NOT NULL,
    model TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    reasons TEXT NOT NULL,
    images TEXT NOT NULL,
    detections TEXT NOT NULL,
    accepted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS categories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE
);
"""


@dataclass(frozen=True)
class StoredImage:
    """One image file of a sample, as the index records it."""

    path: str  # relative to the dataset folder: images/<device>/<camera>/<stem>.jpg
    width: int
    height: int
    region: tuple[float, float, float, float] | None
    tracker_id: int | None

    @property
    def stem(self) -> str:
        """The file name without its extension."""
        return Path(self.path).stem


@dataclass(frozen=True)
class Row:
    """One accepted sample read back from the index."""

    seq: int
    id: str
    device: str
    camera: str
    ts: float
    frame: int
    model: str
    model_sha256: str
    reasons: list[str]
    images: list[StoredImage]
    detections: list[dict[str, Any]]


def image_path(sample: Sample, stem: str) -> str:
    """Where an image of a sample is stored, relative to the dataset folder."""
    return f"images/{sample.device}/{sample.camera}/{stem}.jpg"


def _images_json(sample: Sample) -> str:
    return json.dumps(
        [
            {
                "path": image_path(sample, p.stem),
                "width": p.width,
                "height": p.height,
                "region": list(p.region) if p.region is not None else None,
                "tracker_id": p.tracker_id,
            }
            for p in sample.pictures
        ]
    )


def _stored(item: dict[str, Any]) -> StoredImage:
    region = item.get("region")
    return StoredImage(
        item["path"],
        int(item["width"]),
        int(item["height"]),
        (region[0], region[1], region[2], region[3]) if region else None,
        item.get("tracker_id"),
    )


class Index:
    """The index file of one dataset folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed row (and so an acknowledged message) survives a power loss too.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def known(self, ids: Iterable[str]) -> set[str]:
        """The ids among `ids` already in the index."""
        wanted = list(ids)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT id FROM samples WHERE id IN ({marks})", chunk)  # noqa: S608
            found.update(r[0] for r in rows)
        return found

    def add(self, samples: list[Sample]) -> None:
        """Commit samples (and any new category) in one transaction."""
        if not samples:
            return
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for s in samples:
                for det in s.detections:
                    self.db.execute(
                        "INSERT OR IGNORE INTO categories(name) VALUES (?)", (label_of(det),)
                    )
                self.db.execute(
                    "INSERT INTO samples(id, device, camera, ts, frame, model, model_sha256,"
                    " reasons, images, detections, accepted_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        s.id, s.device, s.camera, s.ts, s.frame, s.model, s.model_sha256,
                        json.dumps(s.reasons), _images_json(s),
                        json.dumps(s.detections, separators=(",", ":")), now,
                    ),
                )  # fmt: skip

    def count(self) -> int:
        """Samples in the index."""
        return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def categories(self) -> list[tuple[int, str]]:
        """(id, name) of every category, by id."""
        return [
            (int(i), str(n))
            for i, n in self.db.execute("SELECT id, name FROM categories ORDER BY id")
        ]

    def rows(self, after: int = 0) -> Iterator[Row]:
        """Samples with seq > after, in the order they were accepted."""
        cursor = self.db.execute(
            "SELECT seq, id, device, camera, ts, frame, model, model_sha256, reasons, images,"
            " detections FROM samples WHERE seq > ? ORDER BY seq",
            (after,),
        )
        for seq, sid, dev, cam, ts, frame, model, sha, reasons, images, dets in cursor:
            yield Row(
                int(seq), sid, dev, cam, float(ts), int(frame), model, sha,
                json.loads(reasons), [_stored(i) for i in json.loads(images)], json.loads(dets),
            )  # fmt: skip
