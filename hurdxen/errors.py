"""The project's one error type: a user-facing message plus a hint, shown without a traceback."""

from __future__ import annotations

from typing import NoReturn


class HurdxenError(Exception):
    """A failure the user can act on: `message` says what and where, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        line = f"error: {self.message}"
        if self.hint:
            line += f" (hint: {self.hint})"
        return line

    def __str__(self) -> str:
        return self.render()


def die(message: str, hint: str | None = None) -> NoReturn:
    raise HurdxenError(message, hint=hint)
