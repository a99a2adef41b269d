"""Command line: `edge-agent run | check-config | watch | --version`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from edge_agent import __version__
from edge_agent.config.loader import LoadedConfig, load_config
from edge_agent.entry import record_signals
from edge_agent.errors import UserError
from edge_agent.logs import setup_logging
from edge_agent.memory import tune_allocator
from edge_agent.redact import Redactor

if TYPE_CHECKING:
    from edge_agent.runtime import Agent

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", choices=["auto", "text", "json"])
    run.add_argument(
        "--annotate",
        metavar="OUT.mp4",
        help="write replay cameras' frames with boxes, track ids, zones and lines to a video",
    )
    check = sub.add_parser(
        "check-config",
        help="validate a config file, check the files it names and its labels against the model",
    )
    check.add_argument("config", help="YAML config file")
    check.add_argument(
        "--offline",
        action="store_true",
        help="validate only: do not look at the files it names or load the model",
    )
    sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    from edge_agent.watch import add_watch_arguments

    add_watch_arguments(sub.add_parser("watch", help="print messages arriving on the broker"))
    from edge_agent.models_cli import add_parsers
    from edge_agent.tools import track_cli

    add_parsers(sub)
    track_cli.add_parser(sub)
    from edge_agent.collect.options import add_parser as add_collect_parser

    add_collect_parser(sub)
    return parser


FORCE_EXIT_FLUSH = 1.0  # seconds a second signal waits for the outbox to commit


def _register_secrets(redactor: Redactor, loaded: LoadedConfig) -> None:
    """Every secret the config gives access to is hidden from logs and error lines."""
    from edge_agent.publish.client import read_password

    cfg = loaded.config
    redactor.add(read_password(cfg.mqtt))
    for cam in cfg.cameras.values():
        url = getattr(cam.source, "url", None)
        if isinstance(url, str):
            redactor.add_url(url)


def _install_signals(agent: Agent, early: list[int]) -> None:
    """SIGTERM/SIGINT stop gracefully, a second one exits at once; SIGHUP re-reads the config.
    Handlers only set events (or start the bounded forced exit)."""
    stops: list[int] = []

    def _on_stop(signum: int, _frame: FrameType | None) -> None:
        stops.append(signum)
        if len(stops) == 1:
            agent.signalled.set()
            agent.stop.set()
            return
        name = signal.Signals(signum).name
        log.warning("second %s: exiting now; undelivered messages stay in the outbox", name)
        flusher = threading.Thread(target=agent.force_exit_flush, daemon=True)
        flusher.start()
        flusher.join(FORCE_EXIT_FLUSH)
        logging.shutdown()
        os._exit(128 + signum)

    def _on_hup(_signum: int, _frame: FrameType | None) -> None:
        agent.reload.set()

    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    signal.signal(signal.SIGHUP, _on_hup)
    for signum in early:
        (_on_hup if signum == signal.SIGHUP else _on_stop)(signum, None)


def _quiet_native_logs(level: str) -> None:
    """OpenCV and FFmpeg write to stderr directly, past the redactor and the JSON format; the
    agent's own lines already say what failed. Set before cv2 is imported; debug keeps them."""
    if level != "debug":
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    # FFmpeg opens are serialised process-wide otherwise: one hung camera delays the others.
    os.environ.setdefault("OPENCV_FFMPEG_IS_THREAD_SAFE", "1")
    import cv2  # the environment is read once, at import: cv2 may already be loaded

    if level != "debug":
        api = getattr(cv2.utils, "logging", None)
        if api is not None:
            api.setLogLevel(api.LOG_LEVEL_ERROR)
        elif (flat := getattr(cv2, "setLogLevel", None)) is not None:
            flat(2)  # OpenCV 4.x (what numpy<2 resolves to) has only this; 2 = ERROR


def _run(args: argparse.Namespace, redactor: Redactor, early: list[int]) -> int:
    loaded = load_config(args.config)
    tune_allocator()
    _quiet_native_logs(args.log_level or loaded.config.log.level)
    from edge_agent.runtime import Agent

    setup_logging(
        args.log_level or loaded.config.log.level,
        args.log_format or loaded.config.log.format,
        redactor,
    )
    _register_secrets(redactor, loaded)
    _legacy_notes(loaded, log.warning)
    agent = Agent(loaded, Path(args.annotate) if args.annotate else None)
    _install_signals(agent, early)
    agent.prepare()
    return agent.run()


def _legacy_notes(loaded: LoadedConfig, say: Callable[[str], object]) -> None:
    """How to rewrite sections kept from earlier releases (they still work as before)."""
    from edge_agent.camera.objects import objects_yaml
    from edge_agent.sampling.config import LEGACY_KEYS

    for name, cam in loaded.config.cameras.items():
        if cam.detect is not None:
            where = loaded.where("cameras", name, "detect")
            rewrite = objects_yaml(cam.detect.to_objects()).replace("\n", "\n    ")
            say(f"{where}: `detect:` is the earlier form of `objects:`; equivalent:\n    {rewrite}")
        old = [k for k in LEGACY_KEYS if ("cameras", name, "samples", k) in loaded.lines]
        low = cam.samples.strategies.low_confidence
        if old and low is not None:
            where = loaded.where("cameras", name, "samples", old[0])
            keys = low.model_dump(include={"min_score", "max_score", "per_minute"})
            text = ", ".join(f"{k}: {v}" for k, v in keys.items())
            say(
                f"{where}: `{'`, `'.join(old)}` are the earlier form of "
                f"`strategies.low_confidence`; equivalent:\n    strategies:\n"
                f"      low_confidence: {{{text}}}"
            )


def _check(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    cfg = loaded.config
    cams = ", ".join(f"{n} ({c.source.type})" for n, c in cfg.cameras.items())
    print(
        f"{loaded.file}: OK: device {cfg.device_id}, model {cfg.model.path.name} "
        f"({cfg.model.format}), cameras: {cams}"
    )
    _legacy_notes(loaded, print)
    if args.offline:
        return 0
    from edge_agent.config.preflight import preflight

    problems = preflight(loaded)
    for problem in problems:
        print(f"edge-agent: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{loaded.file}: files present, model loads, labels match the model's")
    return 0


def _schema() -> int:
    import json

    from edge_agent.config.json_schema import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None, early: list[int] | None = None) -> int:
    """Entry point; user errors print one located line and return 2, internal errors one
    line and 1 (the traceback is logged at debug level)."""
    redactor = Redactor()
    try:
        args = _parser().parse_args(argv)
        if args.command == "run":
            return _run(args, redactor, early if early is not None else record_signals())
        if args.command == "check-config":
            return _check(args)
        if args.command == "schema":
            return _schema()
        if args.command == "track":
            from edge_agent.tools.track_cli import run as track

            setup_logging("info", "text", redactor)
            return track(args)
        if args.command == "collect":
            from edge_agent.collect.run import run as collect

            return collect(args, redactor)
        if args.command == "models":
            from edge_agent.models_cli import run as models

            setup_logging("info", "text", redactor)
            return models(args)
        from edge_agent.watch import run as watch

        return watch(args)
    except UserError as exc:
        print(f"edge-agent: error: {redactor(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        print(
            f"edge-agent: internal error: {redactor(f'{type(exc).__name__}: {exc}')} "
            "(run with --log-level debug for the traceback; please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
