"""A pass that can be resumed: with `--out DIR`, the leaf Grams of the tensors a pass has finished
are kept in `DIR/.trajcli-pass/` (every FLUSH_EVERY_S seconds, and when it stops), each part under
the digest of its plan (files, selection, cut); the next pass with that very plan reads only the
other tensors, with the same Grams bit for bit. See docs/performance.md."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trajcli.errors import DataError

JOURNAL_DIR = ".trajcli-pass"
JOURNAL_FORMAT = 2  # 2: every part carries the digest of its plan
FLUSH_EVERY_S = 30.0
_PLAN = "plan.json"


class PassJournal:
    """The finished tensors of one pass plan: `done` (read back from an earlier pass) and those this
    pass finishes (`finished`, written by `flush`)."""

    def __init__(self, folder: Path, plan: dict, every_s: float = FLUSH_EVERY_S):
        self.folder = folder
        self.plan = json.loads(json.dumps(plan))  # as it reads back from plan.json (tuples: lists)
        # in every part: a part is used only under the very plan it was computed for, whatever
        # plan.json says (another process may have written either)
        self.digest = hashlib.sha256(json.dumps(self.plan, sort_keys=True).encode()).hexdigest()
        self.every_s = every_s
        self.done: dict[str, tuple[dict[str, np.ndarray], dict[int, int]]] = {}  # tensor -> (leaf -> Gram, bad counts)
        self._pending: dict[str, tuple[dict[str, tuple], dict[int, int]]] = {}  # tensor -> (leaf -> (Gram, to_numpy), …)
        self._last_flush = time.monotonic()
        self._next_part = 0
        self.n_kept = 0  # tensors on disk: read back, or written by this pass

    @classmethod
    def open(cls, out_dir: Path, plan: dict, fresh: bool = False, every_s: float = FLUSH_EVERY_S) -> PassJournal:
        """The journal of `plan` in `out_dir`: what an earlier pass with the same plan finished,
        unless `fresh`; anything else found there is removed."""
        journal = cls(out_dir / JOURNAL_DIR, plan, every_s)
        if not fresh:
            journal._read()
        if not journal.done:
            journal.remove()
        return journal

    def _read(self) -> None:
        try:
            saved = json.loads((self.folder / _PLAN).read_text())
        except (OSError, ValueError):
            return
        if saved != {"format": JOURNAL_FORMAT, **self.plan}:
            return
        parts = sorted(self.folder.glob("part-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
        for path in parts:
            self._next_part = int(path.stem.split("-")[1]) + 1
            try:
                with np.load(path, allow_pickle=False) as data:
                    meta = json.loads(str(data["meta"]))
                    if meta.get("plan") != self.digest:
                        continue  # computed under another plan: not these numbers
                    for tensor, entry in meta["tensors"].items():
                        grams = {leaf: data[f"g{i}"] for leaf, i in entry["leaves"].items()}
                        if self._fits(tensor, grams):
                            self.done[tensor] = (grams, {int(k): c for k, c in entry["nonfinite"].items()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile):
                continue  # an unreadable part (cut short, say): its tensors are read again
        self.n_kept = len(self.done)

    def _fits(self, tensor: str, grams: dict[str, np.ndarray]) -> bool:
        """Whether a kept tensor has the plan's leaves, each an N × N float64 Gram."""
        segment = self.plan["segments"].get(tensor)
        n = len(self.plan["labels"])
        return (segment is not None and set(grams) == {leaf for _, _, leaf in segment["ranges"]}
                and all(g.shape == (n, n) and g.dtype == np.float64 for g in grams.values()))

    def finished(self, tensor: str, grams: dict, nonfinite: dict[int, int], to_numpy=np.asarray) -> None:
        """`tensor` is complete: its leaves' basis Grams (kept by reference: the pass no longer
        changes them; `to_numpy` makes arrays of them when they are written, e.g. from a device) and
        its NaN/Inf counts per checkpoint; written at the next flush."""
        self._pending[tensor] = ({leaf: (gram, to_numpy) for leaf, gram in grams.items()}, dict(nonfinite))
        if time.monotonic() - self._last_flush >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the tensors finished since the last flush (one part file, renamed into place whole)."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        arrays: dict[str, np.ndarray] = {}
        meta: dict = {"plan": self.digest, "tensors": {}}
        for tensor, (grams, nonfinite) in self._pending.items():
            leaves = {}
            for leaf, (gram, to_numpy) in grams.items():
                leaves[leaf] = len(arrays)
                arrays[f"g{len(arrays)}"] = np.asarray(to_numpy(gram), dtype=np.float64)
            meta["tensors"][tensor] = {"leaves": leaves, "nonfinite": {str(k): c for k, c in nonfinite.items()}}
        from trajcli.atomic import AtomicFiles

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with AtomicFiles(self.folder) as files:  # hidden temp files, renamed into place whole
                if not (self.folder / _PLAN).is_file():
                    files.text(_PLAN, json.dumps({"format": JOURNAL_FORMAT, **self.plan}))
                with open(files.path_for(f"part-{self._next_part}.npz"), "wb") as f:
                    np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # made for this part and still empty: not left behind
            raise DataError(f"cannot write the pass journal in {self.folder}: {exc.strerror or exc}",
                            "free some space there, or pass --out elsewhere") from None
        self._next_part += 1
        self.n_kept += len(self._pending)
        self._pending.clear()

    def remove(self) -> None:
        """Forget it (the pass is complete, or starts over)."""
        self._pending.clear()
        shutil.rmtree(self.folder, ignore_errors=True)



@contextlib.contextmanager
def kept_on_failure(journal: PassJournal | None) -> Iterator[None]:
    """Whatever stops the block (an error, Ctrl-C), the tensors finished so far are written first;
    when they cannot be, the first error stands."""
    try:
        yield
    except BaseException:
        if journal is not None:
            with contextlib.suppress(DataError):
                journal.flush()
        raise
