"""User-facing error family: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations


class CvtoolError(Exception):
    """A problem the user can fix: bad config key, missing file, malformed annotation, ..."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.line())

    def line(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f" — {self.fix}"
        return text


class ExitRequest(Exception):
    """A clean, deliberate stop (e.g. training interrupted by a signal): print `message`, exit with `code`."""

    def __init__(self, message: str, code: int):
        self.message, self.code = message, code
        super().__init__(message)
