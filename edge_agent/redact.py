"""Secret redaction: the one place that decides what a log line, error or traceback may show.

`redact_url` hides URL credentials; `Redactor` also hides `password=...`-style pairs and every
secret registered with `add()`, in any encoding a log line can carry (raw, percent-encoded,
percent-decoded, backslash-escaped as in a repr or JSON). Over-redacting is preferred to
leaking: when a URL cannot be parsed with confidence, more of it is hidden.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote

MASK = "***"
MIN_SECRET_LEN = 4  # shorter literals would blank out ordinary words in every log line
LONG_SECRET = 256  # longer secrets are matched in whole-string encodings only
TOKEN_STOP_PREFIX = 8

# Query/fragment parameter names whose values are hidden (compared lower-case, '-' as '_').
_SECRET_PARAMS = frozenset(
    {
        *("password", "passwd", "pwd", "pass", "passphrase", "secret", "client_secret"),
        *("token", "access_token", "refresh_token", "id_token", "auth", "authorization"),
        *("key", "apikey", "api_key", "signature", "sig", "credential", "credentials"),
    }
)
# A parameter named `<anything>_<suffix>` is secret too (x-amz-signature, session_token...).
_SECRET_SUFFIXES = (
    *("_password", "_passwd", "_pwd", "_pass", "_token", "_key", "_secret", "_auth"),
    *("_signature", "_sig", "_credential", "_credentials"),
)

# `name=value` / `name: value` in free text. Bare `key`/`sig` are left out here: they are
# common words in messages and source lines, and only secret inside URLs.
_KV_NAMES = (
    "password|passwd|passphrase|pwd|pass|secret|token|apikey|api[_-]?key|access[_-]?key|"
    "secret[_-]?key|private[_-]?key|credentials?|signature|authorization|auth"
)
_KV_FIRST = "acpstACPST"  # first letters of the names above, to skip other positions fast
_QUOTED = r""""(?:[^"\\]++|\\.)*+"|'(?:[^'\\]++|\\.)*+'"""

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*+://"
_SCHEME_RE = re.compile(_SCHEME)
# A host we are sure about: a reg-name/IPv4 (unicode letters allowed) or [IPv6], numeric port.
_HOSTPORT_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+(?:%25[\w.~-]+)?\]|(?:[\w.~-]|%[0-9A-Fa-f]{2})*)(?::\d*)?"
)
_PARAM_RE = re.compile(
    # A value swallows following segments that do not start with `name=`: they are most
    # likely the rest of a value that contained a raw '&', ';' or '#'.
    r"(?P<sep>[?&;#])(?P<name>[^=&;#]*)=(?P<value>[^&;#]*(?:[&;#](?![\w.\-\[\]%]+=)[^&;#]*)*)"
)
_TRAILING_PUNCT_RE = re.compile(r"[.,;:!?)\]}'\">]+$")
_NEVER = r"(?!)"


def _may_have_kv(lowered: str) -> bool:
    """Whether a lower-cased line contains a substring every key-value name contains."""
    # An `or` chain of `in` tests: 4x faster than any() over a tuple or a regex search.
    return (
        "pass" in lowered
        or "pwd" in lowered
        or "secret" in lowered
        or "token" in lowered
        or "key" in lowered
        or "credential" in lowered
        or "signature" in lowered
        or "auth" in lowered
    )


def _is_secret_param(name: str) -> bool:
    norm = unquote(name).strip().lower().replace("-", "_").replace(".", "_")
    return norm in _SECRET_PARAMS or norm.endswith(_SECRET_SUFFIXES)


def _redact_params(tail: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if not _is_secret_param(m["name"]):
            return m[0]
        return f"{m['sep']}{m['name']}={MASK}"

    return _PARAM_RE.sub(repl, tail)


def _secret_value_open(text: str, end: int) -> bool:
    """Whether text[:end] ends inside the value of a secret-looking query parameter."""
    # rfind, not a regex search: add_url calls this once per '@', and must stay linear-ish.
    start = max(text.rfind(sep, 0, end) for sep in "?&;#")
    name, eq, _ = text[start + 1 : end].partition("=")
    return start >= 0 and bool(eq) and _is_secret_param(name)


def redact_url(url: str) -> str:
    """Hide the userinfo and secret-looking query values of a URL (`rtsp://***@cam/…`)."""
    m = _SCHEME_RE.match(url)
    if m is None:
        return _redact_params(url) if ("?" in url or "#" in url) else url
    prefix, rest = m[0], url[m.end() :]
    # The password may contain raw '@', '/', '?', '#': the userinfo ends at the LAST '@'.
    at = rest.rfind("@")
    userinfo = f"{MASK}@" if at >= 0 else ""
    hostpart = rest[at + 1 :]
    if at >= 0 and _secret_value_open(rest, at):
        # The last '@' sat inside a secret query value (`?token=p@ss`): the value runs on to
        # the next separator, so what follows the '@' is not a host and stays hidden.
        stop = next((i for i, ch in enumerate(hostpart) if ch in "&;#"), len(hostpart))
        return prefix + userinfo + MASK + _redact_params(hostpart[stop:])
    end = next((i for i, ch in enumerate(hostpart) if ch in "/?#"), len(hostpart))
    authority, tail = hostpart[:end], hostpart[end:]
    if _HOSTPORT_RE.fullmatch(authority) is None:
        # Not a host we recognise (e.g. `user:pa` of a password cut at a space): hide it.
        authority = MASK
    return prefix + userinfo + authority + _redact_params(tail)


def _hexdigits(value: int, width: int) -> str:
    """Regex for `value` as `width` hex digits, either case."""
    return "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{value:0{width}X}")


def _char_forms(ch: str) -> str:
    """Every way one character of a secret can be written in a log line, as a regex group."""
    data = ch.encode("utf-8", "surrogatepass")
    code = ord(ch)
    forms = [re.escape(ch), "".join("%" + _hexdigits(b, 2) for b in data)]
    if ch == " ":
        forms.append(r"\+")  # form encoding
    # repr() and JSON escape these with a backslash (doubled when nested): `\+` = 1..n of them.
    if ch in "\"'":
        forms.append(r"\\+" + re.escape(ch))
    elif ch == "\\":
        forms.append(r"\\+")
    elif ch in "\t\n\r":
        forms.append(r"\\+" + {"\t": "t", "\n": "n", "\r": "r"}[ch])
    if code > 0x7E or code < 0x20:
        if code <= 0xFF:
            forms.append(r"\\+x" + _hexdigits(code, 2))
        if code <= 0xFFFF:
            forms.append(r"\\+u" + _hexdigits(code, 4))
        else:  # JSON writes astral characters as a UTF-16 surrogate pair
            hi, lo = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            forms.append(r"\\+u" + _hexdigits(hi, 4) + r"\\+u" + _hexdigits(lo, 4))
            forms.append(r"\\+U" + _hexdigits(code, 8))
        forms.append("".join(r"\\+x" + _hexdigits(b, 2) for b in data))  # bytes repr
    return "(?:" + "|".join(forms) + ")"


def _long_forms(secret: str) -> set[str]:
    """The whole-string encodings of a long secret (replaced with str.replace)."""
    encoded = quote(secret, safe="")
    forms = {secret, encoded, encoded.lower(), quote_plus(secret)}
    return forms | {json.dumps(secret)[1:-1], repr(secret)[1:-1]}


def _literal_pattern(secrets: frozenset[str], prefix: int | None = None) -> str:
    """Alternation of every registered secret (or of its first `prefix` chars), longest first."""
    ordered = sorted(secrets, key=lambda s: (-len(s), s))
    if not ordered:
        return _NEVER
    alternation = "|".join("".join(_char_forms(ch) for ch in s[:prefix]) for s in ordered)
    # A match can only start at a raw first character, a '%', a '\\' (or '+' for a space):
    # checking that first lets the engine skip most positions (measured: 3x faster).
    firsts = {s[0] for s in ordered}
    starts = firsts | {"%", "\\"} | ({"+"} if " " in firsts else set())
    first = "".join(sorted(re.escape(c) for c in starts))
    return f"(?=[{first}])(?:{alternation})"


@dataclass(frozen=True)
class _Patterns:
    """Compiled patterns for one set of secrets; replaced whole by `Redactor.add`."""

    # by_kind[2 * has_url + has_kv]: the combined regex with only the branches the text can
    # match, so a plain log line pays for the literal branch alone.
    by_kind: tuple[re.Pattern[str], ...]
    literal: re.Pattern[str]
    long_forms: tuple[str, ...]
    empty: bool


def _build(all_secrets: frozenset[str]) -> _Patterns:
    """The combined regexes (URL token | key-value pair | literal secret) and the literal one."""
    # Per-character patterns of a huge secret make re.compile take seconds: those are
    # matched in their whole-string encodings with str.replace instead.
    long = frozenset(s for s in all_secrets if len(s) > LONG_SECRET)
    secrets = all_secrets - long
    long_forms = tuple(sorted({f for s in long for f in _long_forms(s)}, key=len, reverse=True))
    literal = _literal_pattern(secrets)
    # URL and value tokens stop where a registered secret begins, so a secret that contains a
    # space is matched whole by the literal branch instead of being cut by the token's end.
    # The secrets' first chars are enough to tell where one begins, and keep compiling fast.
    starts = _literal_pattern(secrets, prefix=TOKEN_STOP_PREFIX)
    token_char = rf"(?:(?!{starts})\S)" if secrets else r"\S"
    url = rf"(?P<url>(?=[A-Za-z])(?<![A-Za-z0-9+.\-]){_SCHEME}{token_char}*)"
    # The key must start a word or follow '_', '.', '-' (mqtt.password, EDGE_..._PASSWORD).
    key = rf"(?P<name>(?=[{_KV_FIRST}])(?<![A-Za-z0-9])(?i:{_KV_NAMES})(?![A-Za-z0-9_])"
    key += r"['\"]?[ \t]*[:=][ \t]*)"
    value = rf"(?P<value>{_QUOTED}|(?:(?i:bearer|basic|digest)[ \t]+)?{token_char}+)"
    lit = f"(?P<lit>{literal})"
    by_kind = tuple(
        re.compile(
            "|".join(b for b, on in ((url, has_url), (key + value, has_kv), (lit, True)) if on)
        )
        for has_url in (False, True)
        for has_kv in (False, True)
    )
    return _Patterns(by_kind, re.compile(literal), long_forms, not all_secrets)


class Redactor:
    """Hides URL credentials, `password=…` pairs and registered secrets in text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._patterns = _build(self._secrets)

    @property
    def forms(self) -> int:
        """How many literal forms are registered (for tests and diagnostics)."""
        return len(self._secrets)

    def add(self, secret: str | None) -> None:
        """Register a literal secret (and its percent-encoded/decoded forms) to hide."""
        if not secret or len(secret) < MIN_SECRET_LEN:
            return
        # Each character pattern also accepts %XX and backslash escapes, so registering the
        # raw and the percent-decoded text covers every mix of encoded and unencoded chars.
        forms = {f for f in (secret, unquote(secret)) if len(f) >= MIN_SECRET_LEN}
        with self._lock:
            if forms <= self._secrets:
                return
            secrets = self._secrets | forms
            # One attribute store: readers see the old or the new patterns, never a mix.
            self._secrets, self._patterns = secrets, _build(secrets)

    def add_url(self, url: str) -> None:
        """Register the password (or token) in a URL's userinfo and its secret query values."""
        m = _SCHEME_RE.match(url)
        rest = url[m.end() :] if m else url
        # The userinfo ends at the last '@' that is not inside a secret query value.
        ats = [i for i, ch in enumerate(rest) if ch == "@"]
        at = next((i for i in reversed(ats) if not _secret_value_open(rest, i)), -1)
        if m is not None and at >= 0:
            user, colon, password = rest[:at].partition(":")
            # `user:password@`; a lone `token@` is a credential by itself.
            self.add(password if colon else user)
        for param in _PARAM_RE.finditer(url):
            if _is_secret_param(param["name"]):
                self.add(param["value"])

    def __call__(self, text: str) -> str:
        """`text` with every URL, secret pair and registered secret replaced by `***`."""
        patterns = self._patterns
        has_url = "://" in text
        has_kv = _may_have_kv(text.lower())
        if patterns.empty and not (has_url or has_kv):
            return text
        for form in patterns.long_forms:
            text = text.replace(form, MASK)
        pattern = patterns.by_kind[2 * has_url + has_kv]
        return pattern.sub(lambda m: _replace(patterns.literal, m), text)


def _replace(literal: re.Pattern[str], m: re.Match[str]) -> str:
    """The replacement for one match of the combined regex."""
    kind = m.lastgroup  # "url", "value" (a key-value pair) or "lit"
    if kind == "lit":
        return MASK
    if kind == "url":
        token = m["url"]
        trail = _TRAILING_PUNCT_RE.search(token)
        cut = trail.start() if trail else len(token)
        kept = redact_url(token[:cut]) + token[cut:]
    else:
        value = m["value"]
        quote = value[0] if value[:1] in ("'", '"') and value[-1:] == value[0] else ""
        kept = m["name"] + quote + MASK + quote
    # What stays visible may still hold a registered secret (a password equal to the
    # parameter name, or to the host): hide those too.
    return literal.sub(MASK, kept)
