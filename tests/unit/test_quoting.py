"""Text from a file or a request, in a message: one printable line, quoted where it could mislead
(`ucloud_common.quoting`), in every daemon's log, the API's errors and the CLI's output."""

from __future__ import annotations

import logging

import pytest

from ucloud_api.errors import APIError
from ucloud_cli.output import error, field, show, table
from ucloud_common.logs import PrintableFormatter
from ucloud_common.quoting import printable, quote

HOSTILE = "x\n2026-01-01T00:00:00.000Z INFO ucloud: all good\x1b[2J\x1b[H\u202etxt.exe"


def test_quote_leaves_plain_names_and_escapes_the_rest() -> None:
    assert quote("alice/disk-1.qcow2") == "alice/disk-1.qcow2"
    assert quote("my disk") == "'my disk'"
    assert quote("it's") == "'it\\'s'"
    assert quote(HOSTILE) == ("'x\\n2026-01-01T00:00:00.000Z INFO ucloud: all good\\x1b[2J\\x1b[H\\u202etxt.exe'")
    assert quote("a" * 300) == "a" * 200 + "…"
    assert quote("") == "''"


def test_printable_escapes_only_what_is_not_printable() -> None:
    assert printable("naïve café ✓") == "naïve café ✓"
    assert printable(HOSTILE).isprintable() and printable("a\tb\rc\0") == "a\\tb\\rc\\x00"


def test_every_log_line_is_one_printable_line() -> None:
    record = logging.LogRecord("ucloud", logging.WARNING, __file__, 1, "refused %s", (HOSTILE,), None)
    line = PrintableFormatter("%(levelname)s %(message)s").format(record)
    assert line.isprintable() and line.startswith("WARNING refused x\\n2026")


def test_api_errors_hold_no_control_characters() -> None:
    assert APIError(404, "not_found", "host a\nb does not exist").body()["error"]["message"] == (
        "host a\\nb does not exist")


def test_the_cli_prints_no_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"name": "evil", "error": HOSTILE}]
    lines = table(rows, [("NAME", field("name")), ("ERROR", field("error"))]).splitlines()
    assert len(lines) == 2 and all(line.isprintable() for line in lines)
    show(rows[0], "table")
    error(HOSTILE)
    captured = capsys.readouterr()
    assert all(line.isprintable() for line in captured.out.splitlines() + captured.err.splitlines())
    assert captured.err.count("\n") == 1
