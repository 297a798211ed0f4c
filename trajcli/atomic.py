"""Files written whole or not at all: each goes to a hidden temp file beside its final name and is
renamed into place at `commit`; what was not committed is removed. The bottom of the package: the
engine (saved Grams, the pass journal) and the report writers both build on it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFiles:
    """Files to write together into the folder `out`, published at `commit` (renamed into place)."""

    def __init__(self, out: Path):
        self.out = out
        self._pending: list[tuple[Path, Path]] = []
        self._committed: set[str] = set()

    def _temp(self, name: str) -> Path:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results get the usual permissions
        os.close(fd)
        self._pending.append((Path(tmp), self.out / name))
        return Path(tmp)

    def text(self, name: str, content: str) -> None:
        self._temp(name).write_text(content, encoding="utf-8")

    def path_for(self, name: str) -> Path:
        """A temp path that a writer fills; renamed to `name` on commit."""
        return self._temp(name)

    def flush(self) -> None:
        """Whatever is still being produced into the temp files, finished (nothing here)."""

    def commit(self) -> list[Path]:
        """Every file asked for so far, complete, renamed into place (may be called more than once:
        each call publishes what came since the last)."""
        try:
            self.flush()
        except BaseException:
            self.discard()  # a file that failed leaves no file behind, nor do the others
            raise
        done = []
        for tmp, final in self._pending:
            os.replace(tmp, final)
            done.append(final)
            self._committed.add(final.name)
        self._pending.clear()
        return done

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
