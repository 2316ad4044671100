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
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Iterable, Iterator, List, Optional, Sequence

from fairseq_metabt.errors import UserError

RECORD_NAME = ".fairseq-metabt-outputs.json"


def open_text(path: str, mode: str = "r") -> IO[str]:
    """A UTF-8 text file whose lines end at ``\\n`` only (the line convention of the whole project)."""
    return open(path, mode, encoding="utf-8", newline="\n")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path next to ``path``; moved over ``path`` when the block succeeds, removed otherwise.

    For writers that take a file name (``torch.save``, ``savefig``, sentencepiece)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())  # mkstemp's 0600 would make results private to the writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """``open(path, mode)`` written atomically (text: UTF-8 with ``\\n`` line ends)."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_write(path) as f:
        f.write(text)


def torch_save(obj: object, path: str) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_path(path) as tmp:
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
