"""`trajcli report`: every analysis from one pass, all files, and a page that renders in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import random_trajectory, run, run_json, save_safetensors_dir
from test_qkv import write_trajectory

from trajcli.io import sources

EXPECTED = {"similarity_raw", "similarity_displacement", "similarity_update"}


@pytest.fixture(scope="module")
def neox_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_trajectory("gpt_neox", root / "run", n=6, seed=5)
    result = run(["report", root / "run", "--out", root / "out"])
    assert result.exit_code == 0, result.stderr
    return root, result


def test_report_writes_every_analysis(neox_report):
    root, result = neox_report
    out = root / "out"
    names = {p.name for p in out.iterdir()}
    for stem in EXPECTED:
        assert {f"{stem}.json", f"{stem}.csv", f"{stem}.npy", f"{stem}.png"} <= names
    assert {"layers_block.json", "layers_block.csv", "layers_block_mds.png", "layers_block_maps.png",
            "layers_role.json", "layers_role_mds.png", "qkv.json", "qkv.csv", "qkv_mds.png", "qkv_heterogeneity.png",
            "qkv_heads.png", "qkv_heads.csv", "pca.png", "path.png", "report.json", "report.html", "grams.npz"} <= names
    document = json.loads((out / "report.json").read_text())
    assert document["schema"] == "trajcli.report/1"
    assert set(document["files"]) == names - {"grams.npz"}
    assert "MDS ω, displacement" in result.stdout and "report.html" in result.stdout


def test_report_numbers_equal_the_single_commands(neox_report):
    root, _ = neox_report
    out, run_dir = root / "out", root / "run"
    head = json.loads((out / "report.json").read_text())["headline"]
    for mode in ("raw", "displacement", "update"):
        alone = run_json(["similarity", run_dir, "--mode", mode])
        saved = json.loads((out / f"similarity_{mode}.json").read_text())
        np.testing.assert_allclose(np.array(saved["matrix"], float), np.array(alone["matrix"], float), atol=1e-12)
        assert head[f"mds_{mode}"] == pytest.approx(alone["mds"], abs=1e-12)
    qkv_alone = run_json(["qkv", run_dir, "--per-head"])
    qkv_saved = json.loads((out / "qkv.json").read_text())
    for a, b in zip(qkv_alone["layers"], qkv_saved["layers"]):
        assert a["heads"].keys() == b["heads"].keys()
        for part in a["heads"]:
            np.testing.assert_allclose(np.array(a["heads"][part], float), np.array(b["heads"][part], float), atol=1e-12)
        assert a["heterogeneity"] == pytest.approx(b["heterogeneity"], abs=1e-12)
    role_alone = run_json(["layers", run_dir, "--by", "role", "--mode", "displacement"])
    role_saved = json.loads((out / "layers_role.json").read_text())
    assert [g["name"] for g in role_alone["groups"]] == [g["name"] for g in role_saved["groups"]]
    for a, b in zip(role_alone["groups"], role_saved["groups"]):
        assert a["mds"] == pytest.approx(b["mds"], abs=1e-12)


def test_report_reads_each_byte_once(tmp_path, monkeypatch):
    saved, _ = write_trajectory("llama", tmp_path / "run", n=4)
    elems = []
    original = sources.CheckpointReader.read_into
    monkeypatch.setattr(sources.CheckpointReader, "read_into",
                        lambda self, *a: (elems.append(a[3].size), original(self, *a))[1])
    assert run(["report", tmp_path / "run", "--out", tmp_path / "out", "--quiet"]).exit_code == 0
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "run" / "step0" / "model.safetensors"))
    assert sum(elems) == 4 * sum(t.numel() for t in stored.values())


def test_page_is_self_contained_with_headline_numbers(neox_report):
    root, _ = neox_report
    page = (root / "out" / "report.html").read_text()
    head = json.loads((root / "out" / "report.json").read_text())["headline"]
    sources_ = re.findall(r'<img src="([^"]{0,40})', page)
    assert len(sources_) >= 10 and all(s.startswith("data:image/png;base64,") for s in sources_)
    assert "http://" not in page and "https://" not in page
    assert f"{head['mds_raw']:.4f}" in page and f"{head['mds_update']:.4f}" in page


def test_report_without_a_known_architecture(tmp_path):
    for k, sd in enumerate(random_trajectory(4, seed=12)):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    result = run(["report", tmp_path / "run", "--out", tmp_path / "out", "--format", "svg"])
    assert result.exit_code == 0, result.stderr
    assert "Q/K/V left out" in result.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "qkv.json" not in names and "similarity_raw.svg" in names and "pca.svg" in names
    page = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/svg+xml;base64," in page


def test_report_pdf_plots_and_png_page(tmp_path):
    write_trajectory("gpt2", tmp_path / "run", n=3)
    result = run(["report", tmp_path / "run", "--out", tmp_path / "out", "--format", "pdf", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "qkv_mds.pdf").read_bytes()[:5] == b"%PDF-"
    assert not any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (.ci/run installs Debian's chromium)")
def test_page_renders_in_headless_chromium(neox_report, tmp_path):
    root, _ = neox_report
    page = root / "out" / "report.html"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, dom[:500]
    assert int(total.group(1)) >= 10 and loaded.group(1) == total.group(1)
    assert '<div class="broken">' not in dom
    head = json.loads((root / "out" / "report.json").read_text())["headline"]
    assert f"{head['mds_displacement']:.4f}" in dom and "Q/K/V heterogeneity" in dom


def _failing_plot(path):
    path.write_text("half a figure")
    raise ValueError("this plot fails")


def test_a_failed_figure_leaves_no_file_in_the_output_folder(tmp_path):
    from trajcli.report.writers import OutputSet

    with pytest.raises(ValueError, match="this plot fails"):
        with OutputSet(tmp_path) as files:
            files.text("result.json", "{}")
            files.draw("plot.png", _failing_plot)
    assert list(tmp_path.iterdir()) == []


def test_figures_are_drawn_in_the_command_itself(tmp_path):
    import multiprocessing

    write_trajectory("gpt_neox", tmp_path / "run", n=3, seed=2)
    result = run(["similarity", tmp_path / "run", "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert multiprocessing.active_children() == []


def test_log_axis_labels_are_plain_text_not_mathtext(tmp_path):
    from trajcli.report import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1e-4, 1e-3, 2e-1])
    plots._log_scale(ax, "y")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert {"10⁻⁴", "10⁻³", "10⁻²", "10⁻¹"} <= set(labels)
    assert not any("$" in label for label in labels)
    assert plots.plain_log_label(r"$\mathdefault{2\times10^{-3}}$") == "2×10⁻³"
    assert plots.plain_log_label(r"$\mathdefault{-10^{12}}$") == "\u221210¹²"
    assert plots.plain_log_label("step 5") == "step 5"
    # A checkpoint named like a formula is drawn as its name (mathtext would fail on this one).
    plots.trajectory_map(tmp_path / "map.png", np.eye(2), [r"$\frac{$", "b"], "a $\\bad$ title")
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"


def test_map_grid_tiles_of_a_long_run_are_evenly_picked_entries(tmp_path, monkeypatch):
    """Beyond `max_side` checkpoints a tile shows evenly spread rows and columns of its map (first and
    last kept) — the real entries, not a blend — and the title says so."""
    from trajcli.report import plots

    n, side = 300, 120
    rng = np.random.default_rng(0)
    maps = [(f"group{k}", rng.uniform(-1, 1, size=(n, n))) for k in range(3)]
    shown = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, fmt: shown.update(fig=fig))
    plots.map_grid(tmp_path / "grid.png", maps, "maps", max_side=side)
    ax = shown["fig"].axes[0]
    mosaic = np.ma.filled(ax.images[0].get_array(), np.nan)
    picks = [round(i * (n - 1) / (side - 1)) for i in range(side)]
    assert picks[0] == 0 and picks[-1] == n - 1 and len(set(picks)) == side
    for _, matrix in maps:
        tile = matrix[np.ix_(picks, picks)]
        # each tile appears once in the mosaic, entry for entry
        hits = [(r, c) for r, c in np.argwhere(mosaic == tile[0, 0])
                if np.array_equal(mosaic[r:r + side, c:c + side], tile)]
        assert len(hits) == 1
    assert mosaic.shape[1] < 3 * (side + side // 4) + 1
    assert ax.get_title().endswith(f"({side} of {n} rows and columns)")
    plots._pyplot().close(shown["fig"])


def test_a_two_checkpoint_report_says_only_what_trajcli_says_on_stderr(tmp_path):
    """Two checkpoints: every map of displacement and update has one vector and no MDS, so whole
    figures have nothing to draw; stderr holds trajcli's own lines only,
    no library warning."""
    import sys

    write_trajectory("gpt_neox", tmp_path / "run", n=2, seed=5)
    proc = subprocess.run([sys.executable, "-m", "trajcli", "report", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("trajcli: ") for line in lines), proc.stderr
    assert not any("no direction" in line for line in lines)  # one vector per map: nothing is undefined
    assert (tmp_path / "out" / "layers_role_mds.png").read_bytes()[:4] == b"\x89PNG"


def test_each_analysis_is_on_disk_before_the_curvature_is_measured(tmp_path, monkeypatch):
    """A long report shows the pass's results while the curvature runs; a failure then leaves them
    (complete files only: no temp file, no report.html that would claim the whole)."""
    from trajcli.cli import report as report_command
    from trajcli.errors import DataError

    write_trajectory("gpt_neox", tmp_path / "run", n=3, seed=2)
    seen = []

    def measured_later(*args, **kwargs):
        seen.extend(sorted(p.name for p in (tmp_path / "out").iterdir()))
        raise DataError("stopped here by the test", "")

    monkeypatch.setattr(report_command, "measure", measured_later)
    (tmp_path / "tokens.npy").write_bytes(b"")
    result = run(["report", tmp_path / "run", "--out", tmp_path / "out", "--data", tmp_path / "tokens.npy"])
    assert result.exit_code == 1 and "stopped here by the test" in result.stderr
    for stem in ("similarity_raw", "similarity_displacement", "similarity_update", "layers_block", "layers_role",
                 "dynamics", "qkv"):
        assert f"{stem}.json" in seen, (stem, seen)
    assert "similarity_raw.png" in seen and "qkv_mds.png" in seen
    assert "report.html" not in seen and not any(n.endswith(".tmp") for n in seen)
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == [n for n in seen if n != ".trajcli-lock"]  # the command's hold on the folder, let go


def test_without_scale_invariant_weights_the_page_gives_no_regime_and_no_sphere(neox_report):
    root, result = neox_report
    page = (root / "out" / "report.html").read_text()
    report = json.loads((root / "out" / "report.json").read_text())
    dynamics = json.loads((root / "out" / "dynamics.json").read_text())
    assert dynamics["scale_invariant"] == [] and report["headline"]["regime"] is None
    assert all(g["regime"]["verdict"] is None for g in dynamics["groups"])
    assert "Dynamics on the sphere" not in page and "No scale-invariant weights were found" in page
    assert "regime of" not in result.stdout


def _qkv_doc(hets, depths, heads=None):
    layers = []
    for i, (h, d) in enumerate(zip(hets, depths)):
        entry = {"layer": i, "depth": d, "heterogeneity": h}
        if heads is not None:
            entry["heads"] = heads[i]
        layers.append(entry)
    return {"layers": layers}


def test_qkv_findings_say_only_what_the_numbers_show():
    from trajcli.analysis import qkv_findings, qkv_noise_floor

    tight = {"q": [0.50, 0.52, 0.48, 0.50], "k": [0.6, 0.6, 0.6, 0.6], "v": [0.4, 0.41, 0.39, 0.4]}
    floor = qkv_noise_floor({"heads": tight})
    assert floor == pytest.approx(np.std([0.50, 0.52, 0.48, 0.50], ddof=1) / 2)
    depths = [1 / 6, 1 / 2, 5 / 6]
    said = qkv_findings(_qkv_doc([0.001, 0.2, 0.003], depths, [tight] * 3))
    assert said[0] == ("Here ω_Q, ω_K and ω_V differ beyond twice the noise floor in 1 of 3 layers, most in layer 1 "
                       "(h = 0.2); in the other 2 they coincide within it.")
    assert said[1] == ("Mean heterogeneity in the middle third of the depth (0.2) is higher than that over all layers "
                       "(0.068).")
    calm = qkv_findings(_qkv_doc([0.001, 0.0015, 0.003], depths, [tight] * 3))
    assert calm[0] == "Here ω_Q, ω_K and ω_V coincide within twice the noise floor in every layer (largest h = 0.003)."
    assert "lower than" in calm[1]
    unknown = qkv_findings(_qkv_doc([0.1, 0.2, 0.3], depths))
    assert unknown[0].startswith("No noise floor could be computed") and "differ" not in unknown[0]


def test_the_page_states_the_runs_own_qkv_findings_and_marks_the_background(neox_report):
    from trajcli.analysis import QKV_BACKGROUND, qkv_findings

    root, _ = neox_report
    page = (root / "out" / "report.html").read_text()
    qkv = json.loads((root / "out" / "qkv.json").read_text())
    import html as html_module

    for sentence in qkv_findings(qkv):
        assert f"<p class='finding'>{html_module.escape(sentence)}</p>" in page
    assert html_module.escape(QKV_BACKGROUND) in page and QKV_BACKGROUND.startswith("Background from the literature")
    assert "In smaller LLMs the three curves separate" not in page


def _pid_into(path):
    import os
    import signal

    path.write_text(f"{os.getpid()} {signal.getsignal(signal.SIGINT) == signal.SIG_IGN}")


def _slow_into(path):
    import time

    time.sleep(1.5)
    path.write_text("drawn late")


def test_a_drawer_draws_beside_the_command_and_a_failure_leaves_nothing(tmp_path):
    """report's Drawer: every figure drawn once, by a worker process that leaves Ctrl-C to the command;
    a failed figure fails the commit and no file is left; an error while a figure is being drawn waits
    for it, so nothing is written into the folder after its files were removed."""
    import os

    from trajcli.report.drawing import Drawer
    from trajcli.report.writers import OutputSet

    with Drawer() as drawer:
        (tmp_path / "ok").mkdir()
        with OutputSet(tmp_path / "ok", drawer) as files:
            for i in range(4):
                files.draw(f"f{i}.txt", _pid_into)
        drawn = [(tmp_path / "ok" / f"f{i}.txt").read_text().split() for i in range(4)]
        assert all(pid != str(os.getpid()) and ignores == "True" for pid, ignores in drawn)
        (tmp_path / "bad").mkdir()
        with pytest.raises(ValueError, match="this plot fails"):
            with OutputSet(tmp_path / "bad", drawer) as files:
                files.text("result.json", "{}")
                files.draw("plot.png", _failing_plot)
        assert list((tmp_path / "bad").iterdir()) == []
        (tmp_path / "stopped").mkdir()
        with pytest.raises(KeyError):
            with OutputSet(tmp_path / "stopped", drawer) as files:
                files.draw("late.txt", _slow_into)
                files.text("result.json", "{}")
                raise KeyError("the command failed while the figure was being drawn")
        assert list((tmp_path / "stopped").iterdir()) == []


def _kill_myself(path):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_drawing_worker_that_dies_fails_the_command_with_one_line(tmp_path):
    from trajcli.errors import DataError
    from trajcli.report.drawing import Drawer
    from trajcli.report.writers import OutputSet

    with pytest.raises(DataError, match="a drawing worker ended while drawing the figures"):
        with Drawer() as drawer:
            with OutputSet(tmp_path, drawer) as files:
                files.text("result.json", "{}")
                files.draw("plot.png", _kill_myself)
    assert list(tmp_path.iterdir()) == []


def test_a_figure_sent_after_a_drawing_worker_died_fails_with_one_line(tmp_path):
    """The pool breaks when a worker dies; the next figure sent to it (not only a wait) is the same
    one-line error, not a BrokenProcessPool traceback."""
    from trajcli.errors import DataError
    from trajcli.report.drawing import Drawer
    from trajcli.report.writers import OutputSet

    with pytest.raises(DataError, match="a drawing worker ended while drawing the figures"):
        with Drawer() as drawer:
            with OutputSet(tmp_path, drawer) as files:
                files.text("result.json", "{}")
                assert drawer.submit(_kill_myself, (tmp_path / "x",)).exception(timeout=60) is not None
                files.draw("plot.png", _failing_plot)
    assert list(tmp_path.iterdir()) == []
