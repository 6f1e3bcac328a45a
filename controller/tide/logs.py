"""Structured logging on the standard library: one logfmt line per record.

    ts=2026-11-22T15:04:05.123Z level=info logger=tide.loop msg=created site=x count=2

`ts` is UTC with milliseconds, `level` the lowercase level name, `logger`
the logger's name, `msg` the formatted message; the record's fields follow
in the order given, from `extra={"fields": {...}}` or `event(log, msg, **fields)`.
A record with an exception adds `error` (its type and message) and
`traceback`; one with stack_info adds `stack`.

The conventions of the autoheal image's log (images/autoheal/tide_autoheal/log.py):
a value is written bare unless it is empty or holds whitespace, a quote,
`=` or a backslash, and then as a JSON string (quotes and backslashes
escaped, newlines as \\n). In addition, any non-printable character forces
quoting, so a record is always exactly one line; True and False are written
`true` and `false`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

ROOT = "tide"
"""The logger `setup` configures; the modules log to its children (tide.loop, ...)."""

FIXED_KEYS = ("ts", "level", "logger", "msg", "error", "traceback", "stack")
"""Keys the formatter writes itself. A field with one of these names is
written with a leading underscore (`_msg=...`) rather than hide or repeat one."""

_BAD_KEY = re.compile(r"[^A-Za-z0-9_.\-]")


def value(raw: object) -> str:
    """One logfmt value: bare when safe, else a JSON string."""
    text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
    if text and all(c.isprintable() and not c.isspace() and c not in '"=\\' for c in text):
        return text
    return json.dumps(text)


def key(raw: str) -> str:
    """One logfmt key: characters other than letters, digits, `_`, `.` and `-`
    become `_`; an empty key becomes `_`."""
    return _BAD_KEY.sub("_", raw) or "_"


class LogfmtFormatter(logging.Formatter):
    """Formats a record as one logfmt line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        pairs: list[tuple[str, object]] = [
            ("ts", stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for raw_name, raw in fields.items():
                name = key(str(raw_name))
                pairs.append((f"_{name}" if name in FIXED_KEYS else name, raw))
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            detail = str(error)
            pairs.append(
                ("error", f"{type(error).__name__}: {detail}" if detail else type(error).__name__)
            )
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            pairs.append(("traceback", record.exc_text))
        if record.stack_info:
            pairs.append(("stack", record.stack_info))
        return " ".join(f"{name}={value(raw)}" for name, raw in pairs)


class _Handler(logging.StreamHandler[TextIO]):
    """The handler `setup` installs; a later `setup` replaces it."""


def parse_level(level: str) -> int:
    """A level name (any case: debug, INFO, warning, ...) as its number."""
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        names = "debug, info, warning, error, critical"
        raise ValueError(f"unknown log level {level!r}; use one of {names}")
    return number


def setup(level: str = "INFO", stream: TextIO | None = None) -> logging.Logger:
    """Send the "tide" logger's records at `level` and above to `stream`
    (standard error if None) as logfmt lines, and return that logger.

    Calling it again replaces what the previous call installed. The logger
    stops propagating to the root logger, so a root handler set up by
    someone else does not print every line a second time."""
    number = parse_level(level)
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if isinstance(handler, _Handler):
            logger.removeHandler(handler)
            handler.close()
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(LogfmtFormatter())
    logger.addHandler(handler)
    logger.setLevel(number)
    logger.propagate = False
    return logger


def event(
    logger: logging.Logger,
    msg: str,
    /,
    *,
    level: int = logging.INFO,
    exc_info: bool | BaseException = False,
    **fields: object,
) -> None:
    """Log `msg` with `fields` as logfmt pairs: `event(log, "created", site="x", count=2)`.
    `msg` is written as is (no %-formatting); `exc_info` as for `logger.log`."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", msg, exc_info=exc_info, extra={"fields": fields}, stacklevel=2)
