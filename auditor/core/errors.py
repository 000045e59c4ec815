"""The one exception tree of auditor, and the exit code of each branch.

::

    AuditorError                      exit 2 unless a subclass says otherwise
    ├── InputError                    2  bad argument, file, policy or lockfile
    │   ├── RunNotFound               2  no run has this id or prefix
    │   ├── AmbiguousRunId            2  the prefix matches several runs
    │   ├── InvalidRunId              2  not a well-formed run id (paths, NUL, ...)
    │   ├── CorruptRecord             2  a stored record fails to parse or to hash
    │   └── LockfileError             2  a malformed, unhashed or loose lockfile
    ├── StoreError                    2  the store is missing, old, unsafe, or its URL is malformed
    │   ├── RunConflict               2  push/pull: the other store has another record
    │   └── StoreUnavailable          3  the store's database did not answer, refused the
    │                                    credentials, or failed during an operation
    ├── IntegrityError                3  a stored object does not hash to its name
    ├── NotReproduced                 1  raised only by gates: a requirement failed
    └── CouldNotVerify                3  the environment could not be rebuilt or rerun
        ├── EngineUnavailable         3  no docker engine answers
        └── BuildFailed               3  the image or venv could not be built

Every message says what happened, where, and what to do next. ``cli.py`` holds the
single ``except AuditorError`` that prints ``error: <message>`` on one line and exits
with ``exit_code``; tracebacks only with ``--debug``.
"""

from __future__ import annotations


class AuditorError(Exception):
    """Base of every error a user can meet; ``str()`` is the one-line message."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        text = " ".join(self.message.split())  # one line, whatever the parts contained
        return f"{text} ({self.hint})" if self.hint else text


class InputError(AuditorError):
    """A bad argument or input file."""


class RunNotFound(InputError):
    """No run matches the id or prefix."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run matches {run_id!r}", hint="see `audit list`")


class AmbiguousRunId(InputError):
    """A prefix matches more than one run."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        self.run_id = prefix
        shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
        super().__init__(f"run id prefix {prefix!r} is ambiguous: {shown}",
                         hint="give more characters")


class InvalidRunId(InputError):
    """A run id that is not of our alphabet (e.g. a path)."""


class CorruptRecord(InputError):
    """A stored record that cannot be parsed or no longer matches its digest."""


class LockfileError(InputError):
    """A lockfile that is malformed, unhashed or not fully pinned."""


class StoreError(AuditorError):
    """The store cannot be opened or used safely."""


class RunConflict(StoreError):
    """Push/pull: the other store holds a run of this id with a different record digest."""


class StoreUnavailable(StoreError):
    """The store's database could not be reached or used (server down, wrong password,
    a driver error mid-operation): nothing could be read or verified."""

    exit_code = 3


class IntegrityError(AuditorError):
    """Stored bytes do not match their recorded sha256: tampering or corruption."""

    exit_code = 3


class NotReproduced(AuditorError):
    """A release gate requirement failed."""

    exit_code = 1


class CouldNotVerify(AuditorError):
    """The environment could not be rebuilt or rerun."""

    exit_code = 3


class EngineUnavailable(CouldNotVerify):
    """No docker engine answers."""


class BuildFailed(CouldNotVerify):
    """An image or virtualenv build failed."""
