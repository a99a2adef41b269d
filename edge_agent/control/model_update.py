"""Model updates (the `model` command): download, verify, load, test, swap; whatever fails
leaves the running model alone (a rollback, counted as `model.rollbacks`).

A background thread fetches the file (http, https, file URLs or an absolute path; bounded
by `commands.max_model_bytes` and `commands.download_timeout`) into `<state>/models/` (a
temporary file, fsynced, renamed to `<sha256>.tflite` once its sha256 matches), loads one
detector per detect worker while the running ones keep working, and checks that each
produces readable output on the camera's last frame. The main loop then swaps: with the
same labels, each detect worker takes its new detector at the top of its loop (never
mid-frame); the frames the old model detected are published first, then the result, then
the new model's frames (their payloads name it). New labels rebuild the pipeline instead
(tracks end, as in a reload). The choice is not persisted: a restart runs the config's model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from edge_agent.app.build import build_parts, labels_floor, load_detectors
from edge_agent.app.reload import ActiveModel, Host
from edge_agent.control.commands import CommandError, ModelArgs, Refused, Reply
from edge_agent.detect.detector import Detector
from edge_agent.errors import UserError
from edge_agent.files import file_sha256, fsync_dir, open_regular
from edge_agent.publish.stores import default_path
from edge_agent.workers import ModelId, Swap

if TYPE_CHECKING:
    from edge_agent.assemble import Threads
    from edge_agent.config.schema import AgentConfig
    from edge_agent.types import Image

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SCHEMES = ("http", "https", "file")
SWAP_WAIT = 10.0  # seconds the workers get to reach the top of their loop
MAX_LABEL_BYTES = 2**20  # the label reader's own limit


class FetchError(Exception):
    """The file could not be fetched or did not match its sha256."""


def models_dir(cfg: AgentConfig) -> Path:
    """`<state>/models`: the outbox's folder (systemd's StateDirectory= unless
    `outbox.path` says otherwise)."""
    outbox = cfg.outbox.path or default_path(cfg.device_id, os.environ)
    return outbox.parent / "models"


STALL = 10.0  # seconds one network read may block: the download deadline is checked between


def local_roots(cfg: AgentConfig) -> tuple[Path, ...]:
    """Folders a `model` command may read local files from: the state's models folder and the
    folder of the configured model (never any file the agent can read)."""
    return (models_dir(cfg), cfg.model.path.parent)


def _local(source: str, roots: Sequence[Path]) -> BinaryIO:
    """A regular file inside one of `roots` (symlinks resolved first)."""
    if not os.path.isabs(source):
        raise FetchError(f"path {source!r} must be absolute")
    real = Path(os.path.realpath(source))
    if not any(real.is_relative_to(os.path.realpath(root)) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise FetchError(f"local models are read only from {shown}")
    return open_regular(real)


def _open(
    source: str, is_url: bool, timeout: float, roots: Sequence[Path]
) -> tuple[BinaryIO, int | None]:
    """A stream of the source and its announced length (None when unknown)."""
    scheme = urllib.parse.urlsplit(source).scheme.lower() if is_url else "file"
    if is_url and scheme not in SCHEMES:
        raise FetchError(f"URL scheme {scheme!r} is not supported (use http, https or file)")
    if scheme == "file":
        path = urllib.parse.unquote(urllib.parse.urlsplit(source).path) if is_url else source
        stream = _local(path, roots)
        return stream, os.fstat(stream.fileno()).st_size
    # Each blocking read is bounded by STALL, so the overall deadline is checked in between.
    response = urllib.request.urlopen(source, timeout=min(timeout, STALL))  # noqa: S310
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def fetch(
    source: str,
    is_url: bool,
    sha256: str,
    folder: Path,
    suffix: str,
    limits: tuple[int, float],
    roots: Sequence[Path] = (),
) -> Path:
    """`<folder>/<sha256><suffix>`: downloaded (streamed to a temporary file, fsynced,
    renamed) unless already there; FetchError when too large, too slow or not matching."""
    max_bytes, timeout = limits
    final = folder / f"{sha256}{suffix}"
    if final.exists() and file_sha256(final) == sha256:
        return final
    folder.mkdir(parents=True, exist_ok=True)
    # One update runs at a time: a partial file here was left by a process killed mid-download.
    for stale in folder.glob(".download-*"):
        stale.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy(source, is_url, out, (max_bytes, deadline, timeout), roots)
            out.flush()
            os.fsync(out.fileno())
        if digest != sha256:  # the file's own digest is not echoed: it may not be a model
            raise FetchError(f"sha256 mismatch: the file fetched is not {sha256}")
        os.replace(tmp, final)
        fsync_dir(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _copy(
    source: str,
    is_url: bool,
    out: BinaryIO,
    bounds: tuple[int, float, float],
    roots: Sequence[Path],
) -> str:
    """Stream `source` into `out` within (max bytes, deadline, timeout); its sha256."""
    max_bytes, deadline, timeout = bounds
    try:
        stream, length = _open(source, is_url, timeout, roots)
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot fetch {source}: {exc}") from None
    digest, total = hashlib.sha256(), 0
    # read1: returns what one read brings, so a slow sender cannot hold a 1 MiB read open.
    read = getattr(stream, "read1", stream.read)
    with stream:
        if length is not None and length > max_bytes:
            raise FetchError(f"{length} bytes is more than the limit ({max_bytes})")
        while True:
            try:
                block = read(CHUNK)
            except OSError as exc:
                raise FetchError(f"download of {source} failed: {exc}") from None
            if not block:
                return digest.hexdigest()
            total += len(block)
            if total > max_bytes:
                raise FetchError(f"more than the limit ({max_bytes} bytes)")
            if time.monotonic() > deadline:
                raise FetchError(f"not done within commands.download_timeout ({timeout:g} s)")
            digest.update(block)
            out.write(block)


def model_name(args: ModelArgs) -> str:
    """The name payloads give the new model: the file name of its URL or path."""
    where = urllib.parse.urlsplit(args.url).path if args.url else str(args.path)
    return (PurePosixPath(where).name or "model.tflite")[:128]


def check_output(detector: Detector, image: Image) -> None:
    """The model runs on `image` and its output decodes to sane boxes; else CommandError."""
    try:
        dets, _ = detector.detect_arrays(image)
    except Exception as exc:
        raise CommandError(f"the new model fails on a test frame: {exc}") from None
    if not (np.isfinite(dets.xyxy).all() and np.isfinite(dets.score).all()):
        raise CommandError("the new model's output does not decode to finite boxes and scores")


@dataclass
class Outcome:
    """What the background thread left for the main loop."""

    reply: Reply
    model: ActiveModel | None = None
    detectors: Sequence[Detector] = ()
    error: str = ""
    rollback: bool = False  # the file was good, but the model failed to load or test


class ModelUpdater:
    """One model update at a time: prepared in the background, swapped on the main loop."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None

    @property
    def busy(self) -> bool:
        """An update is being prepared or waits to be swapped."""
        return self._thread is not None

    def start(self, args: ModelArgs, reply: Reply) -> None:
        """Start preparing an update (the command handler, on the main loop)."""
        if self.busy:
            raise Refused("busy", "a model update is already running")
        image = self._test_frame()
        work = threading.Thread(
            target=self._prepare, args=(args, reply, image), name="model-update", daemon=True
        )
        self._thread = work
        work.start()

    def _test_frame(self) -> Image | None:
        threads = self.host.threads
        for worker in threads.workers.values() if threads is not None else ():
            if worker.last_frame is not None:
                return worker.last_frame.frame.image
        return None

    def _prepare(self, args: ModelArgs, reply: Reply, image: Image | None) -> None:
        try:
            self._outcome = self._load(args, reply, image)
        except FetchError as exc:
            self._outcome = Outcome(reply, error=str(exc))
        except CommandError as exc:
            self._outcome = Outcome(reply, error=str(exc), rollback=True)
        except UserError as exc:
            error = f"the new model cannot be used: {exc}"
            self._outcome = Outcome(reply, error=error, rollback=True)
        except Exception as exc:
            log.exception("model update failed")
            self._outcome = Outcome(reply, error=f"internal error: {exc}", rollback=True)

    def _load(self, args: ModelArgs, reply: Reply, image: Image | None) -> Outcome:
        host, cfg = self.host, self.host.cfg
        folder = models_dir(cfg)
        limits = (cfg.commands.max_model_bytes, cfg.commands.download_timeout)
        source, is_url = (args.url, True) if args.url else (str(args.path), False)
        sha = args.sha256.lower()
        roots = local_roots(cfg)
        path = fetch(source, is_url, sha, folder, ".tflite", limits, roots)
        active = host.model or ActiveModel.of(cfg.model)
        labels = active.cfg.labels
        label_source = args.labels_url or args.labels_path
        if label_source is not None:
            labels = _fetch_labels(label_source, args, folder, (MAX_LABEL_BYTES, limits[1]), roots)
        model_cfg = active.cfg.model_copy(update={"path": path, "labels": labels})
        log.info("model update: %s verified (sha256 %s); loading it", source, sha)
        detectors = load_detectors(host.loaded, cfg.runtime.detect_workers, model_cfg)
        floor = labels_floor(host.loaded, detectors[0].labels)
        for detector in detectors:
            detector.min_score = floor
            size = (detector.input.shape[1], detector.input.shape[2], 3)
            check_output(detector, image if image is not None else np.zeros(size, np.uint8))
        model = ActiveModel(model_cfg, ModelId(model_name(args), sha))
        return Outcome(reply, model, detectors)

    def poll(self) -> None:
        """On the main loop: finish a prepared update (swap, or answer why not)."""
        outcome, thread = self._outcome, self._thread
        if outcome is None or thread is None or thread.is_alive():
            return
        self._thread, self._outcome = None, None
        counters = self.host.counters
        if outcome.model is None:
            counters.inc("model.rollbacks" if outcome.rollback else "model.refused")
            log.error("model update failed, the running model stays: %s", outcome.error)
            outcome.reply.fail(outcome.error, {"rolled_back": outcome.rollback})
            return
        try:
            self._swap(outcome, outcome.model)
        except UserError as exc:  # raised before anything changed (a replay file is gone)
            counters.inc("model.rollbacks")
            outcome.reply.fail(f"the new model cannot be used: {exc}", {"rolled_back": True})
            return
        counters.inc("model.updates")

    def _swap(self, outcome: Outcome, model: ActiveModel) -> None:
        host = self.host
        old = host.model or ActiveModel.of(host.cfg.model)
        threads = host.threads
        fields = {"model": model.id.name, "sha256": model.id.sha256, "previous": old.id.name}
        current = threads.detect[0].detector.labels if threads and threads.detect else []
        if threads is None or list(outcome.detectors[0].labels) != list(current):
            parts = build_parts(host.loaded, list(outcome.detectors), host.start_ts, host.counters)
            host.stop_pipeline()
            host.model = model
            outcome.reply.ok({**fields, "labels_changed": True})
            host.start_pipeline(parts)
        else:
            swap = Swap(outcome.detectors, model.id)
            _pause_workers(threads, swap)
            host.model = model
            host.health.set_model(model.id.name, model.id.sha256)
            outcome.reply.ok({**fields, "labels_changed": False})
            swap.go.set()
        log.info("model update: now running %s (sha256 %s)", model.id.name, model.id.sha256)


def _fetch_labels(
    source: str, args: ModelArgs, folder: Path, limits: tuple[int, float], roots: Sequence[Path]
) -> Path:
    """The label file, verified against labels_sha256 (required: see ModelArgs)."""
    is_url = args.labels_url is not None
    sha = (args.labels_sha256 or "").lower()
    return fetch(source, is_url, sha, folder, ".labels.txt", limits, roots)


def _pause_workers(threads: Threads, swap: Swap) -> None:
    """Hand `swap` to every detect worker and wait until each has taken it and every frame
    detected before has been through its camera's steps (bounded)."""
    alive = [w for w in threads.detect if w.thread.is_alive()]
    for worker in threads.detect:
        worker.swap(swap)
    if not swap.wait_arrived(len(alive), SWAP_WAIT):
        log.warning("model update: a detect worker is slow to take the new model")
        return
    deadline = time.monotonic() + SWAP_WAIT
    while time.monotonic() < deadline:
        if all(
            sum(w.put_counts.get(name, 0) for w in threads.detect) <= camera.handled
            for name, camera in threads.workers.items()
        ):
            return
        time.sleep(0.01)
    log.warning("model update: frames of the previous model are still being processed")
