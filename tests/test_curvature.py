"""`trajcli curvature`: Hessian eigenvalues, trace, curvature along the step and the gradient glass,
checked against closed forms (a quadratic loss) and explicit dense Hessians (a real transformers model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from curvature_models import MLP
from helpers import run, run_json
from safetensors.torch import save_file


def _save(folder, sd, config):
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


def _least_squares_run(tmp_path, x, y, thetas):
    """Checkpoints of nn.Linear(D, 1) at the given (w, b), and the data file."""
    d = x.shape[1]
    for k, (w, b) in enumerate(thetas):
        _save(tmp_path / "run" / f"checkpoint-{10 * k}", {"weight": w.reshape(1, d).float(), "bias": b.reshape(1).float()},
              {"features": d})
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    return tmp_path / "run", tmp_path / "data.npz"


def _quadratic_truth(x, y, w, b):
    """Loss, gradient and Hessian of mean((Xw + b − y)²) in float64, parameters ordered (w, b)."""
    a = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1).numpy()  # (n, D+1)
    theta = np.concatenate([w.numpy(), [float(b)]])
    r = a @ theta - y.numpy()
    n = len(r)
    return float(r @ r / n), 2 * a.T @ r / n, 2 * a.T @ a / n


def test_quadratic_loss_matches_its_closed_form(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    thetas = [(torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(1, generator=gen, dtype=torch.float64))
              for _ in range(3)]
    thetas = [(w.float().double(), b.float().double()) for w, b in thetas]  # what float32 files hold
    run_dir, data = _least_squares_run(tmp_path, x, y, thetas)
    doc = run_json(["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares",
                    "--batch-size", "40", "--top-k", "3", "--lr", "0.01", "--momentum", "0.9"])
    assert doc["schema"] == "trajcli.curvature/1" and doc["steps"] == [0, 10, 20]
    assert doc["model"]["n_params"] == 7 and doc["data"]["batch_size"] == 40
    for k, (p, (w, b)) in enumerate(zip(doc["points"], thetas)):
        loss, grad, hess = _quadratic_truth(x, y, w, b)
        eig = np.linalg.eigvalsh(hess)[::-1]
        assert p["loss"] == pytest.approx(loss, rel=1e-12)
        assert p["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-10)
        np.testing.assert_allclose(p["eigenvalues"], eig[:3], rtol=1e-10)
        assert p["lanczos"]["converged"] and p["lanczos"]["iterations"] <= 7
        assert p["trace"]["method"] == "exact" and p["trace"]["value"] == pytest.approx(np.trace(hess), rel=1e-12)
        if k + 1 < len(thetas):  # along the step: exact for a quadratic, at every h
            delta = np.concatenate([thetas[k + 1][0] - w, thetas[k + 1][1] - b])
            u = delta / np.linalg.norm(delta)
            direction = p["direction"]
            assert direction["step_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-12)
            assert direction["u_h_u"] == pytest.approx(u @ hess @ u, rel=1e-10)
            for fd in direction["finite_difference"]:
                assert fd["curvature"] == pytest.approx(u @ hess @ u, rel=1e-6)
            # h = ‖Δθ‖ lands on the next checkpoint
            assert direction["finite_difference"][-1]["loss_plus"] == pytest.approx(doc["points"][k + 1]["loss"], rel=1e-12)
        else:
            assert p["direction"] is None
        # a quadratic has no glass: (g⁺ + g⁻)/2 = g⁰ up to rounding
        model = p["glass"][0]
        assert model["name"] == "model" and max(model["mean_sq_jump"]) < 1e-20
    edges = doc["edge_of_stability"]
    assert edges["gd"]["values"] == pytest.approx([200.0] * 3)
    assert edges["momentum"]["values"] == pytest.approx([380.0] * 3)
    assert edges["adam_preconditioned"]["values"] == pytest.approx([3800.0] * 3)
    assert "preconditioned" in edges["adam_preconditioned"]["applies_to"]


def _diagonal_design(n, spectrum, gen):
    """X whose columns are orthogonal to each other and to 1, with ‖x_i‖² = n·s_i/2: the Hessian of the
    least-squares loss is then diag(spectrum, 2) exactly."""
    m = torch.cat([torch.ones(n, 1, dtype=torch.float64),
                   torch.randn(n, len(spectrum), generator=gen, dtype=torch.float64)], dim=1)
    q, _ = torch.linalg.qr(m)
    return q[:, 1:] * torch.sqrt(torch.tensor(spectrum, dtype=torch.float64) * n / 2)


def test_lanczos_and_hutchinson_on_a_large_quadratic(tmp_path):
    """200 parameters, more than the Lanczos iterations and the trace samples: the top eigenvalues
    to the tolerance, and Rademacher Hutchinson exact on a diagonal Hessian."""
    gen = torch.Generator().manual_seed(1)
    spectrum = [10.0, 8.0, 6.5] + list(np.linspace(0.1, 1.0, 196))
    n = 400
    x = _diagonal_design(n, spectrum, gen)
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    thetas = [(torch.randn(len(spectrum), generator=gen, dtype=torch.float64).float().double(), torch.zeros(1, dtype=torch.float64))]
    run_dir, data = _least_squares_run(tmp_path, x, y, thetas)
    doc = run_json(["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares",
                    "--batch-size", str(n), "--top-k", "3", "--tol", "1e-9", "--lanczos-iters", "60",
                    "--trace-samples", "8", "--exact-trace-max", "0"])
    p = doc["points"][0]
    assert p["lanczos"]["converged"] and not p["lanczos"]["exhausted"] and p["lanczos"]["iterations"] < 60
    np.testing.assert_allclose(p["eigenvalues"], [10.0, 8.0, 6.5], rtol=1e-4)
    assert max(p["lanczos"]["residuals"]) <= 1e-9 * 10.0 * 1.0001
    assert p["trace"]["method"] == "hutchinson" and p["trace"]["samples"] == 8
    assert p["trace"]["value"] == pytest.approx(sum(spectrum) + 2.0, rel=1e-10)
    assert p["trace"]["stderr"] == pytest.approx(0.0, abs=1e-9)
    assert any("no learning rate" in line for line in [run(["curvature", run_dir, "--data", data, "--model",
                                                                "curvature_models:least_squares"]).stderr])


def _mlp_run(tmp_path, activation, n=256, features=4, hidden=32, seed=0):
    """An MLP whose hidden pre-activations are all small (first layers scaled by 1e-3): for ReLU, a
    point dense in kinks — thousands of (example, unit) pairs within σ of a kink."""
    torch.manual_seed(seed)
    model = MLP(features, hidden, activation)
    with torch.no_grad():
        for layer in model.layers[:2]:
            layer.weight.mul_(1e-3)
            layer.bias.mul_(1e-3)
    config = {"features": features, "hidden": hidden, "activation": activation}
    _save(tmp_path / activation / "step0", model.state_dict(), config)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    np.savez(tmp_path / f"{activation}.npz", x=x.numpy(), y=torch.sin(x.sum(1)).numpy())
    return tmp_path / activation, tmp_path / f"{activation}.npz"


def test_glass_exponent_is_four_for_a_smooth_network_and_lower_for_relu(tmp_path):
    exponents = {}
    for activation in ("tanh", "relu"):
        run_dir, data = _mlp_run(tmp_path, activation)
        doc = run_json(["curvature", run_dir, "--data", data, "--model", "curvature_models:mlp", "--batch-size", "256",
                        "--glass-samples", "4", "--top-k", "1"])
        glass = {g["name"]: g for g in doc["points"][0]["glass"]}
        assert list(glass) == ["model", "block.0", "block.1", "block.2"]
        assert glass["model"]["n_params"] == 4 * 32 + 32 + 32 * 32 + 32 + 32 + 1
        exponents[activation] = {name: g["exponent"] for name, g in glass.items()}
        # the definitions, checked on the numbers themselves
        g = glass["model"]
        sigmas = np.array(doc["settings"]["sigmas"])
        np.testing.assert_allclose(g["glass_density"], 2 * np.array(g["mean_sq_jump"]) / sigmas, rtol=1e-12)
        np.testing.assert_allclose(g["glass_to_hessian"], np.array(g["glass_density"]) / np.array(g["hessian_diag"]),
                                   rtol=1e-12)
        slope = np.polyfit(np.log(sigmas), np.log(g["mean_sq_jump"]), 1)[0]
        assert g["exponent"] == pytest.approx(slope, rel=1e-12)
        assert len(g["mean_sq_jump_stderr"]) == len(sigmas) and len(g["hessian_diag_stderr"]) == len(sigmas)
        if activation == "tanh":  # smooth: p = 4 between every pair of neighbouring σ, within its errors
            assert g["exponent_holds"] is True
            for slope_k, err_k in zip(g["local_exponents"], g["local_exponent_errors"]):
                assert abs(slope_k - 4.0) <= 3 * err_k + 0.15, (g["local_exponents"], g["local_exponent_errors"])
    assert all(p == pytest.approx(4.0, abs=0.15) for p in exponents["tanh"].values()), exponents
    assert exponents["relu"]["model"] < 2.0, exponents  # gradient jumps at the ReLU kinks dominate
    assert exponents["relu"]["block.0"] < 2.0, exponents


# ---- a real transformers model, built from config.json ---------------------------------------------

def _gpt2_run(tmp_path, n_ckpt=2):
    """A tiny GPT-2 (tied embeddings) saved by save_pretrained at a few points, and token ids."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    for k in range(n_ckpt):
        model.save_pretrained(tmp_path / "run" / f"checkpoint-{k + 1}")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 16, (12, 8), generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "tokens.npy", tokens.numpy())
    return transformers, tmp_path / "run", tmp_path / "tokens.npy"


def _dense_hessian(model, tokens):
    """The explicit float64 Hessian of the causal-LM loss, column by column."""
    params = list(model.parameters())
    loss = model(input_ids=tokens, labels=tokens).loss
    grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    cols = []
    for i in range(grads.numel()):
        row = torch.autograd.grad(grads[i], params, retain_graph=True)
        cols.append(torch.cat([r.reshape(-1) for r in row]))
    return float(loss.detach()), grads.detach().numpy(), torch.stack(cols).numpy()


def test_hugging_face_model_from_config_matches_a_dense_hessian(tmp_path):
    transformers, run_dir, tokens_file = _gpt2_run(tmp_path)
    doc = run_json(["curvature", run_dir, "--data", tokens_file, "--batch-size", "5", "--seed", "3",
                    "--top-k", "2", "--tol", "1e-10", "--lanczos-iters", "400", "--trace-samples", "64",
                    "--exact-trace-max", "0"])
    assert doc["model"]["source"].startswith("transformers GPT2LMHeadModel")
    tokens = torch.from_numpy(np.load(tokens_file))
    rows = np.sort(np.random.default_rng(3).choice(12, size=5, replace=False))
    assert doc["data"] == {"file": str(tokens_file), "kind": "tokens", "rows_available": 12, "batch_size": 5,
                           "batch_size_requested": 5, "seed": 3, "seq_len": 8}
    for k, point in enumerate(doc["points"]):
        model = transformers.GPT2LMHeadModel.from_pretrained(run_dir / f"checkpoint-{k + 1}", dtype=torch.float64,
                                                             attn_implementation="eager").eval()
        loss, grad, hess = _dense_hessian(model, tokens[rows])
        assert doc["model"]["n_params"] == len(grad)  # the tied head counted once
        eig = np.linalg.eigvalsh(hess)[::-1]
        assert point["loss"] == pytest.approx(loss, rel=1e-12)
        assert point["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-10)
        np.testing.assert_allclose(point["eigenvalues"], eig[:2], rtol=1e-6)
        trace = point["trace"]
        assert trace["method"] == "hutchinson" and trace["stderr"] > 0
        assert abs(trace["value"] - np.trace(hess)) < 5 * trace["stderr"]


def test_text_data_is_tokenized_with_the_checkpoints_tokenizer(tmp_path):
    transformers, run_dir, _ = _gpt2_run(tmp_path, n_ckpt=1)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate("a b c d e f g h i j k l m n o p".split())}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(run_dir / "checkpoint-1")
    words = "a b c d e f g h i j k l m n o p".split()
    text = " ".join(words[(3 * i) % 16] for i in range(40))
    (tmp_path / "text.txt").write_text(text)
    from trajcli.curvature.batch import load_batch

    batch = load_batch(tmp_path / "text.txt", batch_size=100, seed=0, seq_len=8, tokenizer_dirs=[run_dir / "checkpoint-1"],
                       vocab_size=16)
    expected = torch.tensor([(3 * i) % 16 for i in range(40)]).view(5, 8)
    assert batch.description["kind"] == "text" and batch.description["batch_size"] == 5
    assert torch.equal(batch.data, expected)
    result = run(["curvature", run_dir, "--data", tmp_path / "text.txt", "--seq-len", "8", "--json", "--batch-size", "8"])
    assert result.exit_code == 0, result.stderr
    assert "fewer than --batch-size 8" in result.stderr
    whole = run(["curvature", run_dir, "--data", tmp_path / "text.txt", "--seq-len", "8", "--json"])
    assert json.loads(whole.stdout)["data"]["batch_size"] == 5 and "rows of text.txt" not in whole.stderr
    part = run(["curvature", run_dir, "--data", tmp_path / "text.txt", "--seq-len", "8", "--json", "--batch-size", "2"])
    assert "the curvature is that of 2 of the 5 rows of text.txt" in part.stderr
    assert json.loads(result.stdout)["data"]["kind"] == "text"


def test_the_demo_model_matches_transformers_gpt_neox(tmp_path):
    """--model trajcli.demo:curvature_model (no transformers needed) and transformers' own GPTNeoX
    built from the demo's config.json measure the same curvature."""
    pytest.importorskip("transformers")
    from trajcli.demo import make_demo_trajectory, write_demo_tokens

    make_demo_trajectory(tmp_path / "ck", steps=[0, 4])
    write_demo_tokens(tmp_path / "tokens.npy")
    common = ["curvature", tmp_path / "ck", "--data", tmp_path / "tokens.npy", "--batch-size", "4", "--top-k", "1",
              "--trace-samples", "2", "--glass-samples", "1", "--sigmas", "1e-4,1e-3"]
    ours = run_json(common + ["--model", "trajcli.demo:curvature_model"])
    theirs = run_json(common)
    assert ours["model"]["n_params"] == theirs["model"]["n_params"]
    assert ours["lr_source"] == "trainer_state.json log_history"
    for a, b in zip(ours["points"], theirs["points"]):
        # transformers computes the rotary angles in float32 whatever the model's dtype
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["eigenvalues"][0] == pytest.approx(b["eigenvalues"][0], rel=1e-5)
        assert a["trace"]["value"] == pytest.approx(b["trace"]["value"], rel=1e-5)


# ---- files, report, errors --------------------------------------------------------------------------

def test_files_and_report_section(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    thetas = [(torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(1, generator=gen, dtype=torch.float64))
              for _ in range(3)]
    run_dir, data = _least_squares_run(tmp_path, x, x.sum(1), thetas)
    result = run(["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares", "--out",
                  tmp_path / "out", "--lr", "0.1", "--top-k", "2"])
    assert result.exit_code == 0, result.stderr
    names = ["curvature.json", "curvature.csv", "sharpness.png", "hessian_trace.png", "glass.png"]
    assert all((tmp_path / "out" / n).is_file() for n in names)
    doc = json.loads((tmp_path / "out" / "curvature.json").read_text())
    lines = (tmp_path / "out" / "curvature.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:6] == ["checkpoint", "step", "loss", "grad_norm", "lambda_1", "lambda_2"] and "edge_gd" in header
    assert len(lines) == 4
    first = dict(zip(header, lines[1].split(",")))
    assert float(first["lambda_1"]) == doc["points"][0]["eigenvalues"][0] and float(first["edge_gd"]) == 20.0
    assert "λ_max" in result.stdout

    report = run(["report", run_dir, "--out", tmp_path / "report", "--data", data, "--model",
                  "curvature_models:least_squares", "--quiet"])
    assert report.exit_code == 0, report.stderr
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(names) <= set(document["files"])
    assert document["headline"]["sharpness_last"] == pytest.approx(doc["points"][-1]["eigenvalues"][0], rel=1e-12)
    assert any("the 2/η line is left out" in w for w in document["warnings"])  # no --lr: the curvature says so
    page = (tmp_path / "report" / "report.html").read_text()
    assert "id='curvature'" in page and "sharpness" in page


def test_errors_name_what_is_wrong(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    run_dir, data = _least_squares_run(tmp_path, x, x.sum(1), [(torch.zeros(3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))])
    args = ["curvature", run_dir, "--data", data]

    result = run(args + ["--model", "no_such_module_here:build"])
    assert result.exit_code == 2 and "importing no_such_module_here failed" in result.stderr

    result = run(args + ["--model", "curvature_models"])
    assert result.exit_code == 2 and "is not MODULE:FUNCTION" in result.stderr

    result = run(args + ["--model", "curvature_models:mlp"])  # config has no "hidden"
    assert result.exit_code == 2 and "raised KeyError" in result.stderr

    (tmp_path / "wrong.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 1), lambda m, b: m(b['x']).sum()\n")
    result = run(args + ["--model", f"{tmp_path / 'wrong.py'}:build"])
    assert result.exit_code == 1 and "shape [1, 3]" in result.stderr and "[1, 4]" in result.stderr

    (tmp_path / "named.py").write_text("import torch\ndef build():\n    m = torch.nn.Sequential(torch.nn.Linear(3, 1))\n"
                                       "    return m, lambda m, b: m(b['x']).sum()\n")
    result = run(args + ["--model", f"{tmp_path / 'named.py'}:build"])
    assert result.exit_code == 1 and "0.weight" in result.stderr and "are not in the checkpoint" in result.stderr
    assert "Traceback" not in result.stderr

    result = run(args)  # no --model, and the folder is not a transformers model
    assert result.exit_code in (1, 2) and "error:" in result.stderr and "--model" in result.stderr

    result = run(args + ["--model", "curvature_models:least_squares", "--sigmas", "0,1e-3"])
    assert result.exit_code == 2 and "positive" in result.stderr

    result = run(["report", run_dir, "--out", tmp_path / "r", "--model", "curvature_models:least_squares"])
    assert result.exit_code == 2 and "--model needs --data" in result.stderr


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    _, run_dir, _ = _gpt2_run(tmp_path, n_ckpt=1)
    np.save(tmp_path / "bad.npy", np.arange(40, dtype=np.int64))
    result = run(["curvature", run_dir, "--data", tmp_path / "bad.npy", "--seq-len", "8"])
    assert result.exit_code == 1 and "token ids span 0..39" in result.stderr and "16" in result.stderr


def test_cuda_without_a_device_is_a_usage_error_here_too(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; this checks the message on machines without one")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    run_dir, data = _least_squares_run(tmp_path, x, x.sum(1), [(torch.zeros(3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))])
    result = run(["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares", "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


def test_strict_refuses_weights_holding_nan_before_measuring(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    w = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    run_dir, data = _least_squares_run(tmp_path, x, x.sum(1), [(torch.ones(3, dtype=torch.float64), torch.zeros(1)),
                                                               (w, torch.zeros(1))])
    args = ["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares"]
    loose = run(args)
    assert loose.exit_code == 1 and "the loss on the batch is nan" in loose.stderr
    strict = run(args + ["--strict"])
    assert strict.exit_code == 1 and "checkpoint-10: 1 weight(s) hold NaN/Inf values (--strict)" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_hessian_diag_is_the_mean_of_absolute_values_as_documented(tmp_path):
    """L(w) = w₀·w₁: ĥ = z ⊙ Hz = (z₀z₁, z₁z₀), ±1 in every coordinate for every z, so E|ĥ| = 1 exactly
    — whatever the samples; |E ĥ| (averaging first) would shrink towards 0 as samples are added."""
    (tmp_path / "saddle.py").write_text(
        "import torch\n"
        "def build():\n"
        "    m = torch.nn.Module()\n"
        "    m.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))\n"
        "    return m, lambda m, b: m.w[0] * m.w[1] + 0 * b['x'].sum()\n")
    _save(tmp_path / "run" / "step0", {"w": torch.tensor([0.3, -0.7])}, {})
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 1)))
    doc = run_json(["curvature", tmp_path / "run", "--data", tmp_path / "data.npz", "--model",
                    f"{tmp_path / 'saddle.py'}:build", "--top-k", "1", "--glass-samples", "16"])
    model = next(g for g in doc["points"][0]["glass"] if g["name"] == "model")
    np.testing.assert_allclose(model["hessian_diag"], 1.0, rtol=1e-9)


def _two_parameter_run(tmp_path, loss_expr: str, w, data_x):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "probe.py").write_text(
        "import torch\n"
        "def build():\n"
        "    m = torch.nn.Module()\n"
        "    m.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))\n"
        f"    return m, lambda m, b: {loss_expr}\n")
    _save(tmp_path / "run" / "step0", {"w": torch.tensor(w, dtype=torch.float64)}, {})
    np.savez(tmp_path / "data.npz", x=np.asarray(data_x, dtype=np.float64))
    return ["curvature", tmp_path / "run", "--data", tmp_path / "data.npz", "--model", f"{tmp_path / 'probe.py'}:build",
            "--top-k", "1"]


def test_expected_loss_curvature_equals_the_trace_for_a_smooth_loss_and_not_at_a_kink(tmp_path):
    """Least squares: L(θ ± σz) − L(θ) is exactly quadratic, so each sample is zᵀHz and their mean is tr H
    within its standard error. ReLU at a point 1e-7 from its kink: tr H = 0 there, but a step of
    σ ≫ 1e-7 crosses the kink, and the expected loss curvature is far above 0 (beyond its error)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    run_dir, data = _least_squares_run(tmp_path / "ls", x, x.sum(1), [(torch.tensor([0.2, -0.1, 0.4]),
                                                                       torch.tensor([0.3]))])
    doc = run_json(["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares",
                    "--batch-size", "10", "--glass-samples", "32", "--top-k", "1"])
    point = doc["points"][0]
    trace = point["trace"]["value"]
    for entry in point["loss_curvature"]:
        assert entry["stderr"] > 0
        assert abs(entry["value"] - trace) <= 3 * entry["stderr"] + 1e-4 * abs(trace), (entry, trace)

    args = _two_parameter_run(tmp_path / "relu", "torch.relu(b['x'] @ m.w).mean()", [1e-7, 0.0], [[1.0, 0.5]])
    doc = run_json([*args, "--glass-samples", "16", "--sigmas", "1e-4,1e-3"])
    point = doc["points"][0]
    assert point["trace"]["value"] == 0.0
    for entry in point["loss_curvature"]:
        assert entry["value"] - 0.0 > 3 * entry["stderr"] and entry["value"] > 100, entry


def test_a_kink_onset_inside_the_sigma_grid_is_said_not_fitted_away(tmp_path):
    """tanh in w₀ (smooth: E[d²] ∝ σ⁴) plus a ReLU in w₁ whose kink is 1e-4 away: below 1e-4 the local
    exponent is 4, above it the gradient jump dominates; one p over the grid would describe neither."""
    args = _two_parameter_run(tmp_path, "torch.tanh(m.w[0] + 0 * b['x'].sum()) + torch.relu(m.w[1] - 1e-4)",
                              [0.7, 0.0], [[0.0]])
    result = run([*args, "--glass-samples", "4", "--sigmas", "1e-6,1e-5,3e-4,1e-3"])
    assert result.exit_code == 0, result.stderr
    assert "glass: the local exponents of E[d²] between neighbouring σ disagree beyond their errors" in result.stderr
    smooth = run([*_two_parameter_run(tmp_path / "smooth", "torch.tanh(m.w[0] + 0 * b['x'].sum()) + m.w[1] ** 2",
                                      [0.7, 0.0], [[0.0]]), "--glass-samples", "4", "--sigmas", "1e-6,1e-5,3e-4,1e-3"])
    assert smooth.exit_code == 0 and "disagree beyond their errors" not in smooth.stderr


def test_hutchinson_draws_fresh_probes_at_each_checkpoint_and_is_exact_below_the_threshold(tmp_path):
    """Two checkpoints with the same weights: the glass directions are the same (its comparison along
    the run is the point), the trace's probes are not (shared probes would make their error a trend)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(60, 30, generator=gen, dtype=torch.float64)
    w = torch.randn(30, generator=gen, dtype=torch.float64)
    run_dir, data = _least_squares_run(tmp_path, x, x @ w, [(w.float().double(), torch.zeros(1, dtype=torch.float64))] * 2)
    common = ["curvature", run_dir, "--data", data, "--model", "curvature_models:least_squares", "--top-k", "1",
              "--trace-samples", "4"]
    doc = run_json([*common, "--exact-trace-max", "0"])
    first, second = doc["points"]
    assert first["trace"]["method"] == second["trace"]["method"] == "hutchinson"
    assert first["trace"]["value"] != second["trace"]["value"]
    assert first["glass"][0]["hessian_diag"] == second["glass"][0]["hessian_diag"]
    exact = run_json(common)["points"][0]["trace"]  # 31 parameters: below the default threshold of 2048
    a = torch.cat([x, torch.ones(60, 1, dtype=torch.float64)], dim=1).numpy()
    assert exact["method"] == "exact" and exact["value"] == pytest.approx(np.trace(2 * a.T @ a / 60), rel=1e-12)
