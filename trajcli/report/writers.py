"""Output files: fixed names, written atomically (temp file + rename), never into an input."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import socket
import tempfile
from pathlib import Path

import numpy as np
import orjson

from trajcli.atomic import AtomicFiles
from trajcli.errors import DataError
from trajcli.report import drawing

# Indented (two spaces) at native speed: the documents of a large run hold hundreds of N × N maps
# (N = 154 for a Pythia model), which the standard library's indenting encoder, pure Python, takes
# seconds per million numbers to write. NaN and ±Inf become null (strict JSON); numpy numbers and
# arrays are written as numbers.
_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _json_default(obj):
    """What orjson hands back: numpy arrays it does not take as they are (not C-contiguous, say)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _json(doc: dict) -> bytes:
    return orjson.dumps(_rows_per_line(doc, 0), default=_json_default, option=_JSON_OPTIONS)


_CONTAINERS = (dict, list, tuple, np.ndarray)


def _rows_per_line(obj, depth: int):
    """`obj` with each 2-D numeric array (a trajectory map, coordinates) replaced by its JSON text,
    one row per line, indented as OPT_INDENT_2 places a value `depth` containers deep: a map reads
    as a matrix, and takes about a third less room than one number per line. The values are those
    orjson writes for the array (NaN: null). Containers are copied only where something changed;
    `obj` itself is left as it was."""
    if isinstance(obj, np.ndarray):
        return _rows_fragment(obj, depth) if obj.ndim == 2 and obj.dtype.kind in "fiub" else obj
    if isinstance(obj, dict):
        changed = {k: new for k, v in obj.items()
                   if isinstance(v, _CONTAINERS) and (new := _rows_per_line(v, depth + 1)) is not v}
        return {**obj, **changed} if changed else obj
    if isinstance(obj, (list, tuple)):
        items = [_rows_per_line(v, depth + 1) if isinstance(v, _CONTAINERS) else v for v in obj]
        return items if any(a is not b for a, b in zip(items, obj)) else obj
    return obj


def _rows_fragment(matrix: np.ndarray, depth: int) -> orjson.Fragment:
    if matrix.shape[0] == 0:
        return orjson.Fragment(b"[]")
    inner, outer = b"\n" + b"  " * (depth + 1), b"\n" + b"  " * depth
    rows = [orjson.dumps(np.ascontiguousarray(row), option=orjson.OPT_SERIALIZE_NUMPY) for row in matrix]
    return orjson.Fragment(b"[" + inner + (b"," + inner).join(rows) + outer + b"]")


def dumps_json(doc: dict) -> str:
    return _json(doc).decode() + "\n"


def _csv_cell(value: str) -> str:
    """One field as the csv module writes it (quoted where it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([value])  # the terminator is quoted inside a field
    return buf.getvalue()[:-1]


def matrix_csv(labels: list[str], matrix: np.ndarray) -> str:
    """A labelled square matrix; undefined entries are blank. Each row's numbers are written by orjson
    (shortest form that reads back to the same float64, at native speed: a run of 500 checkpoints
    has 250,000 per map)."""
    lines = [",".join(_csv_cell(v) for v in ["label", *labels])]
    for label, row in zip(labels, np.asarray(matrix, dtype=np.float64)):
        numbers = orjson.dumps(np.ascontiguousarray(row), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].decode()
        lines.append(_csv_cell(label) + "," + numbers.replace("null", ""))
    return "\n".join(lines) + "\n"


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


LOCK_FILE = ".trajcli-lock"
_HELD: list[Path] = []  # output folders this process holds (released at the end of the command)


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when it cannot be read."""
    try:
        pid, host = lock.read_text(encoding="utf-8").split()[:2]
        return int(pid), host
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _alive(pid: int) -> bool:
    """Whether process `pid` runs trajcli (where /proc tells; else whether it runs at all)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"trajcli" in f.read()
    except OSError:
        return True


def lock_out_dir(out: Path) -> str | None:
    """Hold `out` for this process: a second trajcli writing the same Grams, pass journal or results
    would mix its numbers with ours. A folder held by a live trajcli is refused; a lock left by a
    process that died (SIGKILL) is taken over, and a note says so (returned)."""
    lock = out / LOCK_FILE
    if lock in _HELD:
        return None
    me = f"{os.getpid()} {socket.gethostname()}\n"
    note = None
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(me)
    except FileExistsError:
        holder = _holder(lock)
        if holder is not None and (holder[1] != socket.gethostname() or _alive(holder[0])):
            pid, host = holder
            raise DataError(f"--out {out} is in use by another trajcli (pid {pid} on {host})",
                            f"wait for it to finish, or pass another --out; if no trajcli runs there, remove {lock}")
        fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_FILE}.", dir=out)
        with os.fdopen(fd, "w") as f:
            f.write(me)
        os.replace(tmp, lock)
        if lock.read_text(encoding="utf-8") != me:  # another process took it over at the same moment
            raise DataError(f"--out {out} is in use by another trajcli", "wait for it to finish, or pass another --out")
        note = (f"took over the lock of a trajcli that is gone (pid {holder[0]})" if holder
                else f"replaced an unreadable {lock}")
    _HELD.append(lock)
    _remove_stale_temps(out)
    return note


# What OutputSet's temp files look like (".NAME.XXXXXXXX.tmp"): left behind only by a process that
# was killed (SIGKILL) while writing; with the folder held, no trajcli writes them now.
_OUR_TEMP = re.compile(r"^\.[\w.-]+\.(json|csv|npy|npz|png|svg|pdf|html)\.\w{8}\.tmp$")


def _remove_stale_temps(out: Path) -> None:
    for folder in (out, out / ".trajcli-pass"):  # results and Grams; the pass journal's parts
        for path in folder.iterdir() if folder.is_dir() else ():
            if _OUR_TEMP.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)


def release_out_dirs() -> None:
    """Let go of the output folders this process holds."""
    me = f"{os.getpid()} {socket.gethostname()}\n"
    while _HELD:
        lock = _HELD.pop()
        try:
            if lock.read_text(encoding="utf-8") == me:
                lock.unlink()
        except OSError:
            pass


class OutputSet(AtomicFiles):
    """A command's result files (JSON, CSV, NPY, figures), written atomically together (see
    `trajcli.atomic`); figures are drawn when the set is flushed or committed — or, with a `drawer`
    (trajcli.report.drawing.Drawer), sent to it at once and waited for then."""

    def __init__(self, out: Path, drawer=None):
        super().__init__(out)
        self._drawer = drawer
        self._jobs: list[tuple] = []  # plots to draw at `flush`
        self._sent: list = []  # futures of the plots sent to the drawer

    def json(self, name: str, doc: dict) -> None:
        """A JSON document, written as orjson makes it (a layers document of a long run is hundreds of
        MB: no text copy)."""
        with open(self._temp(name), "wb") as f:
            f.write(_json(doc))
            f.write(b"\n")

    def npy(self, name: str, array: np.ndarray) -> None:
        with open(self._temp(name), "wb") as f:
            np.save(f, array)

    def draw(self, name: str, plot, *args) -> None:
        """`plot(path, *args)` into `name`: sent to the drawer at once, else drawn at `flush` or `commit`."""
        job = (plot, (self._temp(name), *args))
        if self._drawer is not None:
            self._sent.append(self._drawer.submit(*job))
        else:
            self._jobs.append(job)

    def flush(self) -> None:
        """Every plot asked for so far, drawn."""
        jobs, self._jobs = self._jobs, []
        drawing.run(jobs)
        sent, self._sent = self._sent, []
        drawing.wait(sent)

    def written(self, name: str) -> bytes:
        """What has been written so far under `name` (committed or not)."""
        self.flush()
        for tmp, final in self._pending:
            if final.name == name:
                return tmp.read_bytes()
        if name in self._committed:
            return (self.out / name).read_bytes()
        raise KeyError(name)

    def discard(self) -> None:
        self._jobs.clear()
        sent, self._sent = self._sent, []
        drawing.wait(sent, cancel=True)  # nothing may still draw into a temp file once it is removed
        super().discard()
