"""Value types shared by the config sections: safe text, topic names, paths relative to the
config file, durations and sizes. Each raises only ValueError, with a message for the user."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, StringConstraints, ValidationInfo

# Unicode category Cc (C0, DEL, C1), lone surrogates (Cs: not encodable as UTF-8) and the
# noncharacters U+FFFE/U+FFFF: none of them belongs in a config value, a topic or a log line.
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_TOPIC_WILDCARDS = ("+", "#")
MAX_SEGMENT_BYTES = 128  # device_id, camera names: keeps every topic far below MQTT's 65,535
MAX_PREFIX_BYTES = 256
MQTT_MAX_INTERVAL = 2**32 - 1  # MQTT 5 expiry intervals are four-byte unsigned integers
MAX_BYTES = 2**53  # every size still exact as a float (SQLite, JSON, arithmetic)
MAX_PIXELS = 16384  # a frame side; larger than any camera sensor this runs on


def text_problem(text: str) -> str | None:
    """Describe the first character that makes `text` unsafe in a config, or None if none."""
    found = _UNSAFE_CHARS.search(text)
    if found is None:
        return None
    code = ord(found.group())
    kind = "a control character"
    if code >= 0xFFFE:
        kind = "a Unicode noncharacter"
    elif code >= 0xD800:
        kind = "a lone surrogate (not valid UTF-8)"
    return f"contains {kind} U+{code:04X} at position {found.start() + 1}"


def show(text: str, limit: int = 40) -> str:
    """A short printable repr of user text for error messages (escapes, truncation)."""
    shown = repr(text[:limit])
    return shown + "…" if len(text) > limit else shown


def check_text(value: str) -> str:
    """Refuse control characters, lone surrogates and noncharacters."""
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _utf8_limit(value: str, limit: int) -> None:
    size = len(value.encode("utf-8"))  # safe: check_text ran first, so no lone surrogates
    if size > limit:
        raise ValueError(f"is {size} bytes long in UTF-8; at most {limit} are allowed")


def check_topic_segment(value: str) -> str:
    """Reject names that would break, widen or bloat an MQTT topic level."""
    if not value:
        raise ValueError("must not be empty")
    check_text(value)
    bad = [c for c in (*_TOPIC_WILDCARDS, "/") if c in value]
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ValueError(f"{show(value)} contains {shown}, not allowed in an MQTT topic segment")
    _utf8_limit(value, MAX_SEGMENT_BYTES)
    return value


def check_topic_prefix(value: str) -> str:
    """A topic prefix: inner `/` allowed, but no wildcards, `$`, or empty levels."""
    if not value:
        raise ValueError("must not be empty")
    check_text(value)
    if any(c in value for c in _TOPIC_WILDCARDS):
        raise ValueError(f"{show(value)} contains a wildcard ('+' or '#'), not allowed in a topic")
    if value.startswith("/") or value.endswith("/"):
        raise ValueError(f"{show(value)} must not start or end with '/' (write e.g. 'edge/site1')")
    if "//" in value:
        raise ValueError(f"{show(value)} contains an empty topic level ('//')")
    if value.startswith("$"):
        raise ValueError(f"{show(value)} starts with '$': such topics are reserved for the broker")
    _utf8_limit(value, MAX_PREFIX_BYTES)
    return value


def bounded(limit: int) -> Callable[[str], str]:
    """A validator: safe text of at most `limit` UTF-8 bytes."""

    def check(value: str) -> str:
        _utf8_limit(check_text(value), limit)
        return value

    return check


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Join a relative path to the config file's folder (no filesystem access)."""
    base = (info.context or {}).get("base_dir")
    if value.is_absolute() or base is None:
        return value
    return Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
TopicSegment = Annotated[str, AfterValidator(check_topic_segment)]
TopicPrefix = Annotated[str, AfterValidator(check_topic_prefix)]
Text = Annotated[str, AfterValidator(check_text)]


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
# A plain decimal number: no `inf`, `nan`, hex or underscores slip through float().
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?")


def _finite(amount: float, value: object, what: str) -> float:
    if math.isnan(amount):
        raise ValueError(f"{show(str(value))} is not a number")
    if not math.isfinite(amount):
        raise ValueError(f"{show(str(value))} is too large for a {what}")
    if amount < 0:
        raise ValueError(f"{show(str(value))}: a {what} must not be negative")
    return amount


def _number(value: object, what: str) -> float | None:
    """A finite, non-negative float from an int/float input, or None for other types."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {what}, not true/false")
    if not isinstance(value, int | float):
        return None
    try:
        return _finite(float(value), value, what)
    except OverflowError:  # float() of an int with hundreds of digits
        raise ValueError(f"{show(str(value))} is too large for a {what}") from None


def _duration(value: object) -> object:
    """Accept seconds as a number or a string like `90s`, `15m`, `24h`, `7d`."""
    if not isinstance(value, str):
        number = _number(value, "duration")
        return value if number is None else number
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    digits = text[:-1].strip() if text[-1:] in _DURATION_UNITS else text
    if not _NUMBER.fullmatch(digits):
        raise ValueError(f"{show(value)} is not a duration (e.g. 30, 90s, 15m, 24h, 7d)")
    return _finite(float(digits) * _DURATION_UNITS[unit], value, "duration")


def _size(value: object) -> object:
    """Accept bytes as a number or a string like `500MB`, `1GiB`."""
    if not isinstance(value, str):
        number = _number(value, "size")
        if number is None or isinstance(value, int):
            return value  # ints stay exact; the field's bounds judge them
        return int(number)
    text = value.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :] or "b"
    if unit not in _SIZE_UNITS or not _NUMBER.fullmatch(digits):
        raise ValueError(f"{show(value)} is not a size (e.g. 104857600, 100MB, 1GiB)")
    return int(_finite(float(digits) * _SIZE_UNITS[unit], value, "size"))


# Bounds live on each field (pydantic lets a later `le` silently replace an earlier one).
# json_schema_input_type: editors reading `edge-agent schema` accept `90s` and `100MB` too.
_DURATION_TEXT = Annotated[str, StringConstraints(pattern=r"^\s*[0-9.eE+-]+\s*[smhdSMHD]?\s*$")]
_SIZE_TEXT = Annotated[str, StringConstraints(pattern=r"^\s*[0-9.eE+-]+\s*[A-Za-z]*\s*$")]
Seconds = Annotated[
    float, BeforeValidator(_duration, json_schema_input_type=float | _DURATION_TEXT)
]
Bytes = Annotated[int, BeforeValidator(_size, json_schema_input_type=int | _SIZE_TEXT)]
