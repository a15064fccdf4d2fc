"""One quoting function per generated format: xl configs, GRUB scripts, POSIX shell. Every value a recipe puts into
a generated file goes through one of these, so a quote in a value stays inside its string. A control character
(a newline above all) would start a line of its own in every one of these formats: the recipe validator refuses
them, and these refuse them again, should a value reach them another way."""

from __future__ import annotations

import re
import shlex

from hurdxen.core.errors import HurdxenError, printable

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_GRUB_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./()-]+$")

XlValue = str | int | list["XlValue"]


def _plain(value: str, what: str) -> str:
    if CONTROL.search(value):
        raise HurdxenError(
            f"{what}: {printable(repr(value), 80)} holds a control character",
            hint="generated files take one line of printable text per value: fix the recipe",
        )
    return value


def xl_value(v: XlValue) -> str:
    """A value in xl's config syntax (libxlu): a number, a [list] or a quoted string — single quotes when the
    string has none, else double quotes with `\\` and `"` escaped."""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(xl_value(x) for x in v) + "]"
    _plain(v, "xl config value")
    if "'" not in v:
        return f"'{v}'"
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def grub_word(word: str) -> str:
    """One word for GRUB's script parser, reaching the command unchanged (no `$` expansion, no word split)."""
    _plain(word, "grub.cfg word")
    if _GRUB_SAFE.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def grub_text(text: str) -> str:
    """Text inside a GRUB double-quoted string: `\\`, `"` and `$` escaped (unchanged when it has none)."""
    _plain(text, "grub.cfg text")
    return re.sub(r'([\\"$])', r"\\\1", text)


def shell_word(word: str) -> str:
    """One word for a POSIX shell (a step script's command line)."""
    return shlex.quote(_plain(word, "shell word"))
