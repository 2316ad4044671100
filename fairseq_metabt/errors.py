"""The plugin's user errors: one type, one line, exit status 2.

A :class:`UserError` is a mistake in what the user passed (a flag value, a
file, a corpus), never a bug.  Every CLI of the plugin and ``fairseq-train``
with ``--user-dir`` report it as the single line::

    fairseq-metabt: error: <what> (<fix>)

on stderr and exit with status 2 (argparse's status for usage errors).  Any
other exception keeps its full traceback.  ``FAIRSEQ_METABT_DEBUG=1`` shows
the traceback of user errors too.

Two mechanisms, one format:

* the plugin's scripts wrap their ``main`` in :func:`cli` (works in-process,
  e.g. in tests: it raises ``SystemExit(2)``);
* ``fairseq-train``/``fairseq-generate`` own their ``main``; importing the
  plugin installs :func:`install_excepthook`, which formats an uncaught
  :class:`UserError` and exits with status 2 after running the ``atexit``
  handlers (the interpreter's own exit status for an uncaught exception is 1).
"""
from __future__ import annotations

import atexit
import functools
import os
import sys
from typing import Callable, Optional, TextIO, TypeVar

PREFIX = "fairseq-metabt: error: "
EXIT_STATUS = 2
DEBUG_VARIABLE = "FAIRSEQ_METABT_DEBUG"

F = TypeVar("F", bound=Callable)


class UserError(ValueError):
    """A bad input from the user.  ``what`` names the problem, ``fix`` says what to do.

    A ``ValueError`` so that code (and tests) catching the plugin's former
    ``ValueError`` raises still catch it.
    """

    def __init__(self, what: str, fix: Optional[str] = None):
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what} ({fix})")


class UserFileError(UserError, FileNotFoundError):
    """A file the user named is missing or unreadable (also a ``FileNotFoundError``)."""


def debug() -> bool:
    """True when ``FAIRSEQ_METABT_DEBUG`` asks for tracebacks of user errors."""
    return os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0", "false", "no")


def format_error(error: BaseException) -> str:
    """``fairseq-metabt: error: <message>`` on one line (newlines and runs of spaces collapsed)."""
    return PREFIX + " ".join(str(error).split())


def report(error: BaseException, stream: Optional[TextIO] = None) -> int:
    """Print ``error`` as the one-line message; return the exit status to use."""
    stream = stream or sys.stderr
    stream.write(format_error(error) + "\n")
    stream.flush()
    return EXIT_STATUS


def cli(main: F) -> F:
    """Decorate a CLI ``main``: a :class:`UserError` becomes the one line and ``SystemExit(2)``."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if debug():
                raise
            raise SystemExit(report(e)) from None

    return wrapper  # type: ignore[return-value]


_previous_hook = None


def _excepthook(exc_type, exc, tb) -> None:
    # only the exception itself counts: a real bug raised while handling a user error stays a bug
    if not isinstance(exc, UserError) or debug():
        (_previous_hook or sys.__excepthook__)(exc_type, exc, tb)
        return
    try:
        sys.stdout.flush()
    except Exception:  # a closed stdout must not hide the message
        pass
    # the process's own stderr: torch.distributed's excepthook (installed by init_process_group around this
    # one) captures sys.stderr in a buffer it prints only when we return, and we never return (os._exit)
    report(exc, sys.__stderr__ or sys.stderr)
    # sys.exit() is ignored inside an excepthook: run the exit handlers ourselves, then leave with 2.
    try:
        atexit._run_exitfuncs()
    finally:
        os._exit(EXIT_STATUS)


def install_excepthook() -> None:
    """Report uncaught :class:`UserError` s as one line with exit status 2 (idempotent)."""
    global _previous_hook
    if sys.excepthook is _excepthook:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = _excepthook
