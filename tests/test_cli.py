"""The command line as a pipeline tool: stdout/stderr apart, strict JSON, files, selection, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import as_array, explicit_matrix, loads_strict, random_trajectory, run, run_json, save_safetensors_dir


@pytest.fixture
def run_dir(tmp_path):
    sds = random_trajectory(6, seed=31)
    steps = [0, 1, 2, 4, 512, 1000]
    for step, sd in zip(steps, sds):
        save_safetensors_dir(tmp_path / "run" / f"step{step}", sd)
    return tmp_path / "run", sds, steps


def test_similarity_summary_on_stdout_and_files_with_out(run_dir, tmp_path):
    folder, sds, _ = run_dir
    out = tmp_path / "results"
    result = run(["similarity", folder, "--mode", "displacement", "--out", out])
    assert result.exit_code == 0, result.stderr
    assert "MDS ω" in result.stdout and "reference step0" in result.stdout
    assert "warning" not in result.stderr and "error" not in result.stderr, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grams.npz", "similarity.csv", "similarity.json", "similarity.npy", "similarity.png"]
    doc = json.loads((out / "similarity.json").read_text())
    expected = explicit_matrix(sds, "displacement")
    np.testing.assert_allclose(as_array(doc["matrix"]), expected, atol=1e-9)
    np.testing.assert_allclose(np.load(out / "similarity.npy"), expected, atol=1e-9)
    rows = (out / "similarity.csv").read_text().splitlines()
    assert rows[0] == "label,step1,step2,step4,step512,step1000"
    assert [r.split(",")[0] for r in rows[1:]] == doc["labels"]
    # every number reads back to the very float64 of the .npy
    saved = np.load(out / "similarity.npy")
    assert np.array_equal(np.array([[float(v) for v in r.split(",")[1:]] for r in rows[1:]]), saved)
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_contract(run_dir):
    folder, _, steps = run_dir
    doc = run_json(["similarity", folder])
    for key in ("schema", "checkpoints", "mode", "reference", "labels", "matrix", "mds", "n_params", "n_tensors"):
        assert key in doc
    assert doc["schema"] == "trajcli.similarity/1"
    assert doc["mode"] == "raw" and doc["reference"] is None
    assert [c["step"] for c in doc["checkpoints"]] == steps
    assert set(doc["checkpoints"][0]) >= {"name", "path", "step", "format"}
    assert doc["labels"] == [f"step{s}" for s in steps]


def test_json_documents_are_strict_exact_and_indented():
    """What every JSON file and --json goes through: NaN/±Inf as null, numpy numbers and arrays (also
    strided ones) as numbers, every float64 back bit for bit, an indented document."""
    from trajcli.metrics.trajectory import json_matrix
    from trajcli.report.writers import dumps_json

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(300) * 10.0 ** rng.integers(-300, 300, 300),
                             [5e-324, -0.0, 1 / 3, 2.0 ** 60, np.finfo(float).max, np.finfo(float).tiny]])
    matrix = rng.standard_normal((5, 5))
    matrix[1, 2], matrix[3, 0], matrix[4, 4] = np.nan, np.inf, -np.inf
    doc = {"values": values, "every_other": values[::2], "transposed": matrix.T,
           "scalars": [np.float64(np.nan), float("inf"), np.int64(7), np.bool_(True), np.float64(0.1), None],
           "matrix": json_matrix(matrix), 3: ("tuple", 1)}
    text = dumps_json(doc)
    back = loads_strict(text)
    assert text.endswith("}\n") and text.count("\n") > len(values)  # indented, one number per line
    assert np.array_equal(np.array(back["values"]).view(np.int64), values.view(np.int64))
    assert np.array_equal(np.array(back["every_other"]).view(np.int64), values[::2].view(np.int64))
    expected = [[v if np.isfinite(v) else None for v in row] for row in matrix.tolist()]
    assert back["matrix"] == expected
    # a map held as an array: one row per line, at the document's indentation, NaN as null
    text_rows = text.split('"matrix": [\n', 1)[1].split("\n  ]", 1)[0].split("\n")
    assert [loads_strict(line.strip().rstrip(",")) for line in text_rows] == expected
    assert all(line.startswith("    [") and line.rstrip(",").endswith("]") for line in text_rows)
    assert back["transposed"] == [[v if np.isfinite(v) else None for v in row] for row in matrix.T.tolist()]
    assert back["scalars"] == [None, None, 7, True, 0.1, None]
    assert back["3"] == ["tuple", 1]


def test_maps_are_written_one_row_per_line_wherever_they_sit():
    """A 2-D array is one JSON row per line, indented as the document around it (known text); lists
    and 1-D arrays keep one value per line; the caller's document is not changed."""
    from trajcli.report.writers import dumps_json

    inner = {"matrix": np.array([[1.0, np.nan], [0.5, -0.0]]), "none": np.zeros((0, 0)), "n": 3}
    doc = {"groups": [inner], "pair": (np.array([[1, 2]]),), "flags": np.array([[True, False]]),
           "norms": np.array([2.5, np.inf])}
    assert dumps_json(doc) == (
        '{\n'
        '  "groups": [\n'
        '    {\n'
        '      "matrix": [\n'
        '        [1.0,null],\n'
        '        [0.5,-0.0]\n'
        '      ],\n'
        '      "none": [],\n'
        '      "n": 3\n'
        '    }\n'
        '  ],\n'
        '  "pair": [\n'
        '    [\n'
        '      [1,2]\n'
        '    ]\n'
        '  ],\n'
        '  "flags": [\n'
        '    [true,false]\n'
        '  ],\n'
        '  "norms": [\n'
        '    2.5,\n'
        '    null\n'
        '  ]\n'
        '}\n')
    assert isinstance(doc["groups"][0]["matrix"], np.ndarray) and isinstance(doc["pair"], tuple)


def test_selection_flags(run_dir):
    folder, _, _ = run_dir
    assert [c["step"] for c in run_json(["similarity", folder, "--every", "2"])["checkpoints"]] == [0, 2, 512]
    assert [c["step"] for c in run_json(["similarity", folder, "--steps", "2:600"])["checkpoints"]] == [2, 4, 512]
    assert [c["step"] for c in run_json(["similarity", folder, "--steps", ":1"])["checkpoints"]] == [0, 1]
    picked = [c["step"] for c in run_json(["similarity", folder, "--max-checkpoints", "3"])["checkpoints"]]
    assert picked[0] == 0 and picked[-1] == 1000 and len(picked) == 3


def test_include_exclude_restrict_the_tensors(run_dir):
    folder, sds, _ = run_dir
    doc = run_json(["similarity", folder, "--include", r"^layers\.", "--exclude", "bias"])
    names = ["layers.0.attn.weight", "layers.0.norm.weight", "layers.1.mlp.weight"]
    assert doc["n_tensors"] == 3
    np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, "raw", names=names), atol=1e-9)


def test_paths_from_stdin(run_dir):
    folder, sds, _ = run_dir
    listing = "\n".join(str(folder / f"step{s}") for s in (1000, 0, 4)) + "\n"
    doc = run_json(["similarity", "-"], input=listing)
    assert [c["name"] for c in doc["checkpoints"]] == ["step0", "step4", "step1000"]


def test_inspect_lists_checkpoints_and_what_is_left_out(tmp_path):
    import torch

    for k in range(2):
        sd = {"h.0.attn.bias": torch.ones(1, 1, 4, 4, dtype=torch.bool), "h.0.attn.c_attn.bias": torch.randn(12),
              "pos.position_ids": torch.arange(4), "w": torch.randn(3, 3)}
        save_safetensors_dir(tmp_path / f"checkpoint-{k}", sd)
    doc = run_json(["inspect", tmp_path])
    assert doc["schema"] == "trajcli.inspect/1"
    assert [t["name"] for t in doc["tensors"]] == ["h.0.attn.c_attn.bias", "w"]
    why = {d["tensor"]: d["why"] for d in doc["left_out"]}
    assert set(why) == {"h.0.attn.bias", "pos.position_ids"}
    assert doc["checkpoints"][0]["n_params"] == 21
    text = run(["inspect", tmp_path])
    assert text.exit_code == 0 and "checkpoint-1" in text.stdout and "left out (2)" in text.stdout


def test_version_and_help_are_light():
    result = run(["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("trajcli ")
    code = "import sys, trajcli.launch; sys.argv=['trajcli','--help']\ntry: trajcli.launch.main()\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules, 'matplotlib' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False False"


def test_every_command_has_examples_in_help():
    from trajcli.cli import app

    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert set(commands) >= {"inspect", "similarity", "layers", "qkv", "report", "archs", "plot", "demo"}
    for command in commands:
        result = run([command, "--help"])
        assert result.exit_code == 0 and "Example" in result.stdout and f"trajcli {command}" in result.stdout, command


def test_matrix_csv_quotes_labels_and_leaves_undefined_entries_blank():
    import csv
    import io

    from trajcli.report.writers import matrix_csv

    matrix = np.array([[1.0, np.nan, -0.0], [np.inf, 1 / 3, 1e-5], [5e-324, -1.0, 2.0 ** -30]])
    labels = ["step0", 'run "a", seed 1', "ckpt\nnewline"]
    table = list(csv.reader(io.StringIO(matrix_csv(labels, matrix))))
    assert table[0] == ["label", *labels] and [r[0] for r in table[1:]] == labels
    cells = [r[1:] for r in table[1:]]
    assert cells[0][1] == "" and cells[1][0] == ""
    back = np.array([[float(v) if v else np.nan for v in r] for r in cells])
    finite = np.isfinite(matrix)
    assert np.array_equal(back[finite].view(np.int64), matrix[finite].view(np.int64))


def test_progress_lines_when_stderr_is_not_a_terminal(run_dir):
    """A log file or a batch job gets plain progress lines (start, every few seconds, end); -q none."""
    import subprocess
    import sys

    folder, _, _ = run_dir
    cmd = [sys.executable, "-m", "trajcli", "similarity", str(folder), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("trajcli: reading: ")]
    assert len(lines) == 2, done.stderr
    assert lines[0].endswith("to go") and " done in " in lines[1]
    quiet = subprocess.run([*cmd, "-q"], capture_output=True, text=True, check=True)
    assert quiet.stderr == ""
    assert json.loads(done.stdout) == json.loads(quiet.stdout)


def test_progress_lines_every_interval_with_done_total_and_rate():
    import io

    from trajcli.pipeline import ProgressLines

    stream = io.StringIO()
    lines = ProgressLines("reading", 3 << 20, "bytes", stream, every_s=0.0)
    lines.advance(1 << 20)
    lines.advance(1 << 20)
    lines.advance(1 << 20)
    lines.close()
    said = stream.getvalue().splitlines()
    assert said[0] == "trajcli: reading: 3.0 MiB to go"
    assert said[1].startswith("trajcli: reading: 1.0 MiB of 3.0 MiB (33%), ") and said[1].endswith("/s")
    assert said[2].startswith("trajcli: reading: 2.0 MiB of 3.0 MiB (67%), ")
    assert said[3].startswith("trajcli: reading: 3.0 MiB done in ") and len(said) == 4
    counted = io.StringIO()
    items = ProgressLines("curvature", 16, "checkpoints", counted, every_s=0.0)
    items.advance(5)
    said = counted.getvalue().splitlines()
    assert said[0] == "trajcli: curvature: 16 checkpoints to go"
    assert re.fullmatch(r"trajcli: curvature: 5 of 16 checkpoints \(31%\), [0-9.e+]+ checkpoints/s", said[1]), said[1]
    quiet = io.StringIO()
    ProgressLines("curvature", 4, "checkpoints", quiet, every_s=3600.0).advance(3)
    assert len(quiet.getvalue().splitlines()) == 1  # only the start: no line before the interval


def test_a_map_near_one_is_drawn_as_one_minus_cosine_on_a_log_scale(tmp_path, monkeypatch):
    """A fine-tune's raw map (every cosine 0.9999…) is one solid colour on [-1, 1]: it is drawn as
    1 − cos on a log scale instead, said in the title; ordinary maps keep the fixed scale."""
    from matplotlib.colors import LogNorm

    from trajcli.report import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, fmt: drawn.append(fig))
    near = 1 - np.array([[0.0, 2e-6, 5e-5], [2e-6, 0.0, 1e-6], [5e-5, 1e-6, 0.0]])
    far = np.array([[1.0, 0.5, -0.2], [0.5, 1.0, 0.99995], [-0.2, 0.99995, 1.0]])
    assert plots.near_one([near]) and not plots.near_one([far]) and not plots.near_one([near, far])
    assert not plots.near_one([np.array([[1.0]])])  # no pair: nothing to show either way
    plots.trajectory_map(tmp_path / "a.png", near, ["a", "b", "c"], "map")
    plots.trajectory_map(tmp_path / "b.png", far, ["a", "b", "c"], "map")
    plots.map_grid(tmp_path / "c.png", [("g1", near), ("g2", near)], "grid")
    log_ax, plain_ax, grid_ax = (fig.axes[0] for fig in drawn)
    assert "1 − cosine, log scale" in log_ax.get_title() and isinstance(log_ax.images[0].norm, LogNorm)
    assert log_ax.images[0].norm.vmin == pytest.approx(1e-6) and log_ax.images[0].norm.vmax == pytest.approx(5e-5)
    assert "log scale" not in plain_ax.get_title() and plain_ax.images[0].norm.vmin == -1.0
    assert "1 − cosine, log scale" in grid_ax.get_title() and isinstance(grid_ax.images[0].norm, LogNorm)


def test_mds_near_one_is_printed_with_the_digits_that_tell_it_from_one(tmp_path):
    from trajcli.report.render import fmt

    assert fmt(0.99998765) == "0.9999877" and fmt(0.5) == "0.5000" and fmt(1.0) == "1.0000"
    assert fmt(0.9994) == "0.999400" and fmt(None) == "—"
    sds = random_trajectory(4, seed=2, step_scale=1e-4)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    doc = run_json(["similarity", tmp_path / "run"])
    assert 0.999 < doc["mds"] < 1
    line = next(ln for ln in run(["similarity", tmp_path / "run"]).stdout.splitlines() if ln.startswith("MDS ω"))
    shown = line.split()[2]
    assert shown != "1.0000" and float(shown) == pytest.approx(doc["mds"], abs=10 ** -(len(shown) - 2))


def test_plain_text_summaries_have_no_trailing_spaces(run_dir):
    folder, _, _ = run_dir
    for args in (["similarity", folder], ["layers", folder, "--by", "tensor"], ["inspect", folder]):
        out = run(args).stdout
        assert out and all(line == line.rstrip() for line in out.splitlines()), args


def test_every_command_runs_inside_the_one_error_edge():
    """A command added without any error handling of its own still gives one line and its exit code."""
    from trajcli.cli import app
    from trajcli.errors import DataError, UsageError

    def broken(kind: str) -> None:
        raise (DataError if kind == "data" else UsageError)(f"{kind} went wrong in tensor w", "try something else")

    app.command(name="broken-for-the-test")(broken)
    try:
        for kind, code in (("data", 1), ("usage", 2)):
            result = run(["broken-for-the-test", kind])
            assert result.exit_code == code
            assert result.stderr == f"trajcli: error: {kind} went wrong in tensor w\n  hint: try something else\n"
            assert "Traceback" not in result.stderr
    finally:
        app.registered_commands.pop()


def test_choices_are_listed_in_help_and_refused_otherwise(tmp_path):
    shown = run(["layers", "--help"]).stdout
    assert "<tensor|block|role>" in shown and "<raw|displacement|update>" in shown and "<png|svg|pdf>" in shown
    assert "<auto|cpu|cuda>" in shown and "<error|skip>" in shown
    bad = run(["similarity", str(tmp_path), "--mode", "cosine"])
    assert bad.exit_code == 2 and "'cosine' is not one of 'raw', 'displacement', 'update'" in bad.stderr


def test_read_threads_is_a_flag_and_changes_no_number(tmp_path, monkeypatch):
    from trajcli.engine import gram

    sds = random_trajectory(4, seed=8)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"checkpoint-{k}", sd)
    used = []
    real = gram._chunk_stream
    monkeypatch.setattr(gram, "_chunk_stream", lambda *args: used.append(args[-1]) or real(*args))
    docs = [run_json(["similarity", tmp_path / "run", "--read-threads", str(t)]) for t in (0, 2)]
    assert used == [0, 2]
    assert docs[0]["matrix"] == docs[1]["matrix"]
    assert run(["similarity", tmp_path / "run", "--read-threads", "-1"]).exit_code == 2


@pytest.mark.parametrize("args, drawn", [(["inspect"], False), (["similarity", "--json"], False),
                                         (["layers", "--by", "block", "--json"], False),
                                         (["similarity", "--out", "OUT"], True)])
def test_safetensors_commands_never_import_torch(tmp_path, args, drawn):
    """On the CPU, safetensors rows are read and multiplied with numpy: torch (seconds to import) is not
    loaded; matplotlib only where a figure is drawn."""
    for k, sd in enumerate(random_trajectory(3, seed=2)):
        save_safetensors_dir(tmp_path / "run" / f"checkpoint-{k}", sd)
    argv = [args[0], str(tmp_path / "run"), *[str(tmp_path / "out") if a == "OUT" else a for a in args[1:]], "-q"] \
        if args[0] != "inspect" else ["inspect", str(tmp_path / "run")]
    code = ("import contextlib, io, sys\nfrom trajcli.launch import main\nsys.argv = ['trajcli', *sys.argv[1:]]\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main()\n    except SystemExit as e:\n"
            "        assert not e.code, e.code\n"
            "print('torch' in sys.modules, 'matplotlib' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"False {drawn}"


def test_cuda_is_looked_for_without_torch_where_it_cannot_be(monkeypatch):
    from importlib import metadata

    from trajcli.engine import gram

    monkeypatch.setattr(metadata, "version", lambda name: "2.13.0+cpu")
    assert not gram.cuda_possible() and gram.resolve_device("auto") == "cpu"
    monkeypatch.setattr(metadata, "version", lambda name: "2.13.0")
    monkeypatch.setattr(gram.Path, "exists", lambda self: False)
    if sys.platform.startswith("linux"):
        assert not gram.cuda_possible()  # no driver device node: no CUDA, whatever the build
    monkeypatch.setattr(gram.Path, "exists", lambda self: str(self) == "/dev/nvidiactl")
    assert gram.cuda_possible() == (sys.platform != "darwin")
