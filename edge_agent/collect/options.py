"""`edge-agent collect` options: the parser, and checks that turn mistakes into one line."""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.schema import MqttConfig
from edge_agent.errors import UserError

DEFAULT_GROUP = "edge-agent-collect"
DEFAULT_TOPIC = "edge/+/+/samples"
DEFAULT_MAX_IMAGE_BYTES = 10_000_000
DEFAULT_SESSION_EXPIRY = 7 * 86400  # seconds the broker keeps a stopped collector's session
DEFAULT_EXPORT_INTERVAL = 30.0


@dataclass(frozen=True)
class CollectOptions:
    """Everything `collect` was asked to do, checked."""

    out: Path
    mqtt: MqttConfig
    password: str | None
    group: str
    topic: str
    client_id: str
    image_root: str
    max_image_bytes: int
    export_interval: float
    rebuild: bool

    @property
    def subscription(self) -> str:
        """The shared subscription filter."""
        return f"$share/{self.group}/{self.topic}"

    @property
    def where(self) -> str:
        """The broker as named in error lines."""
        return f"broker {self.mqtt.host}:{self.mqtt.port}"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `collect` on the CLI's subparsers."""
    p = sub.add_parser("collect", help="turn devices' samples into a labeling dataset")
    p.add_argument("--out", required=True, type=Path, help="dataset folder")
    p.add_argument("--host", help="broker host (default: the config's, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="broker port (default: the config's, else 1883)")
    p.add_argument("--config", type=Path, help="agent YAML whose mqtt: section is used")
    p.add_argument("--group", default=DEFAULT_GROUP, help=f"share group (default {DEFAULT_GROUP})")
    p.add_argument("--topic", help=f"samples topic filter (default {DEFAULT_TOPIC})")
    p.add_argument("--client-id", help="MQTT client id (default: from host name and --out)")
    p.add_argument("--image-root", default="", help="URL prefix of images in Label Studio tasks")
    p.add_argument(
        "--max-image-bytes",
        type=int,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help=f"largest JPEG accepted (default {DEFAULT_MAX_IMAGE_BYTES})",
    )
    p.add_argument(
        "--export-interval",
        type=float,
        default=DEFAULT_EXPORT_INTERVAL,
        help=f"seconds between export refreshes (default {DEFAULT_EXPORT_INTERVAL:g})",
    )
    p.add_argument("--rebuild", action="store_true", help="regenerate exports from the index")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "text", "json"])


def default_client_id(out: Path) -> str:
    """Fixed for one dataset folder on one host: a restart resumes the broker session."""
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:10]
    host = socket.gethostname().split(".")[0][:40] or "host"
    return f"edge-agent-collect-{host}-{digest}"


def _mqtt_config(args: argparse.Namespace) -> tuple[MqttConfig, str | None]:
    """The broker settings: the config's mqtt: section (TLS, login) with CLI overrides."""
    from edge_agent.publish.client import read_password

    if args.config is not None:
        from edge_agent.config.loader import load_config

        cfg = load_config(args.config).config.mqtt
    else:
        cfg = MqttConfig()
    updates: dict[str, object] = {"protocol": "5"}  # shared subscriptions need MQTT 5
    if args.host is not None:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if cfg.session_expiry == 0:
        updates["session_expiry"] = DEFAULT_SESSION_EXPIRY
    return cfg.model_copy(update=updates), read_password(cfg)


def _check_filter(topic: str) -> None:
    where = f"--topic {topic!r}"
    levels = topic.split("/")
    if not topic or topic.startswith("$"):
        raise UserError("not a samples topic filter (e.g. edge/+/+/samples)", where=where)
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise UserError("'#' must be a whole level and the last one", where=where)
        if "+" in level and level != "+":
            raise UserError("'+' must be a whole level (e.g. edge/+/+/samples)", where=where)


def _check_values(args: argparse.Namespace, cfg: MqttConfig) -> None:
    if not cfg.host or any(c.isspace() for c in cfg.host):
        raise UserError("not a host name or address", where=f"--host {cfg.host!r}")
    if not 1 <= cfg.port <= 65535:
        raise UserError("must be a TCP port 1..65535", where=f"--port {cfg.port}")
    if not args.group or any(c in args.group for c in "/+#"):
        raise UserError(
            "a share group name has no '/', '+' or '#'", where=f"--group {args.group!r}"
        )
    if args.max_image_bytes < 1024:
        raise UserError("must be at least 1024", where=f"--max-image-bytes {args.max_image_bytes}")
    if not args.export_interval > 0:
        raise UserError("must be a positive number of seconds", where="--export-interval")


def prepare_out(out: Path) -> None:
    """Create the dataset folder, or say in one line why it cannot be used."""
    where = f"--out {out}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError("exists and is not a folder", where=where) from None
    except OSError as exc:
        raise UserError(f"cannot create the folder: {exc.strerror}", where=where) from None
    if not out.is_dir():
        raise UserError("exists and is not a folder", where=where)
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError("the folder is not writable", where=where)


def options_from(args: argparse.Namespace) -> CollectOptions:
    """Checked options from parsed arguments (UserError on a mistake)."""
    cfg, password = _mqtt_config(args)
    _check_values(args, cfg)
    topic = args.topic if args.topic is not None else f"{cfg.topic_prefix}/+/+/samples"
    _check_filter(topic)
    return CollectOptions(
        out=args.out,
        mqtt=cfg,
        password=password,
        group=args.group,
        topic=topic,
        client_id=args.client_id or default_client_id(args.out),
        image_root=args.image_root,
        max_image_bytes=args.max_image_bytes,
        export_interval=args.export_interval,
        rebuild=args.rebuild,
    )
