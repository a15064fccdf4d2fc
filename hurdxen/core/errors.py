"""The project's one error type: a user-facing message plus a hint, shown without a traceback."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator

MAX_SHOWN = 200  # characters of one echoed value (a recipe string, a member name)
MAX_LINE = 8000  # characters of a rendered error message (a step failure quotes its log's last lines)
MAX_HINT = 600  # characters of a hint: our own words, with key names (a list of allowed keys must not be cut)
# C0/C1 controls, line/paragraph separators and bidi overrides (which reorder what a terminal shows)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*):[^/@\s]*@")


def escape_controls(text: str) -> str:
    """Control characters (ESC, newline, CR, …) as visible escapes: input can never forge or erase output lines."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def redact_urls(text: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`."""
    return _URL_USERINFO.sub(r"\1:***@", text)


def printable(value: object, limit: int = MAX_SHOWN) -> str:
    """A value from outside, safe to print: controls escaped, credentials redacted, cut to `limit` characters."""
    text = escape_controls(redact_urls(str(value)))
    if len(text) > limit:
        text = f"{text[:limit]}…[{len(text) - limit} more characters]"
    return text


def redact_url(url: str) -> str:
    """A URL with its password hidden (for messages and logs)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return redact_urls(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


def _message_text(message: str) -> str:
    """Escaped like `printable`, except the newlines of an indented quote block (a failed step's log tail: each
    quoted line starts with four spaces, so nothing from input can start a line of its own)."""
    pieces = message.split("\n")
    out = printable(pieces[0], MAX_LINE)
    for i, piece in enumerate(pieces[1:], 1):
        if piece.startswith("    ") or (i == len(pieces) - 1 and piece == ""):
            out += "\n" + printable(piece, 400)
        else:
            out += "\\n" + printable(piece, MAX_LINE)
    return out[: MAX_LINE * 2]


class HurdxenError(Exception):
    """A failure the user can act on: `message` says what and where, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        # Messages quote input (names, recipe values, URLs): one line, no control bytes, no passwords, bounded.
        line = f"error: {_message_text(self.message)}"
        if self.hint:
            line += f" (hint: {printable(self.hint, MAX_HINT)})"
        return line

    def __str__(self) -> str:
        return self.render()


@contextlib.contextmanager
def labelled(where: str) -> Iterator[None]:
    """A HurdxenError raised inside starts with `where` (the task, or the image), its hint kept: the one place that
    names what failed when the code below it cannot know."""
    try:
        yield
    except HurdxenError as e:
        raise HurdxenError(f"{where}: {e.message}", hint=e.hint) from e
