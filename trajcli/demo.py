"""The built-in demo trajectory: a tiny GPT-NeoX-layout transformer trained in pure torch.

The model follows GPT-NeoX's parameter names and layouts (a fused `query_key_value` interleaved per
head, parallel residual, rotary embeddings, untied `embed_out`), so the saved checkpoints read like a
miniature Pythia run: `step0`, `step1`, `step2`, `step4` … then evenly spaced, each a sharded
safetensors folder with `config.json` and a `trainer_state.json` holding the learning rate used at
every step. The task is synthetic next-token prediction (a fixed random Markov chain), trained with
AdamW and weight decay under a warm-up + cosine schedule — or, for the sweep, with SGD under four
settings of momentum and weight decay. No network, no download.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

DEMO_CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "vocab_size": 64,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 64,
    "rotary_pct": 1.0,
    "rotary_emb_base": 10000,
    "use_parallel_residual": True,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "tie_word_embeddings": False,
    "attention_bias": True,
    "torch_dtype": "float32",
}
# Pythia-like: log-spaced early checkpoints, then evenly spaced ones.
DEMO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1024]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class NeoXLayer(nn.Module):
    def __init__(self, d: int, n_head: int, d_ff: int, eps: float):
        super().__init__()
        self.n_head, self.head_dim = n_head, d // n_head
        self.input_layernorm = nn.LayerNorm(d, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(d, eps=eps)
        self.attention = nn.Module()
        self.attention.query_key_value = nn.Linear(d, 3 * d)
        self.attention.dense = nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = nn.Linear(d, d_ff)
        self.mlp.dense_4h_to_h = nn.Linear(d_ff, d)

    def attend(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.attention.query_key_value(x)  # (b, t, 3d), interleaved per head
        qkv = qkv.view(b, t, self.n_head, 3 * self.head_dim).transpose(1, 2)  # (b, h, t, 3·hd)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, h, t, hd)
        return self.attention.dense(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp.dense_4h_to_h(F.gelu(self.mlp.dense_h_to_4h(self.post_attention_layernorm(x))))
        return x + self.attend(self.input_layernorm(x), cos, sin) + mlp


class TinyNeoX(nn.Module):
    """GPT-NeoX in miniature; state_dict keys match transformers' GPTNeoXForCausalLM."""

    def __init__(self, cfg: dict = DEMO_CONFIG):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.gpt_neox = nn.Module()
        self.gpt_neox.embed_in = nn.Embedding(cfg["vocab_size"], d)
        self.gpt_neox.layers = nn.ModuleList(
            NeoXLayer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps) for _ in range(cfg["num_hidden_layers"])
        )
        self.gpt_neox.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.embed_out = nn.Linear(d, cfg["vocab_size"], bias=False)
        hd = d // cfg["num_attention_heads"]
        inv_freq = 1.0 / (cfg["rotary_emb_base"] ** (torch.arange(0, hd, 2).float() / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.gpt_neox.embed_in(idx)
        for layer in self.gpt_neox.layers:
            x = layer(x, cos, sin)
        return self.embed_out(self.gpt_neox.final_layer_norm(x))


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1] (as transformers' labels=)."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def curvature_model(config: dict | None = None) -> tuple[nn.Module, object]:
    """`trajcli curvature --model trajcli.demo:curvature_model`: the demo model and its loss."""
    return TinyNeoX(config or DEMO_CONFIG), next_token_loss


def save_sharded(state: dict[str, torch.Tensor], folder: Path, n_shards: int = 2) -> None:
    """save_pretrained's layout: model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    per = math.ceil(len(names) / n_shards)
    weight_map, total = {}, 0
    for i in range(n_shards):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in names[i * per:(i + 1) * per]}
        save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _markov_chain(vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Transition probabilities (vocab, vocab) with a few likely successors per token."""
    return torch.softmax(torch.randn(vocab, vocab, generator=gen) * 3.0, dim=-1)


def _batches(probs: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    """Input and target sequences from the Markov chain `probs`."""
    vocab = probs.shape[0]
    while True:
        x = torch.empty(batch, seq + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for j in range(seq):
            x[:, j + 1] = torch.multinomial(probs[x[:, j]], 1, generator=gen).squeeze(1)
        yield x[:, :-1], x[:, 1:]


DEMO_TOKENS = "tokens.npy"


def write_demo_tokens(path: Path, n_seq: int = 8, seed: int = 0) -> None:
    """Held-out sequences of the demo's Markov chain (for `trajcli curvature --data`): (n_seq, 33) int64."""
    import numpy as np

    probs = _markov_chain(DEMO_CONFIG["vocab_size"], torch.Generator().manual_seed(seed))  # the training chain
    x, y = next(_batches(probs, n_seq, 32, torch.Generator().manual_seed(seed + 1_000_003)))  # other sequences
    np.save(path, torch.cat([x, y[:, -1:]], dim=1).numpy())


def make_demo_trajectory(folder: Path, steps: list[int] = DEMO_STEPS, seed: int = 0, log=None,
                         optimizer: dict | None = None) -> list[Path]:
    """Train the tiny model and save a checkpoint folder at each of `steps`; returns the folders.
    `optimizer`: None for the demo's AdamW (weight decay 0.1) under warm-up + cosine, or
    {"lr", "momentum", "weight_decay"} for SGD at a constant rate (the sweep); either is written to
    FOLDER/training_args.json as a Trainer user would save their arguments."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = DEMO_CONFIG
    model = TinyNeoX(cfg)
    total = max(steps)
    if optimizer is None:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
        warmup = 32
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        args = {"optim": "adamw_torch", "learning_rate": 3e-3, "weight_decay": 0.1, "adam_beta1": 0.9,
                "adam_beta2": 0.95, "lr_scheduler_type": "cosine", "warmup_steps": warmup}
    else:
        opt = torch.optim.SGD(model.parameters(), lr=optimizer["lr"], momentum=optimizer["momentum"],
                              weight_decay=optimizer["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        args = {"optim": "sgd", "learning_rate": optimizer["lr"], "momentum": optimizer["momentum"],
                "weight_decay": optimizer["weight_decay"], "lr_scheduler_type": "constant"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training_args.json").write_text(json.dumps({**args, "per_device_train_batch_size": 16, "seed": seed}))
    data = _batches(_markov_chain(cfg["vocab_size"], gen), 16, 32, gen)
    folders, log_history = [], []
    for step in range(total + 1):
        log_history.append({"step": step, "learning_rate": sched.get_last_lr()[0]})
        if step in steps:
            out = folder / f"step{step}"
            save_sharded({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
            (out / "config.json").write_text(json.dumps(cfg, indent=2))
            # as a Trainer would: the step and the learning rate used so far (for effective learning rates)
            (out / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": log_history}))
            folders.append(out)
        if step == total:
            break
        x, y = next(data)
        loss = F.cross_entropy(model(x).reshape(-1, cfg["vocab_size"]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step + 1) % 256 == 0:
            log(f"step {step + 1}/{total}: loss {loss.item():.3f}")
    return folders


# The sweep: the same model and data under four optimizers, each with every seed. SGD at a constant
# rate, so that only momentum and weight decay differ. The settings are fixed here once; the report
# states what they give.
SWEEP_SETTINGS = {
    "sgd": {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
    "sgd+wd": {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.01},
    "momentum": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
    "momentum+wd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
}
SWEEP_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384, 448, 512]
SWEEP_SEEDS = (0, 1)


def make_sweep(folder: Path, steps: list[int] = SWEEP_STEPS, seeds=SWEEP_SEEDS, log=None) -> list[str]:
    """Every setting × seed as FOLDER/<setting>-seed<k>/; returns the runs as NAME=PATH arguments."""
    runs = []
    for name, setting in SWEEP_SETTINGS.items():
        for seed in seeds:
            run = folder / f"{name}-seed{seed}"
            if not all((run / f"step{s}" / "model.safetensors.index.json").is_file() for s in steps):
                if log is not None:
                    log(f"training {run.name}")
                make_demo_trajectory(run, steps, seed, optimizer=setting)
            runs.append(f"{run.name}={run}")
    return runs


def sweep_finding(doc: dict) -> str:
    """Whether this sweep agrees with the published finding, from its own groups' raw ω (the measure the
    finding is stated in)."""
    means = {g["name"]: g["mds_raw"]["mean"] for g in doc["groups"] if g["mds_raw"]}
    if len(means) < len(SWEEP_SETTINGS):
        return "Some settings have no ω here: no comparison with the published finding."
    lowest = min(means, key=means.get)
    verdict = ("agrees: momentum with weight decay explores most (lowest raw ω)" if lowest == "momentum+wd"
               else f"does not agree: {lowest}, not momentum+wd, has the lowest raw ω")
    return ("Background (published, arXiv:2403.07379): momentum and weight decay promote directional exploration, "
            f"so momentum with weight decay gives the lowest MDS. This sweep {verdict}.")
