"""Logging for every codex-hub process: one line per event, context fields, no secrets.

Pure stdlib ``logging``; modules keep using ``logging.getLogger(__name__)`` and never
import anything from here except to bind context or register a secret.

- ``configure_logging(level, fmt)`` installs one handler on the root logger. ``text``
  (the default) is for people: ``2025-01-02T03:04:05.678Z INFO  hub.router: run queued
  run_id=r-1``; ``json`` is one JSON object per line with ``ts``, ``level``, ``logger``,
  ``msg``, every bound field and every ``extra=`` field, and ``exc`` when there is one.
- ``bound(**fields)`` / ``bind_run(run_id)`` are context managers that put fields on every
  line logged inside them, across ``await`` and into tasks created inside them (the
  fields live in a ``contextvars.ContextVar``, which asyncio copies into new tasks).
  ``bind(**fields)`` binds for the rest of the current task, for a run's own task.
- ``register_secret(value)`` and ``register_settings_secrets(settings)`` add values that
  are then replaced by ``***`` in every message, argument, field and traceback;
  credentials in a well-known format (GitHub ``ghp_``/``github_pat_``, GitLab
  ``glpat-``, AWS ``AKIA...`` and ``aws_secret_access_key=...``, Slack ``xoxb-``/``xapp-``,
  OpenAI ``sk-``, Telegram bot tokens, PEM private keys) are masked even when nobody
  registered them, and so are looser shapes (``Bearer ...``, ``bot123:ABC``) outside
  the prompt and answer. The masking is
  done when a record is made, so every handler sees clean records, not only ours.
  ``redact(text)`` and ``redact_json(value)`` apply it to what leaves by another road:
  the hub masks every frame an executor sends before it is stored, shown or forwarded
  (``clean_json(encoded)`` proves a value already encoded clean, in one search).
- ``quiet_client_errors()`` (part of ``configure_logging``) logs aiohttp's reports of
  malformed client requests at INFO, in one line: they are answered 400, not failures.

A disabled level costs what stdlib logging costs: ``Logger.isEnabledFor`` answers before
any record, field lookup or redaction happens.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import IO, Any, Literal

import orjson

__all__ = [
    "ClientErrorFilter",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "bind",
    "bind_run",
    "bound",
    "clean_json",
    "configure_logging",
    "current_fields",
    "forget_secrets",
    "quiet_client_errors",
    "redact",
    "redact_json",
    "register_secret",
    "register_settings_secrets",
]

MASK = "***"

# --- context fields -----------------------------------------------------------------

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "codex_hub_log_fields", default=_EMPTY
)


def current_fields() -> Mapping[str, Any]:
    """The fields bound in the current context (read-only)."""
    return _fields.get()


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Add ``fields`` to every line logged inside the block, then restore the previous ones."""
    token = _fields.set(MappingProxyType({**_fields.get(), **fields}))
    try:
        yield _fields.get()
    finally:
        _fields.reset(token)


def bind_run(run_id: str) -> contextlib.AbstractContextManager[Mapping[str, Any]]:
    """``bound(run_id=run_id)``: the router wraps a run's path in it."""
    return bound(run_id=run_id)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind ``fields`` for the rest of the current context (a task's whole life).

    Returns the token for ``ContextVar.reset`` should the caller want to undo it; a task
    that simply ends needs no reset, its context dies with it.
    """
    return _fields.set(MappingProxyType({**_fields.get(), **fields}))


# --- secrets ------------------------------------------------------------------------

# Credentials recognisable by their format, masked wherever they appear, codex's answer
# and the user's prompt included: a live key is a leak in any text. Each is specific
# enough (a vendor prefix and a length, or a PEM armour) not to match ordinary words.
_CREDENTIALS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, whole; one cut short (an event truncated) up to the end.
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----"
            r"(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[\s\S]*\Z)"
        ),
        r"-----BEGIN \1PRIVATE KEY-----" + MASK + r"-----END \1PRIVATE KEY-----",
    ),
    # Slack (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, ... and app-level xapp-).
    (re.compile(r"\b(xox[a-z]|xapp)-[A-Za-z0-9-]+"), r"\1-" + MASK),
    # OpenAI and compatible (sk-, sk-proj-).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "sk-" + MASK),
    # GitHub: personal, OAuth, user-to-server, server-to-server, refresh; fine-grained.
    (re.compile(r"\b(gh[pousr])_[A-Za-z0-9]{36,}"), r"\1_" + MASK),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"), "github_pat_" + MASK),
    # GitLab personal, project and group access tokens.
    (re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), "glpat-" + MASK),
    # AWS access key ids (long-lived AKIA, temporary ASIA) ...
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), r"\1" + MASK),
    # ... and secret keys where they are assigned (env, ~/.aws/credentials, JSON).
    (
        re.compile(
            r"""(?i)(aws_secret_access_key["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"""
        ),
        r"\1" + MASK,
    ),
    # Telegram bot tokens: the bot's id, a colon, 35 characters.
    (re.compile(r"(?<![A-Za-z0-9_])\d{5,}:[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"), MASK),
)

# Looser shapes, masked in logs and codex's events, not in the prompt or the answer
# (someone's text, where a word like "Bearer" is prose): httpx logs Telegram's URLs
# with the token in the path, and a header may carry any key.
_LOOSE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bbot\d+:[A-Za-z0-9_-]+"), "bot" + MASK),
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), MASK),
    # Case-sensitive and 8+ characters: the header form, not prose about "bearer tokens".
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}"), "Bearer " + MASK),
)

# Hints: looser forms of the shapes above (no word boundaries), so that one search
# proves most text clean without running every substitution. Each matches wherever its
# shape does, in text and in that text's JSON encoding alike (the parts they match never
# contain a character JSON escapes). A hint that matches only sends the text through the
# full masking, so being loose costs time, never correctness.
#
# Each starts with a fixed character, so that all of them (and the secrets) are one
# alternation, which ``re`` tries only where one of those characters is: a hint that
# starts with a class (``\d``, a letter in any case) is tried at every character, twice
# as slow on the frames a run sends. So the AWS hint starts at the ``_`` its shape
# always holds, and the bot-token ones at the colon, the digits before it checked
# looking back.
#
# Each is a text form and a form for JSON bytes (UTF-8). In text, ``\d`` is any digit and
# a letter in any case takes the few non-ASCII letters that fold to it (long s to s, the
# Kelvin sign to k), as in the masking; in bytes, re knows only ASCII, so the JSON form
# takes any non-ASCII byte for a digit, and those letters' UTF-8 bytes, spelled out.
_DIGIT_BYTES = rb"[0-9\x80-\xff]"


def _hint(text: str, raw: bytes | None = None) -> tuple[str, bytes]:
    return text, text.encode() if raw is None else raw


_CREDENTIAL_HINTS = (
    _hint(r"PRIVATE KEY-----"),
    _hint(r"xox[a-z]-"),
    _hint(r"xapp-"),
    _hint(r"sk-[A-Za-z0-9_-]{16,}"),
    _hint(r"gh[pousr]_[A-Za-z0-9]{36}"),
    _hint(r"github_pat_"),
    _hint(r"glpat-"),
    _hint(r"A[KS]IA[0-9A-Z]{16}"),
    # aws_secret_access_key in any case.
    _hint(
        r"_(?i:secret_access_key)",
        rb"_(?i:(?:s|\xc5\xbf)ecret_acce(?:s|\xc5\xbf){2}_(?:k|\xe2\x84\xaa)ey)",
    ),
    # \d{5,}:[A-Za-z0-9_-]{35}
    _hint(r":(?<=\d{5}:)[A-Za-z0-9_-]{35}", rb":(?<=" + _DIGIT_BYTES + rb"{5}:)[A-Za-z0-9_-]{35}"),
)
_LOOSE_HINTS = (
    _hint(r"bot\d+:", rb"bot" + _DIGIT_BYTES + rb"+:"),
    # \d{5,}:[A-Za-z0-9_-]{30,}
    _hint(r":(?<=\d{5}:)[A-Za-z0-9_-]{30}", rb":(?<=" + _DIGIT_BYTES + rb"{5}:)[A-Za-z0-9_-]{30}"),
    _hint(r"Bearer"),
)

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


class _Hints:
    """Compiled hints for the secrets registered now: text, and JSON bytes from orjson.

    Each set of hints is one pattern: the secrets and the hints in one alternation,
    which ``re`` scans only at the characters they can start with (see the hints).
    """

    def __init__(self, secrets: set[str]) -> None:
        ordered = sorted(secrets, key=len, reverse=True)
        text = [re.escape(s) for s in ordered]
        # orjson writes non-ASCII as UTF-8 and escapes only '"', '\\' and control
        # characters: a secret is in the JSON either as it is or in that escaped form.
        raw: list[bytes] = []
        for secret in ordered:
            for form in {secret.encode(), orjson.dumps(secret)[1:-1]}:
                raw.append(re.escape(form))
        credentials = _CREDENTIAL_HINTS
        shapes = (*_CREDENTIAL_HINTS, *_LOOSE_HINTS)
        self.text_secrets = (re.compile("|".join([*text, *(t for t, _ in credentials)])),)
        self.text_all = (re.compile("|".join([*text, *(t for t, _ in shapes)])),)
        self.json_secrets = (re.compile(b"|".join([*raw, *(r for _, r in credentials)])),)
        self.json_all = (re.compile(b"|".join([*raw, *(r for _, r in shapes)])),)


def _hinted(patterns: tuple[re.Pattern[Any], ...], data: str | bytes) -> bool:
    """True when any of ``patterns`` matches somewhere in ``data``."""
    for pattern in patterns:  # a loop, not any(): no generator on every event
        if pattern.search(data) is not None:
            return True
    return False


_hints = _Hints(set())


def register_secret(value: object) -> None:
    """Mask ``value`` (a str or a pydantic ``SecretStr``) in everything logged from now on.

    Values of 8 characters or more are masked wherever they appear, shorter ones where
    they stand alone (not inside a longer word). Empty values are ignored.
    """
    global _secrets_re, _hints
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if not isinstance(value, str) or not value.strip():
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_re = re.compile("|".join(_secret_pattern(s) for s in ordered))
        _hints = _Hints(_secrets)


# Below this length a secret is masked only where it stands alone: a (weak) token "t"
# must not turn "listening on http" into "lis***ening on h******p".
_SHORT_SECRET = 8


def _secret_pattern(secret: str) -> str:
    escaped = re.escape(secret)
    if len(secret) >= _SHORT_SECRET:
        return escaped
    return rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"


def register_settings_secrets(*settings: object) -> None:
    """Register every secret a settings object holds.

    That is every ``SecretStr`` field, plus string and list fields whose env name says
    they are credentials (``HUB_API_KEYS`` is a plain list because it is compared, not
    sent anywhere).
    """
    for model in settings:
        fields = getattr(type(model), "model_fields", {})
        for name, info in fields.items():
            value = getattr(model, name, None)
            env_name = (info.alias or name).upper()
            if hasattr(value, "get_secret_value"):
                register_secret(value)
            elif _looks_like_credential(env_name):
                values = value if isinstance(value, list | tuple | set) else [value]
                for item in values:
                    register_secret(item)


def _looks_like_credential(env_name: str) -> bool:
    if env_name.endswith(("_PATH", "_FILE", "_HOSTS")):
        return False
    words = ("TOKEN", "API_KEY", "OPERATOR_KEY", "SECRET", "PASSWORD")
    return any(word in env_name for word in words)


def forget_secrets() -> None:
    """Drop every registered secret (tests use it to start clean)."""
    global _secrets_re, _hints
    with _secrets_lock:
        _secrets.clear()
        _secrets_re = None
        _hints = _Hints(set())


def redact(text: str, *, shapes: bool = True) -> str:
    """``text`` with registered secrets and credentials replaced by ``***``.

    Credentials in a well-known format (GitHub, GitLab, AWS, Slack, OpenAI, Telegram, PEM
    private keys) are always masked. ``shapes=False`` leaves the looser shapes (a
    ``Bearer`` word, a ``bot123:`` prefix) alone: for text that is someone's content
    (codex's answer, the prompt), where such a word is prose but a key is still a key.
    """
    hints = _hints
    hint = hints.text_all if shapes else hints.text_secrets
    if not _hinted(hint, text):
        return text  # the common case: a few searches, no copy
    secrets_re = _secrets_re
    if secrets_re is not None:
        text = secrets_re.sub(MASK, text)
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    if shapes:
        for pattern, replacement in _LOOSE:
            text = pattern.sub(replacement, text)
    return text


def redact_json(value: Any, *, shapes: bool = True) -> Any:
    """A JSON-like value with :func:`redact` applied to every string in it, keys too.

    A value with nothing to mask comes back as it is (the same object); otherwise the
    result is a copy, with lists for tuples.
    """
    if isinstance(value, str):
        return redact(value, shapes=shapes)
    if isinstance(value, dict | list | tuple):
        try:
            encoded = orjson.dumps(value)
        except TypeError:  # not plain JSON (a key that is not a str, a huge int): walk it
            pass
        else:
            if clean_json(encoded, shapes=shapes):
                return value
    return _redact_walk(value, shapes)


def clean_json(encoded: bytes, *, shapes: bool = True) -> bool:
    """True when the value that ``encoded`` is (as ``orjson.dumps`` wrote it) holds
    nothing :func:`redact_json` would mask: one search over the bytes.

    False may be a false alarm (the search is looser than the masking): mask the value
    with :func:`redact_json` then. For a caller that encodes a value anyway (a frame it
    sends) and so scans that encoding instead of encoding it twice.
    """
    hints = _hints
    return not _hinted(hints.json_all if shapes else hints.json_secrets, encoded)


def _redact_walk(value: Any, shapes: bool) -> Any:
    if isinstance(value, str):
        return redact(value, shapes=shapes)
    if isinstance(value, dict):
        return {_redact_walk(k, shapes): _redact_walk(v, shapes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_walk(v, shapes) for v in value]
    return value


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


_FIELDS_ATTR = "_log_fields"
_SCRUBBED_ATTR = "_log_scrubbed"
_tb_formatter = logging.Formatter()


def _scrub(record: logging.LogRecord) -> None:
    """Render the record's message and traceback now, masked, in place.

    Rendering early is what makes masking reach every handler, not only ours: the
    record a handler formats is already clean, and a handler cannot re-render the raw
    arguments because they are gone.
    """
    try:
        message = record.getMessage()
    except Exception:  # a bad %-format must not turn into an exception at the caller
        message = f"{record.msg!r} % {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = _tb_formatter.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    fields = getattr(record, _FIELDS_ATTR, None)
    if fields:
        setattr(record, _FIELDS_ATTR, {k: _redact_value(v) for k, v in fields.items()})
    setattr(record, _SCRUBBED_ATTR, True)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any formatter of its handler sees it.

    Records made after ``configure_logging`` are already clean except for their
    ``extra=`` fields, which stdlib logging adds after the record factory has run; this
    filter masks those, and does the whole job for records made by another factory.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, _SCRUBBED_ATTR, False):
            _scrub(record)
        for key in _extra_keys(record):
            setattr(record, key, _redact_value(getattr(record, key)))
        return True


# --- formatting ---------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", _FIELDS_ATTR, _SCRUBBED_ATTR}
)


def _extra_keys(record: logging.LogRecord) -> list[str]:
    return [key for key in record.__dict__ if key not in _STANDARD_ATTRS]


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """Bound fields, then ``extra=`` fields (a per-call value wins over the context)."""
    out = dict(getattr(record, _FIELDS_ATTR, None) or {})
    for key in _extra_keys(record):
        out[key] = getattr(record, key)
    return out


def _timestamp(record: logging.LogRecord) -> str:
    stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _context(record).items():
            # A field may not impersonate the envelope; keep it under another name.
            doc[f"field_{key}" if key in doc else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, ensure_ascii=False, default=str)


_BARE = re.compile(r"[^\s\"'=\\]+")


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message key=value ...`` on one line.

    Newlines inside a message are escaped so one event stays one line for grep; a
    traceback follows on indented lines because people read those.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")
        line = f"{_timestamp(record)} {record.levelname:<5} {record.name}: {message}"
        context = _context(record)
        if context:
            line += " " + " ".join(f"{key}={_logfmt(value)}" for key, value in context.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        extra = record.exc_text or ""
        if record.stack_info:
            extra = f"{extra}\n{record.stack_info}" if extra else record.stack_info
        if extra:
            line += "\n" + "\n".join("    " + part for part in extra.splitlines())
        return line


# --- client mistakes that aiohttp reports as server errors ---------------------------


class ClientErrorFilter(logging.Filter):
    """Logs aiohttp's reports of malformed requests as one INFO line, not an ERROR.

    aiohttp answers a request it cannot parse with 400 itself (the hub answers 400 to a
    body it cannot decode), then logs it on ``aiohttp.server`` at ERROR with a traceback.
    Those are the client's mistakes: anyone who reaches the port could fill the log with
    them, and an ERROR should mean the hub needs a person.
    """

    def __init__(self, client_errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.client_errors = client_errors

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and isinstance(exc, self.client_errors):
            detail = " ".join(str(exc).split())[:300]
            record.msg = redact(f"{record.getMessage()}: {type(exc).__name__}: {detail}")
            record.args = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorFilter` on ``aiohttp.server``; idempotent."""
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.web_protocol import RequestPayloadError

    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter((HttpProcessingError, RequestPayloadError)))


# --- set-up -------------------------------------------------------------------------

_MARK = "_codex_hub_logs"
_factory_lock = threading.Lock()

# Libraries that log every HTTP request at INFO: Telegram's long polling alone would
# write a line every few seconds. They speak again at DEBUG.
_CHATTY = ("httpx", "httpcore")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _install_record_factory() -> None:
    """Make every record carry the bound fields and arrive already masked.

    The factory runs in the caller's context (so it sees the right fields) and only
    after the level check has passed (so disabled levels pay nothing). Installed when
    the current factory is not ours, so a test that restores the stdlib one gets it back.
    """
    with _factory_lock:
        previous = logging.getLogRecordFactory()
        if getattr(previous, _MARK, False):
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            fields = _fields.get()
            if fields:
                setattr(record, _FIELDS_ATTR, dict(fields))
            try:
                _scrub(record)
            except Exception:  # never let logging raise at the caller, never leak instead
                record.msg, record.args = f"unloggable record at {record.pathname}", None
                record.exc_info = record.exc_text = record.stack_info = None
                setattr(record, _SCRUBBED_ATTR, True)
            return record

        setattr(factory, _MARK, True)
        logging.setLogRecordFactory(factory)


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name.isdigit():
        return int(name)
    value = logging.getLevelNamesMapping().get(name)
    if value is None:
        raise ValueError(
            f"LOG_LEVEL={level!r} is not a level; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return value


def configure_logging(
    level: str | int = "INFO",
    fmt: Literal["text", "json"] = "text",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every logger's records to one handler on stderr (or ``stream``).

    Safe to call again: the handler installed by an earlier call is replaced, handlers
    installed by others (pytest's capture) are left alone. Returns the new handler.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT={fmt!r} is not a format; use text or json")
    numeric = _parse_level(level)
    _install_record_factory()
    quiet_client_errors()

    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    quiet = logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING
    for name in _CHATTY:
        logging.getLogger(name).setLevel(quiet)
    return handler
