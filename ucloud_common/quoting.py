"""Text from a file or a request, made safe to put into a message, a log line or a terminal.

Everything a user controls (a file's name, a qcow2's backing-file name, a request's field, a line of
qemu-img's own complaint about a file) may hold a newline (a forged log line), terminal escape
sequences (a rewritten admin's screen) or bidirectional overrides (text that reads backwards).
`printable` escapes every such character, Python-style (`\\n`, `\\x1b`, `\\u202e`), so what is shown
is exactly what was there, on one line, and changes nothing on the screen; `quote` also marks where
the value begins and ends, and cuts a long one.

Standard library only: the `ucloud` CLI, which otherwise imports nothing of ucloud_common, prints
what the API sends with `printable` (an import-linter contract allows exactly this module).
"""

from __future__ import annotations

import re

# A value made only of these needs no quotes around it: a name, a path, a number (as shlex.quote).
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
QUOTE_LIMIT = 200


def printable(text: str) -> str:
    """`text` with every character that is not printable (str.isprintable: controls, format
    characters such as bidi overrides, separators other than the space) written as its escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` as it goes into a sentence: as it is when it is a plain name or path, else in single
    quotes with backslashes, quotes and unprintable characters escaped; cut after `limit` characters."""
    cut = text[:limit]
    more = "…" if len(text) > limit else ""
    if _PLAIN.fullmatch(cut):
        return cut + more
    return "'" + printable(cut.replace("\\", "\\\\").replace("'", "\\'")) + "'" + more
