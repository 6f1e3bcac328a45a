"""One line per action on standard output, as key=value pairs (logfmt):

    time=2025-01-31T12:00:00.000Z level=info what=restart container=worker why=unhealthy attempt=2

`what` says what happened, `container` to which, `why` the reason; some
lines add a field or two. A value with a space, a quote or `=` is quoted.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime


def _value(value: object) -> str:
    text = str(value)
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    return json.dumps(text)


def format_line(level: str, what: str, container: str, why: str, **fields: object) -> str:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    pairs: dict[str, object] = {
        "time": stamp,
        "level": level,
        "what": what,
        "container": container,
        "why": why,
    }
    pairs.update(fields)
    return " ".join(f"{key}={_value(value)}" for key, value in pairs.items())


def log(
    what: str,
    container: str = "-",
    why: str = "",
    *,
    level: str = "info",
    **fields: object,
) -> None:
    print(format_line(level, what, container, why, **fields), file=sys.stdout, flush=True)
