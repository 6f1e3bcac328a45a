"""Structured logs: one logfmt line per record, fields in order, values
quoted when they must be, exceptions as error=, levels filtered."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from tide import logs

LINE = re.compile(
    r"ts=(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) "
    r"level=(?P<level>\w+) logger=(?P<logger>\S+) msg=(?P<rest>.*)"
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """setup() on a fresh buffer; the "tide" logger is put back as it was."""
    logger = logging.getLogger(logs.ROOT)
    level, propagate = logger.level, logger.propagate
    buffer = io.StringIO()
    logs.setup("DEBUG", buffer)
    yield buffer
    for handler in ours(logger):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level)
    logger.propagate = propagate


def ours(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers setup() installed (pytest adds its own to a non-propagating logger)."""
    return [h for h in logger.handlers if isinstance(h.formatter, logs.LogfmtFormatter)]


def lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def record(msg: str = "m", /, **fields: object) -> str:
    """A record of logger tide.test made at 2026-11-22T15:04:05.123456Z, formatted."""
    rec = logging.LogRecord("tide.test", logging.INFO, __file__, 1, msg, None, None)
    rec.created = 1_795_359_845.123456
    if fields:
        rec.fields = fields
    return logs.LogfmtFormatter().format(rec)


def test_a_line_has_ts_level_logger_msg_then_the_fields_in_order() -> None:
    line = record("created", site="x", count=2, ratio=0.5, ok=True, gone=False)
    assert line == (
        "ts=2026-11-22T15:04:05.123Z level=info logger=tide.test msg=created "
        "site=x count=2 ratio=0.5 ok=true gone=false"
    )


def test_extra_fields_and_event_write_the_same_pairs(stream: io.StringIO) -> None:
    log = logging.getLogger("tide.loop")
    log.info("created", extra={"fields": {"site": "x", "count": 2}})
    logs.event(log, "created", site="x", count=2)
    first, second = lines(stream)
    for line in (first, second):
        match = LINE.fullmatch(line)
        assert match is not None, line
        assert match["level"] == "info"
        assert match["logger"] == "tide.loop"
        assert match["rest"] == "created site=x count=2"


def test_values_with_spaces_quotes_equals_or_backslashes_are_quoted_and_escaped() -> None:
    line = record(
        "boot timed out",
        why='said "no"',
        path="C:\\tmp",
        expr="a=b",
        empty="",
        plain="req-1/a_b:c",
    )
    assert line.endswith(
        'msg="boot timed out" why="said \\"no\\"" path="C:\\\\tmp" expr="a=b" empty="" '
        "plain=req-1/a_b:c"
    )


def test_quoted_values_read_back_as_json_and_a_record_is_one_line() -> None:
    nasty = 'two\nlines\tand "quotes" \\ and \x1b[31m colour'
    line = record(nasty, detail=nasty)
    assert "\n" not in line
    assert "\x1b" not in line
    msg = re.search(r' msg=("(?:[^"\\]|\\.)*")', line)
    detail = re.search(r' detail=("(?:[^"\\]|\\.)*")$', line)
    assert msg is not None
    assert detail is not None
    assert json.loads(msg[1]) == nasty
    assert json.loads(detail[1]) == nasty


def test_keys_are_sanitised_and_fields_never_shadow_the_fixed_keys() -> None:
    fields: dict[str, object] = {"bad key": 1, "a=b": 2, "msg": "other", "level": "x", "": 3}
    line = record("m", **fields)
    assert line.endswith("msg=m bad_key=1 a_b=2 _msg=other _level=x _=3")
    assert line.count(" msg=") == 1


def test_percent_arguments_are_formatted_and_event_leaves_percent_signs_alone(
    stream: io.StringIO,
) -> None:
    log = logging.getLogger("tide.loop")
    log.info("site %s: %d created", "x", 2)
    logs.event(log, "100% busy", site="x")
    first, second = lines(stream)
    assert first.endswith('msg="site x: 2 created"')
    assert second.endswith('msg="100% busy" site=x')


def test_an_exception_adds_error_and_a_one_line_traceback(stream: io.StringIO) -> None:
    log = logging.getLogger("tide.loop")
    try:
        raise ValueError("quota exceeded")
    except ValueError:
        log.exception("create failed", extra={"fields": {"site": "x"}})
    try:
        raise KeyError
    except KeyError:
        logs.event(log, "lookup failed", level=logging.WARNING, exc_info=True, key="k")
    first, second = lines(stream)
    assert " level=error " in first
    assert 'msg="create failed" site=x error="ValueError: quota exceeded" traceback="' in first
    traceback = json.loads(first.split(" traceback=", 1)[1])
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.endswith("ValueError: quota exceeded")
    assert " level=warning " in second
    assert 'msg="lookup failed" key=k error=KeyError traceback=' in second


def test_levels_filter_and_names_are_lowercase(stream: io.StringIO) -> None:
    log = logging.getLogger("tide.loop")
    logs.setup("warning", stream)
    log.debug("hidden")
    log.info("hidden")
    log.warning("shown")
    logs.event(log, "hidden too", level=logging.INFO)
    logs.event(log, "bad", level=logging.ERROR, site="x")
    log.critical("worst")
    assert [LINE.fullmatch(line)["level"] for line in lines(stream)] == [  # type: ignore[index]
        "warning",
        "error",
        "critical",
    ]


def test_setup_again_replaces_its_handler_and_stops_propagation(stream: io.StringIO) -> None:
    other = io.StringIO()
    logger = logs.setup("info", other)
    assert logger is logging.getLogger("tide")
    assert len(ours(logger)) == 1
    assert logger.propagate is False
    logging.getLogger("tide.loop").info("once")
    assert stream.getvalue() == ""
    assert len(lines(other)) == 1


def test_setup_defaults_to_standard_error_at_call_time(stream: io.StringIO) -> None:
    logs.setup()
    [handler] = ours(logging.getLogger("tide"))
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr
    assert logging.getLogger("tide").level == logging.INFO


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        logs.setup("verbose")
