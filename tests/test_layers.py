"""`trajcli layers` (tensor, block, role), the single read behind it, and `trajcli plot`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import as_array, explicit_matrix, random_trajectory, run, run_json, save_safetensors_dir
from test_qkv import write_trajectory

from trajcli.io import sources


@pytest.fixture
def neox_run(tmp_path):
    """A GPT-NeoX trajectory written by save_pretrained, and the tensors as stored on disk (transformers
    renames some on save, e.g. lm_head -> embed_out)."""
    from safetensors.torch import load_file

    write_trajectory("gpt_neox", tmp_path / "run", n=5, seed=3)
    saved = [load_file(str(tmp_path / "run" / f"step{k}" / "model.safetensors")) for k in range(5)]
    return tmp_path / "run", saved


def test_by_tensor_matches_explicit_per_tensor(neox_run):
    folder, saved = neox_run
    doc = run_json(["layers", folder, "--by", "tensor", "--mode", "update"])
    names = [g["name"] for g in doc["groups"]]
    assert set(names) == set(saved[0])  # masks/buffers are not stored by save_pretrained
    for g in doc["groups"]:
        np.testing.assert_allclose(as_array(g["matrix"]), explicit_matrix(saved, "update", names=[g["name"]]), atol=1e-9)
        assert g["kind"] == "tensor" and g["n_params"] == saved[0][g["name"]].numel()
    layer_of = {g["name"]: g["layer"] for g in doc["groups"]}
    assert layer_of["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"] == 1 and layer_of["gpt_neox.embed_in.weight"] is None


def test_by_block_groups_embedding_blocks_final(neox_run):
    folder, saved = neox_run
    doc = run_json(["layers", folder, "--by", "block", "--mode", "displacement"])
    assert [g["name"] for g in doc["groups"]] == ["embedding", "block.0", "block.1", "final"]
    block1 = [n for n in saved[0] if ".layers.1." in n]
    g = doc["groups"][2]
    np.testing.assert_allclose(as_array(g["matrix"]), explicit_matrix(saved, "displacement", names=block1), atol=1e-9)
    assert g["n_params"] == sum(saved[0][n].numel() for n in block1)
    assert sum(g["n_params"] for g in doc["groups"]) == sum(t.numel() for t in saved[0].values())
    x = np.stack([np.concatenate([s[n].double().reshape(-1).numpy() for n in block1]) for s in saved])
    steps = np.linalg.norm(np.diff(x, axis=0), axis=1)
    assert g["path_length"] == pytest.approx(steps.sum(), rel=1e-12)
    assert g["straightness"] == pytest.approx(np.linalg.norm(x[-1] - x[0]) / steps.sum(), rel=1e-12)


def test_by_role_splits_fused_qkv(neox_run):
    folder, saved = neox_run
    doc = run_json(["layers", folder, "--by", "role"])
    names = [g["name"] for g in doc["groups"]]
    assert names[0] == "embedding"
    assert names[1:6] == ["block.0.attn_q", "block.0.attn_k", "block.0.attn_v", "block.0.attn_o", "block.0.mlp"]
    assert "block.1.norm" in names and names[-2:] == ["norm", "head"]
    assert sum(g["n_params"] for g in doc["groups"]) == sum(t.numel() for t in saved[0].values())
    assert doc["architecture"]["name"] == "gpt_neox"
    # the role split agrees with qkv's own split
    qkv = run_json(["qkv", folder, "--mode", "raw"])
    by_name = {g["name"]: g for g in doc["groups"]}
    for part in "qkv":
        np.testing.assert_allclose(as_array(by_name[f"block.0.attn_{part}"]["matrix"]),
                                   as_array(qkv["layers"][0][part]["matrix"]), atol=1e-12)


def test_two_checkpoints_give_one_vector_maps_without_a_frozen_warning(tmp_path):
    """Two checkpoints: one displacement or update vector per group, a 1 × 1 map (cosine 1), no pair
    and so no MDS — but no vector without a direction, so no warning that one is frozen."""
    sds = random_trajectory(2, seed=4)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    for mode in ("displacement", "update"):
        result = run(["layers", tmp_path / "run", "--by", "tensor", "--mode", mode, "--json"])
        assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
        groups = json.loads(result.stdout)["groups"]
        assert groups and all(g["matrix"] == [[1.0]] and g["mds"] is None for g in groups)
    # a frozen tensor is still named
    for k in range(2):
        save_safetensors_dir(tmp_path / "frozen" / f"step{k}", {**sds[k], "embed.weight": sds[0]["embed.weight"]})
    result = run(["layers", tmp_path / "frozen", "--by", "tensor", "--mode", "update", "--json"])
    assert result.exit_code == 0 and "1 group(s) have vectors with no direction" in result.stderr
    assert ": embed.weight;" in result.stderr


def test_role_without_a_known_architecture_keeps_roles_by_name(tmp_path):
    sds = random_trajectory(3, seed=4)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"step{k}", sd)
    doc = run_json(["layers", tmp_path, "--by", "role"])
    assert doc["architecture"]["name"] is None
    assert {g["name"] for g in doc["groups"]} >= {"embedding", "block.0.norm", "head"}


def test_layers_files(neox_run, tmp_path):
    folder, _ = neox_run
    out = tmp_path / "out"
    result = run(["layers", folder, "--by", "block", "--out", out])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grams.npz", "layers.csv", "layers.json", "layers_maps.png",
                                                     "layers_mds.png"]
    rows = (out / "layers.csv").read_text().splitlines()
    assert rows[0].startswith("name,kind,layer,role,n_params,mds,")
    assert len(rows) == 5 and rows[2].startswith("block.0,block,0,")
    doc = json.loads((out / "layers.json").read_text())
    assert doc["schema"] == "trajcli.layers/1" and doc["n_blocks"] == 2


@pytest.mark.parametrize("command", [["layers", "--by", "tensor"], ["layers", "--by", "role"],
                                     ["qkv", "--per-head"], ["similarity"]])
def test_every_byte_is_read_once(neox_run, monkeypatch, command):
    folder, saved = neox_run
    read_elems = []
    original = sources.CheckpointReader.read_into

    def counting(self, name, row_start, row_stop, out):
        read_elems.append(out.size)
        return original(self, name, row_start, row_stop, out)

    monkeypatch.setattr(sources.CheckpointReader, "read_into", counting)
    result = run([command[0], folder, *command[1:], "--json"])
    assert result.exit_code == 0, result.stderr
    assert sum(read_elems) == len(saved) * sum(t.numel() for t in saved[0].values())


def test_plot_redraws_and_overlays_without_checkpoints(tmp_path):
    for name, size in (("small", "gpt_neox"), ("large", "falcon")):
        write_trajectory(size, tmp_path / name / "run")
        assert run(["qkv", tmp_path / name / "run", "--per-head", "--out", tmp_path / name]).exit_code == 0
        assert run(["layers", tmp_path / name / "run", "--out", tmp_path / name]).exit_code == 0
        shutil.rmtree(tmp_path / name / "run")  # plot must not need the checkpoints
    out = tmp_path / "plots"
    result = run(["plot", tmp_path / "small" / "qkv.json", tmp_path / "large" / "qkv.json", "--out", out])
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "qkv_overlay.png" in names and "qkv_mds-small.png" in names and "qkv_heads-large.png" in names
    result = run(["plot", tmp_path / "small" / "layers.json", tmp_path / "large" / "layers.json",
                  "--label", "70m", "--label", "1b", "--out", out, "--format", "svg"])
    assert result.exit_code == 0, result.stderr
    assert (out / "layers_overlay.svg").read_text().lstrip().startswith("<?xml")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other/1"}')
    result = run(["plot", bad, "--out", out])
    assert result.exit_code == 1 and "does not draw" in result.stderr
    # a map that is not a square table (an edited or foreign file): one line, no traceback
    doc = json.loads((tmp_path / "small" / "layers.json").read_text())
    doc["groups"][1]["matrix"][0] = doc["groups"][1]["matrix"][0][:-1]
    bad.write_text(json.dumps(doc))
    result = run(["plot", bad, "--out", out])
    assert result.exit_code == 1 and "not a square table of numbers" in result.stderr and str(bad) in result.stderr
    assert "Traceback" not in result.stderr
    del doc["groups"][1]["matrix"]
    bad.write_text(json.dumps(doc))
    assert "a map is missing" in run(["plot", bad, "--out", out]).stderr


def test_curve_figures_get_the_documents_without_their_maps(tmp_path, monkeypatch):
    """Each figure gets what it draws: the MDS curves and bars get no N × N maps (a long run's are
    hundreds of megabytes), the map grids get every map, NaN where null."""
    from trajcli.report import drawing

    write_trajectory("gpt_neox", tmp_path / "run")
    assert run(["qkv", tmp_path / "run", "--per-head", "--out", tmp_path / "out"]).exit_code == 0
    sds = random_trajectory(4, seed=6)
    for k, sd in enumerate(sds):  # one tensor frozen: its map is null
        save_safetensors_dir(tmp_path / "frozen" / f"step{k}", {**sd, "embed.weight": sds[0]["embed.weight"]})
    assert run(["layers", tmp_path / "frozen", "--by", "tensor", "--mode", "update", "--out", tmp_path / "out"]).exit_code == 0
    sent = []
    monkeypatch.setattr(drawing, "run", lambda jobs: sent.extend((plot.__name__, args) for plot, args in jobs))
    result = run(["plot", tmp_path / "out" / "layers.json", tmp_path / "out" / "qkv.json", "--out", tmp_path / "plots"])
    assert result.exit_code == 0, result.stderr
    drawn = dict(sent)
    assert set(drawn) == {"layers_mds", "map_grid", "qkv_curves", "qkv_heterogeneity", "qkv_heads"}
    assert '"matrix"' not in repr(drawn["layers_mds"]) and "'matrix'" not in repr(drawn["layers_mds"])
    for name in ("qkv_curves", "qkv_heterogeneity", "qkv_heads"):
        assert "'matrix'" not in repr(drawn[name]), name
    saved = json.loads((tmp_path / "out" / "layers.json").read_text())["groups"]
    maps = drawn["map_grid"][1]
    assert [n for n, _ in maps] == [g["name"] for g in saved]
    for (_, m), g in zip(maps, saved):
        np.testing.assert_array_equal(m, np.array([[np.nan if v is None else v for v in row] for row in g["matrix"]]))
    assert np.isnan(dict(maps)["embed.weight"]).all()  # null entries came back as NaN


def test_result_documents_read_as_the_standard_library_reads_them(tmp_path, monkeypatch):
    """plot and compare read trajcli's documents through orjson (3× quicker on a long run's maps); what
    only Python's json accepts — NaN and Infinity literals, as json.dumps writes them into a document
    edited in Python — is still read, to the same values."""
    from trajcli.io.jsonfile import parse_result
    from trajcli.report import drawing

    for text in ('{"a": 1, "a": [0.1, -0.0, 1e-400, null, true, 18446744073709551615]}', "[NaN, Infinity, -Infinity]",
                 "[1e400]", '"\\ud800"', '{"schema": "trajcli.layers/1", "m": [[1.0, 0.30000000000000004]]}'):
        assert repr(parse_result(text)) == repr(json.loads(text)), text
    with pytest.raises(json.JSONDecodeError):
        parse_result("[1,]")
    write_trajectory("gpt_neox", tmp_path / "run")
    assert run(["layers", tmp_path / "run", "--out", tmp_path / "out"]).exit_code == 0
    doc = json.loads((tmp_path / "out" / "layers.json").read_text())
    doc["groups"][0]["matrix"][0][1] = doc["groups"][0]["matrix"][1][0] = float("nan")
    (tmp_path / "edited.json").write_text(json.dumps(doc))  # NaN, not null
    sent = []
    monkeypatch.setattr(drawing, "run", lambda jobs: sent.extend((plot.__name__, args) for plot, args in jobs))
    result = run(["plot", tmp_path / "edited.json", "--out", tmp_path / "plots"])
    assert result.exit_code == 0, result.stderr
    maps = dict(sent)["map_grid"][1]
    first = np.array([[np.nan if v is None else v for v in row] for row in doc["groups"][0]["matrix"]])
    np.testing.assert_array_equal(maps[0][1], first)
    assert np.isnan(maps[0][1][0, 1]) and np.isfinite(maps[0][1][0, 2])
