"""Command line: `edge-agent run | check-config | watch | --version`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from edge_agent import __version__
from edge_agent.config.loader import load_config
from edge_agent.errors import UserError
from edge_agent.logs import setup_logging

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", choices=["auto", "text", "json"])
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", help="YAML config file")
    watch = sub.add_parser("watch", help="print messages arriving on the broker")
    watch.add_argument("--host", default="127.0.0.1")
    watch.add_argument("--port", type=int, default=1883)
    watch.add_argument("--topic", default="edge/#")
    watch.add_argument("--count", type=int, default=0, help="exit after N messages")
    watch.add_argument(
        "--until-offline",
        action="store_true",
        help="exit when a device publishes a (non-retained) offline status",
    )
    watch.add_argument("--timeout", type=float, default=0, help="exit after N seconds")
    from edge_agent.models_cli import add_parsers

    add_parsers(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from edge_agent.runtime import Agent

    loaded = load_config(args.config)
    setup_logging(
        args.log_level or loaded.config.log.level, args.log_format or loaded.config.log.format
    )
    agent = Agent(loaded)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop.set()  # handlers only set the event; the main loop does the work

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    agent.prepare()
    return agent.run()


def _check(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    cfg = loaded.config
    cams = ", ".join(f"{n} ({c.source.type})" for n, c in cfg.cameras.items())
    print(
        f"{loaded.file}: OK: device {cfg.device_id}, model {cfg.model.path.name} "
        f"({cfg.model.format}), cameras: {cams}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one located line and return 2."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check-config":
            return _check(args)
        if args.command == "models":
            from edge_agent.models_cli import run as models

            setup_logging("info", "text")
            return models(args)
        from edge_agent.watch import watch

        return watch(args.host, args.port, args.topic, args.count, args.until_offline, args.timeout)
    except UserError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
