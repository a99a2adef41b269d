"""Remote commands: `<prefix>/<device>/cmd/<name>` with a JSON object as payload, answered
on `<prefix>/<device>/cmd/<name>/result` (or the MQTT 5 response topic, with the request's
correlation data). Parsing, validation and authorization happen here; the handlers (bound by
the runtime) run on the runtime's main loop thread."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from edge_agent.config.base import Strict
from edge_agent.control.config import CommandsConfig
from edge_agent.health import Counters
from edge_agent.publish.inbox import Inbox, Incoming
from edge_agent.publish.payloads import PAYLOAD_VERSION, OutMessage, Topics, new_id

log = logging.getLogger(__name__)

MAX_PAYLOAD = 64 * 1024  # a command is a small JSON object; anything larger is a mistake
MAX_TOPIC_BYTES = 65535


class CommandError(Exception):
    """A command that cannot be carried out; the message is the result's `error`."""


class Refused(Exception):
    """A message refused before it ran (counted as `commands.refused.<reason>`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SnapshotArgs(Strict):
    """`snapshot`: the camera (optional when there is one)."""

    camera: str | None = None


class DetectArgs(Strict):
    """`detect`: turn detection on or off for a camera (optional when there is one)."""

    camera: str | None = None
    enabled: bool


class NoArgs(Strict):
    """`reload`, `stats`: no arguments."""


class ModelArgs(Strict):
    """`model`: where to get the new model (and labels) and their sha256."""

    url: str | None = None
    path: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="64 hex digits")
    labels_url: str | None = None
    labels_path: str | None = None
    labels_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def _one_source(self) -> ModelArgs:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url and path")
        if self.labels_url is not None and self.labels_path is not None:
            raise ValueError("give at most one of labels_url and labels_path")
        has_labels = self.labels_url is not None or self.labels_path is not None
        if (self.labels_sha256 is not None) != has_labels:
            raise ValueError("labels_url or labels_path go with labels_sha256")
        return self


ARGS: dict[str, type[BaseModel]] = {
    "snapshot": SnapshotArgs,
    "reload": NoArgs,
    "detect": DetectArgs,
    "stats": NoArgs,
    "model": ModelArgs,
}


@dataclass(frozen=True)
class Request:
    """A parsed, authorized command."""

    name: str
    args: Any
    response_topic: str | None = None
    correlation: bytes | None = None


def command_name(topics: Topics, topic: str) -> str:
    """The `<name>` of `<base>/cmd/<name>`."""
    return topic.removeprefix(topics.cmd(""))


def authorize(cfg: CommandsConfig, incoming: Incoming) -> None:
    """Refused(not_allowed) unless the sender's user property is on the allow-list."""
    if cfg.allow is None:
        return
    values = incoming.user_property(cfg.allow_property)
    if not any(v in cfg.allow for v in values):
        shown = f"{values[0]!r}" if values else "none"
        raise Refused(
            "not_allowed",
            f"sender not allowed: user property {cfg.allow_property!r} is {shown}",
        )


def valid_topic(topic: str) -> bool:
    """Whether `topic` can be published to (no wildcards, not empty, not too long)."""
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\0" not in topic
        and len(topic.encode("utf-8", "replace")) <= MAX_TOPIC_BYTES
    )


def parse_args(name: str, payload: bytes) -> Any:
    """The validated arguments of command `name`; Refused(unknown_command | invalid)."""
    model = ARGS.get(name)
    if model is None:
        known = ", ".join(sorted(ARGS))
        raise Refused("unknown_command", f"unknown command {name!r}; known: {known}")
    if len(payload) > MAX_PAYLOAD:
        raise Refused("invalid", f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD}")
    try:
        data = json.loads(payload) if payload.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused("invalid", f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused("invalid", "payload must be a JSON object")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise Refused("invalid", _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    """`field: message` of the first problem (pydantic's wording, without its URL)."""
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}" if where else message


class Reply:
    """Answers one request (once): builds the result message and submits it."""

    def __init__(
        self,
        topics: Topics,
        name: str,
        submit: Callable[[OutMessage], None],
        inbox: Inbox | None,
        counters: Counters,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        self.topics, self.name, self.submit, self.inbox = topics, name, submit, inbox
        self.counters = counters
        self.response_topic, self.correlation = response_topic, correlation
        self.sent = False

    def ok(self, fields: Mapping[str, Any] | None = None) -> None:
        """Success, with the command's result fields."""
        self._send(True, "", fields or {})

    def fail(self, error: str, fields: Mapping[str, Any] | None = None) -> None:
        """Failure, with why."""
        self._send(False, error, fields or {})

    def _send(self, ok: bool, error: str, fields: Mapping[str, Any]) -> None:
        if self.sent:
            return
        self.sent = True
        if not ok and "refused" not in fields:
            self.counters.inc(f"commands.failed.{self.name}")
        msg_id = new_id()
        body: dict[str, Any] = {"v": PAYLOAD_VERSION, "id": msg_id, "command": self.name}
        body["ok"] = ok
        if error:
            body["error"] = error
        body.update(fields)
        body["ts"] = round(time.time(), 3)
        topic = self.response_topic or self.topics.cmd_result(self.name)
        if self.correlation is not None and self.inbox is not None:
            self.inbox.remember_reply(msg_id, self.correlation)
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.submit(OutMessage(msg_id, topic, payload, "cmd_result", 1, False))


Handler = Callable[[Any, Reply], None]


class Commands:
    """Turns incoming messages into handler calls and results; counts what it accepts and
    refuses. `handlers` map a command name to a function that answers through its Reply."""

    def __init__(
        self,
        cfg: Callable[[], CommandsConfig],
        topics: Callable[[], Topics],
        counters: Counters,
        submit: Callable[[OutMessage], None],
        handlers: Mapping[str, Handler],
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.counters = counters
        self.submit = submit
        self.handlers = dict(handlers)
        self.inbox: Inbox | None = None

    def reply_for(self, incoming: Incoming) -> Reply:
        """The Reply for a message (its response topic when valid, its correlation data)."""
        topics = self.topics()
        response = incoming.response_topic
        if response is not None and not valid_topic(response):
            response = None
        name = command_name(topics, incoming.topic)
        return Reply(
            topics, name, self.submit, self.inbox, self.counters, response, incoming.correlation
        )

    def refuse(self, incoming: Incoming, reason: str, message: str) -> None:
        """Answer with an error and count the refusal (safe from any thread). Only a sender
        that passed the allow-list chooses where the answer goes and what it carries."""
        self.counters.inc(f"commands.refused.{reason}")
        log.warning("command on %s refused (%s): %s", incoming.topic, reason, message)
        if not self._allowed(incoming):
            incoming = replace(incoming, response_topic=None, correlation=None)
        self.reply_for(incoming).fail(message, {"refused": reason})

    def _allowed(self, incoming: Incoming) -> bool:
        try:
            authorize(self.cfg(), incoming)
        except Refused:
            return False
        return True

    def busy(self, incoming: Incoming) -> None:
        """The queue of received commands is full (called on the MQTT thread)."""
        self.refuse(incoming, "busy", "too many commands waiting; try again")

    def handle(self, incoming: Incoming) -> None:
        """Authorize, parse and run one received command."""
        reply = self.reply_for(incoming)
        name = reply.name
        try:
            authorize(self.cfg(), incoming)  # first: a stranger's message goes no further
            if incoming.retain:  # else it would run again at every reconnect
                raise Refused("invalid", "retained command ignored; publish without retain")
            if incoming.response_topic is not None and reply.response_topic is None:
                raise Refused("invalid", f"response topic {incoming.response_topic!r} is invalid")
            args = parse_args(name, incoming.payload)
        except Refused as exc:
            self.refuse(incoming, exc.reason, str(exc))
            return
        try:
            self.handlers[name](args, reply)
        except Refused as exc:  # arguments the running agent cannot take (an unknown camera)
            self.refuse(incoming, exc.reason, str(exc))
            return
        except CommandError as exc:
            reply.fail(str(exc))
        except Exception as exc:
            log.exception("command %s failed", name)
            reply.fail(f"internal error: {exc}")
        self.counters.inc(f"commands.accepted.{name}")
        log.info("command %s: %s", name, "answered" if reply.sent else "running")
