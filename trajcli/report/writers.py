"""Output files: fixed names, written atomically (temp file + rename), never into an input."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from trajcli.errors import DataError


def strict(obj):
    """A copy of `obj` that json.dumps(allow_nan=False) accepts: NaN/Inf become None, numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def dumps_json(doc: dict) -> str:
    return json.dumps(strict(doc), allow_nan=False, indent=1, ensure_ascii=False) + "\n"


def matrix_csv(labels: list[str], matrix: np.ndarray) -> str:
    """A labelled square matrix; undefined entries are blank."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", *labels])
    for label, row in zip(labels, matrix):
        writer.writerow([label, *("" if not math.isfinite(v) else repr(float(v)) for v in row)])
    return buf.getvalue()


def rows_csv(header: list[str], rows: list[list]) -> str:
    """A plain table; None and non-finite numbers are blank."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v))
                         else (repr(v) if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def prepare_out_dir(out: Path, input_paths: list[Path]) -> Path:
    """Create `out` (refusing a folder inside an input checkpoint) and check it can be written."""
    out = out.expanduser()
    resolved = out.resolve()
    for path in input_paths:
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        if resolved == folder or (path.is_dir() and resolved.is_relative_to(folder)):
            raise DataError(
                f"--out {out} is inside the input checkpoint {path}",
                "write results elsewhere; trajcli never writes into an input checkpoint folder",
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".trajcli-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"cannot write to --out {out}: {exc.strerror or exc}", "choose a folder you can write to") from None
    return out


def run_jobs(jobs: list[tuple], workers: int = 2) -> None:
    """Run plotting jobs (fn, args); with several jobs and fork available, this process and a forked
    child draw them side by side (matplotlib is not thread-safe; a fork shares the data without
    pickling it). Each takes the next job number from a counter in shared memory, so a slow figure
    does not leave the other process idle. A failed child fails the whole set."""
    if len(jobs) < 4 or workers < 2 or not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        for fn, args in jobs:
            fn(*args)
        return
    import multiprocessing
    import sys
    import traceback

    taken = multiprocessing.Value("i", 0)  # the next job to draw, shared with the forked child

    def drain() -> None:
        while True:
            with taken.get_lock():
                i = taken.value
                taken.value = i + 1
            if i >= len(jobs):
                return
            fn, args = jobs[i]
            fn(*args)

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: draw, then leave without running the parent's exit handlers
        code = 0
        try:
            drain()
        except BaseException:  # noqa: BLE001 - reported by the parent through the exit status
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    try:
        drain()
    except BaseException:
        os.kill(pid, 15)
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"a plotting process failed (status {status})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputSet:
    """Files to write together: each goes to a hidden temp file first and all are renamed at the end,
    so an error or an interruption leaves the folder as it was (no half-written results)."""

    def __init__(self, out: Path, defer_drawing: bool = False):
        self.out = out
        self._pending: list[tuple[Path, Path]] = []
        self._defer = defer_drawing
        self._jobs: list[tuple] = []

    def _temp(self, name: str) -> Path:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results get the usual permissions
        os.close(fd)
        self._pending.append((Path(tmp), self.out / name))
        return Path(tmp)

    def text(self, name: str, content: str) -> None:
        self._temp(name).write_text(content, encoding="utf-8")

    def npy(self, name: str, array: np.ndarray) -> None:
        with open(self._temp(name), "wb") as f:
            np.save(f, array)

    def path_for(self, name: str) -> Path:
        """A temp path that a writer (e.g. matplotlib) fills; renamed to `name` on commit."""
        return self._temp(name)

    def draw(self, name: str, plot, *args) -> None:
        """`plot(path, *args)` into `name`; deferred (and then drawn in parallel) with defer_drawing."""
        path = self._temp(name)
        if self._defer:
            self._jobs.append((plot, (path, *args)))
        else:
            plot(path, *args)

    def flush(self) -> None:
        """Draw every deferred plot."""
        jobs, self._jobs = self._jobs, []
        run_jobs(jobs)

    def written(self, name: str) -> bytes:
        """What has been written so far under `name` (before commit)."""
        self.flush()
        for tmp, final in self._pending:
            if final.name == name:
                return tmp.read_bytes()
        raise KeyError(name)

    def commit(self) -> list[Path]:
        self.flush()
        done = []
        for tmp, final in self._pending:
            os.replace(tmp, final)
            done.append(final)
        self._pending.clear()
        return done

    def discard(self) -> None:
        self._jobs.clear()
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
