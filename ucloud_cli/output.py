"""Printing: aligned tables for people, the API's own JSON (`-o json`) for scripts.

Every text a table or a listing shows went through `printable`: an image's `error` may quote a name
taken from a user's file, and must not move an admin's cursor or forge a line (JSON escapes by itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from ucloud_common.quoting import printable

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name, "")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[h for h, _ in columns]] + [[_text(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):  # a NIC, say: network=… mac=… ipv6=…
        return " ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ("; " if any(isinstance(v, dict) for v in value) else ",").join(_text(v) for v in value)
    return printable(str(value))


def error(message: str) -> None:
    """The one stderr line of a refused or failed command (the API's message may quote a user's text)."""
    click.echo(f"Error: {printable(message)}", err=True)


def show(data: Any, fmt: str, columns: Sequence[Column] | None = None) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif isinstance(data, list):
        click.echo(table(data, columns or []))
    else:
        width = max(len(printable(k)) for k in data) if data else 0
        for key, value in data.items():
            if key == "events":
                continue
            click.echo(f"{printable(key).ljust(width)}  {_text(value)}")
