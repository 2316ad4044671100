"""How the plugin writes files: atomically, and with a record of what it wrote.

* :func:`atomic_write` / :func:`atomic_path`: every file the plugin writes
  itself (``prepare.json``, ``--json`` results, exported checkpoints, logs it
  rewrites, ...) goes to a temporary file in the same directory and is moved
  over the destination with ``os.replace``, so a crash leaves the old file or
  the new one, never a torn one.
* :class:`OutputRecord`: a tool that may later be run again with ``--force``
  lists the files it writes in ``DIR/.fairseq-metabt-outputs.json`` *before*
  writing them; ``--force`` deletes exactly those and nothing else, so a
  user's own files in the directory are never lost.
* :func:`open_text`: raw text is read with ``newline="\\n"`` everywhere, so a
  stray ``\\r`` never splits a line in one tool and not in another.
* :func:`check_output`: the one gate every writer passes.  A tool never
  writes to one of its own inputs; it writes *through* a symbolic link (the
  link stays, its target gets the new content); it refuses a directory, a
  device node, a FIFO or a socket, a read-only file, and an existing file
  where the output must be new.  :func:`disk_errors` turns a full disk
  (``ENOSPC``/``EDQUOT``) or a permission error while writing into a
  :class:`UserError` that names the disk or the file, not a flag.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from typing import IO, Iterable, Iterator, List, Optional, Sequence, Tuple

from fairseq_metabt.errors import UserError

RECORD_NAME = ".fairseq-metabt-outputs.json"


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

Inputs = Sequence[Tuple[str, Optional[str]]]  # (flag or description, path) of a tool's inputs


def disk_full_error(path: str, error: OSError) -> UserError:
    """The one message for a full disk (or exhausted quota) while writing ``path``."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    return UserError(f"no space left on the disk holding {directory} while writing {path} "
                     f"({os.strerror(error.errno)})",
                     "free space on that disk (or raise the quota) and run the command again, or write to "
                     "another disk")


@contextlib.contextmanager
def disk_errors(path: str) -> Iterator[None]:
    """Report a full disk or a refused write under this block as a :class:`UserError` naming ``path``."""
    try:
        yield
    except UserError:
        raise
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise disk_full_error(getattr(e, "filename", None) or path, e) from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            target = getattr(e, "filename", None) or path
            raise UserError(f"{target}: {os.strerror(e.errno)} (while writing {path})",
                            "check the permissions of the file and its directory, or choose another path") from e
        raise


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, flag: str = "output", inputs: Inputs = (), must_be_new: bool = False) -> str:
    """Where ``path`` may be written; refuse what must never be written.  Returns the path to replace.

    * ``path`` (or what it links to) must not be one of ``inputs`` ((flag, path) pairs): a tool never
      overwrites what it reads (``evaluate.py --hyps REF``, ``--output CKPT``);
    * a symbolic link is written through: the returned path is its target, so the link stays;
    * an existing directory, device node, FIFO or socket is refused (``os.replace`` would replace the
      node itself, and a device such as ``/dev/null`` is not a file to keep results in);
    * an existing read-only file is refused, and with ``must_be_new`` any existing file;
    * the directory it goes into must be a directory (created when missing) that we may write to.
    """
    if not path:
        raise UserError(f"{flag} is an empty path", f"pass a file name to {flag}")
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    try:
        st = os.stat(path)  # what the path leads to, links followed (also /proc's fd links)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # a new name (or a link to one): created at the link's target; a bad parent is named below
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be written ({os.strerror(e.errno)})", "choose another path") from e
    for in_flag, in_path in inputs:
        if st is not None and in_path and os.path.exists(in_path) and _same_file(path, in_path):
            raise UserError(f"{flag} {path} is {in_flag} {in_path}, an input of this command: writing it "
                            "would destroy what is being read", f"choose another file for {flag}")
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{flag} {path} is a directory", f"pass a file name to {flag}, e.g. {path}/out")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a device node")
            raise UserError(f"{flag} {path} is {kind}, not a regular file; refusing to replace it",
                            f"pass a regular file or a new name to {flag}")
    for where in (os.path.abspath(path), target):  # e.g. /dev/stdout redirected to a file
        top = "/" + where.split(os.sep)[1] if where.count(os.sep) > 1 else where
        if top in ("/dev", "/proc", "/sys"):
            raise UserError(f"{flag} {path} lies in {top}, which holds devices and process files, not results",
                            f"pass a regular file to {flag}")
    if st is not None:
        if not (os.path.lexists(target) and _same_file(path, target)):  # e.g. /dev/stdout redirected
            raise UserError(f"{flag} {path} leads to a file that cannot be replaced by name",
                            f"pass a regular file or a new name to {flag}")
        if must_be_new:
            raise UserError(f"{flag} {path} exists", f"pass --force to replace it, or choose another file for {flag}")
        if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
            raise UserError(f"{flag} {path} is read-only", "make it writable (chmod u+w) or choose another file")
    parent = os.path.dirname(target)
    probe = parent
    while not os.path.lexists(probe):  # the nearest existing ancestor decides whether we may create it
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag} {path}: {probe} is not a directory", f"choose another path for {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the directory {probe} is not writable",
                        "make it writable or choose another path")
    return target


def open_text(path: str, mode: str = "r") -> IO[str]:
    """A UTF-8 text file whose lines end at ``\\n`` only (the line convention of the whole project).

    Opened for writing, ``path`` passes :func:`check_output` first (never a device, FIFO or directory)."""
    if any(c in mode for c in "wax+"):
        check_output(path)
        return _DiskErrorsReported(open(path, mode, encoding="utf-8", newline="\n"), path)  # type: ignore
    return open(path, mode, encoding="utf-8", newline="\n")


class _DiskErrorsReported:
    """A file open for writing whose full-disk and permission errors are :class:`UserError` s (:func:`disk_errors`)."""

    def __init__(self, f: IO[str], path: str):
        self._f, self._path = f, path

    def _report(self, e: OSError) -> None:
        with disk_errors(self._path):
            raise e

    def write(self, text: str) -> int:
        try:
            return self._f.write(text)
        except OSError as e:
            self._report(e)
            raise

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            self._report(e)
            raise

    def __enter__(self) -> "_DiskErrorsReported":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str, flag: str = "output", inputs: Inputs = (), must_be_new: bool = False) -> Iterator[str]:
    """A temporary path next to ``path``; moved over ``path`` when the block succeeds, removed otherwise.

    For writers that take a file name (``torch.save``, ``savefig``, sentencepiece).  ``path`` passes
    :func:`check_output` first (``flag``, ``inputs``, ``must_be_new`` are its arguments); a symbolic
    link is written through.  A full disk is reported as such (:func:`disk_errors`)."""
    target = check_output(path, flag, inputs, must_be_new)
    directory = os.path.dirname(target)
    tmp = None
    with disk_errors(path):
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
            os.close(fd)
            yield tmp
            os.chmod(tmp, _umask_mode())  # mkstemp's 0600 would make results private to the writer
            os.replace(tmp, target)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", flag: str = "output", inputs: Inputs = (),
                 must_be_new: bool = False) -> Iterator[IO]:
    """``open(path, mode)`` written atomically (text: UTF-8 with ``\\n`` line ends); see :func:`atomic_path`."""
    with atomic_path(path, flag, inputs, must_be_new) as tmp:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str, obj: object, flag: str = "output", inputs: Inputs = ()) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, flag=flag, inputs=inputs) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_text(path: str, text: str, flag: str = "output", inputs: Inputs = ()) -> None:
    """Write ``text`` atomically."""
    with atomic_write(path, flag=flag, inputs=inputs) as f:
        f.write(text)


def torch_save(obj: object, path: str, flag: str = "output", inputs: Inputs = ()) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_path(path, flag, inputs) as tmp:
        torch.save(obj, tmp)


def is_inside(path: str, directory: str) -> bool:
    """True when ``path`` is ``directory`` or lies under it (symbolic links resolved)."""
    p, d = os.path.realpath(path), os.path.realpath(directory)
    return p == d or p.startswith(d.rstrip(os.sep) + os.sep)


def refuse_inputs_inside(out_dir: str, inputs: Sequence[tuple], tool: str) -> None:
    """Refuse to write into ``out_dir`` when one of ``inputs`` ((flag, path), ...) lives inside it."""
    for flag, path in inputs:
        if path and is_inside(path, out_dir):
            raise UserError(
                f"{flag} {path} lies inside the output directory {out_dir}, which {tool} writes into",
                f"move or copy it out of {out_dir}, or choose another output directory")


def output_directory(directory: str, flag: str = "the output directory", error: type = UserError) -> None:
    """Refuse an output directory that exists as something else (a file) or that cannot be written."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise error(f"{flag} {directory} exists and is not a directory", "give a new or existing directory")
    probe = directory
    while not os.path.lexists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    if not os.path.isdir(probe):
        raise error(f"{flag} {directory}: {probe} is not a directory", "choose another output directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise error(f"{flag} {directory}: {probe} is not writable", "make it writable or choose another directory")


class OutputRecord:
    """The list of files a tool wrote into a directory, kept in ``DIR/.fairseq-metabt-outputs.json``."""

    def __init__(self, directory: str, tool: str):
        self.directory = directory
        self.tool = tool
        self.path = os.path.join(directory, RECORD_NAME)

    def files(self) -> Optional[List[str]]:
        """Names (relative to the directory) the tool recorded, or None when there is no record."""
        if not os.path.exists(self.path):
            return None
        try:
            with open_text(self.path) as f:
                data = json.load(f)
            names = [str(n) for n in data["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{self.path} is not a valid record of {self.tool}'s outputs ({e})",
                            "delete the directory's old outputs yourself, or choose another output directory") from e
        return [n for n in names if self._safe(n)]

    def _safe(self, name: str) -> bool:
        """Only plain relative names inside the directory are ever deleted."""
        return bool(name) and not os.path.isabs(name) and ".." not in name.split("/") and \
            is_inside(os.path.join(self.directory, name), self.directory)

    def prepare(self, planned: Iterable[str], force: bool, error: type = UserError) -> None:
        """Make the directory ready for a run that writes ``planned`` (relative file names).

        Without ``force`` the directory must be empty or absent.  With
        ``force`` only the files of the previous record are deleted, and a
        planned output that exists but was never recorded stops the run (it is
        the user's, not the tool's).  Then the new record is written, before
        any output, so that a crash mid-run is still cleaned up by the next
        ``--force``.  Refusals raise ``error`` (a :class:`UserError`).
        """
        planned = sorted(set(planned) | {RECORD_NAME})
        output_directory(self.directory, error=error)
        existing = sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []
        if existing and not force:
            shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
            raise error(f"{self.directory} is not empty (found {shown}). Nothing was changed",
                        f"choose another output directory, or pass --force to replace what {self.tool} "
                        "wrote there before")
        previous = self.files()
        if existing and previous is None:
            raise error(f"{self.directory} holds files that {self.tool} did not write (it has no {RECORD_NAME} "
                        "record of its outputs); refusing to delete them even with --force",
                        "choose an empty or new output directory")
        recorded = set(previous or [])
        for name in planned:
            if name != RECORD_NAME and name not in recorded and os.path.lexists(os.path.join(self.directory, name)):
                raise error(f"{os.path.join(self.directory, name)} exists but was not written by {self.tool}; "
                            "--force would overwrite it", "move it away or choose another output directory")
        for name in sorted(recorded, key=lambda n: -n.count("/")):
            path = os.path.join(self.directory, name)
            if os.path.isfile(path) or os.path.islink(path):  # a recorded name is always a file
                os.remove(path)
                parent = os.path.dirname(path)
                if os.path.abspath(parent) != os.path.abspath(self.directory) and not os.listdir(parent):
                    os.rmdir(parent)
        os.makedirs(self.directory, exist_ok=True)
        self.write(planned)

    def write(self, names: Iterable[str]) -> None:
        write_json(self.path, {"tool": self.tool, "files": sorted(set(names) | {RECORD_NAME})})


def set_aside(path: str) -> Optional[str]:
    """Move an existing file out of the way to ``PATH.prevK`` (the first free K) and return where it went.

    A symbolic link stays where it is and its target is moved, so that the next write goes through the
    link as every write of the plugin does; nothing is deleted. ``None`` when there was nothing to move."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return None
    k = 0
    while os.path.lexists(f"{real}.prev{k}"):
        k += 1
    os.replace(real, f"{real}.prev{k}")
    return f"{real}.prev{k}"
