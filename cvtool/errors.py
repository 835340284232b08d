"""User-facing error family: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

import json
import sys

# A CvtoolError raised in a DataLoader worker carries its fields in a note of its traceback text: torch re-raises
# it in the main process as `CvtoolError(text)`, and __init__ reads them back from that text.
_FIELDS_NOTE = "cvtool error fields: "
_TORCH_WRAPPED = "\nOriginal Traceback (most recent call last):"


class CvtoolError(Exception):
    """A problem the user can fix: bad config key, missing file, malformed annotation, ..."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        wrapped = what if where is None and fix is None and _TORCH_WRAPPED in what else None
        if wrapped:
            what, where, fix = _fields_of(wrapped, type(self))
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.line())
        if wrapped:  # the worker's traceback, shown with --debug
            self.__notes__ = [f"raised in a DataLoader worker: {wrapped}"]
        elif _in_dataloader_worker():
            self.__notes__ = [_FIELDS_NOTE + json.dumps([what, where, fix])]

    def line(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f" — {self.fix}"
        return text


def _in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


def _fields_of(wrapped: str, cls: type) -> tuple[str, str | None, str | None]:
    """(what, where, fix) of an error torch re-raises from a worker, from the note its traceback text ends with
    (without one, e.g. on Python 3.10: its message line as `what`)."""
    _, note, fields = wrapped.rpartition(_FIELDS_NOTE)
    if note:
        what, where, fix = json.loads(fields.splitlines()[0])
        return what, where, fix
    return wrapped.rpartition(f"{cls.__module__}.{cls.__qualname__}: ")[2].strip(), None, None


class ExitRequest(Exception):
    """A clean, deliberate stop (e.g. training interrupted by a signal): print `message`, exit with `code`."""

    def __init__(self, message: str, code: int):
        self.message, self.code = message, code
        super().__init__(message)
