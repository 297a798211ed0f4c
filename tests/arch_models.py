"""Tiny real models of every family in the README's Q/K/V layout table, with the head counts they use.

Families in transformers are built from their own config classes. nanoGPT, Qwen v1 and OLMo v1 are not
in transformers; for them a minimal attention module follows the public modeling code
(nanoGPT `model.py`, Qwen `modeling_qwen.py`, OLMo `olmo/model.py`): one fused Linear whose output is
split in the forward pass exactly as those files do.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

D, H = 16, 4


class _FusedContiguousAttention(nn.Module):
    """x -> fused Linear -> split(d, d, d) along features -> causal attention -> out projection."""

    def __init__(self, d: int, n_head: int, fused: str, out: str, bias: bool):
        super().__init__()
        self.n_head, self.fused_name, self.out_name = n_head, fused, out
        setattr(self, fused, nn.Linear(d, 3 * d, bias=bias))
        setattr(self, out, nn.Linear(d, d, bias=bias))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = getattr(self, self.fused_name)(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        return getattr(self, self.out_name)(y)


class _Block(nn.Module):
    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x)


class _Lm(nn.Module):
    """Embedding -> 2 blocks of (x + block(x)) -> head; names follow the family's checkpoints."""

    def __init__(self, blocks_path: str, make_block, vocab: int = 32):
        super().__init__()
        self.wte = nn.Embedding(vocab, D)
        outer, inner = blocks_path.split(".")
        container = nn.Module()
        setattr(self, outer, container)
        self._blocks = nn.ModuleList(make_block() for _ in range(2))
        setattr(container, inner, self._blocks)
        self.head = nn.Linear(D, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        for block in self._blocks:
            x = x + block(x)
        return self.head(x)


def nanogpt_model():  # transformer.h.N.attn.c_attn: Linear [3d, d], q, k, v = split(n_embd, dim=2)
    return _Lm("transformer.h", lambda: _Block(_FusedContiguousAttention(D, H, "c_attn", "c_proj", bias=True)))


def qwen_model():  # transformer.h.N.attn.c_attn: Linear [3d, d], query, key, value = split(split_size, dim=2)
    return _Lm("transformer.h", lambda: _Block(_FusedContiguousAttention(D, H, "c_attn", "c_proj", bias=True)))


def olmo_model():  # transformer.blocks.N.att_proj: Linear [3d, d], q, k, v = split(fused_dims, dim=-1)
    return _Lm("transformer.blocks", lambda: _FusedContiguousAttention(D, H, "att_proj", "attn_out", bias=False))


def _forward_logits(model):
    return lambda x: model(x)


def transformers_models():
    """name -> (builder returning (model, forward), (num_heads, num_kv_heads))."""
    import transformers as T

    def built(cls, cfg, output: str):
        def build():
            torch.manual_seed(0)
            model = cls(cfg).eval()
            return model, (lambda x: getattr(model(x), output))
        return build

    def causal(cls, cfg):
        return built(cls, cfg, "logits")

    def seq2seq(cls, cfg):  # the same ids into the encoder and the decoder
        def build():
            torch.manual_seed(0)
            model = cls(cfg).eval()
            return model, (lambda x: model(input_ids=x, decoder_input_ids=x).logits)
        return build

    def encoder(cls, cfg):
        return built(cls, cfg, "last_hidden_state")

    common = dict(vocab_size=32)
    return {
        "gpt_neox": (causal(T.GPTNeoXForCausalLM, T.GPTNeoXConfig(**common, hidden_size=D, num_hidden_layers=2,
                                                                  num_attention_heads=H, intermediate_size=32)), (H, H)),
        "bloom": (causal(T.BloomForCausalLM, T.BloomConfig(**common, hidden_size=D, n_layer=2, n_head=H)), (H, H)),
        "falcon": (causal(T.FalconForCausalLM, T.FalconConfig(**common, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                                              multi_query=False, new_decoder_architecture=False, bias=True)), (H, H)),
        "falcon_mq": (causal(T.FalconForCausalLM, T.FalconConfig(**common, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                                                 multi_query=True, new_decoder_architecture=False)), (H, 1)),
        "falcon_new": (causal(T.FalconForCausalLM, T.FalconConfig(**common, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                                                  num_kv_heads=2, new_decoder_architecture=True)), (H, 2)),
        "gpt2": (causal(T.GPT2LMHeadModel, T.GPT2Config(**common, n_embd=D, n_layer=2, n_head=H, n_positions=16,
                                                        bos_token_id=0, eos_token_id=0)), (H, H)),
        "gpt_bigcode": (causal(T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig(**common, n_embd=D, n_layer=2, n_head=H, n_positions=16,
                                                                           multi_query=True, bos_token_id=0, eos_token_id=0)), (H, 1)),
        "gpt_bigcode_mha": (causal(T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig(**common, n_embd=D, n_layer=2, n_head=H,
                                                                               n_positions=16, multi_query=False,
                                                                               bos_token_id=0, eos_token_id=0)), (H, H)),
        "persimmon": (causal(T.PersimmonForCausalLM, T.PersimmonConfig(**common, hidden_size=D, num_hidden_layers=2,
                                                                       num_attention_heads=H, intermediate_size=32,
                                                                       bos_token_id=0, eos_token_id=0)), (H, H)),
        "mpt": (causal(T.MptForCausalLM, T.MptConfig(**common, d_model=D, n_layers=2, n_heads=H, max_seq_len=16)), (H, H)),
        "phi3": (causal(T.Phi3ForCausalLM, T.Phi3Config(**common, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                                        num_key_value_heads=2, intermediate_size=32, pad_token_id=0,
                                                        bos_token_id=0, eos_token_id=0)), (H, 2)),
        "codegen": (causal(T.CodeGenForCausalLM, T.CodeGenConfig(**common, n_embd=D, n_layer=2, n_head=H, n_positions=16,
                                                                 rotary_dim=2, bos_token_id=0, eos_token_id=0)), (H, H)),
        "llama": (causal(T.LlamaForCausalLM, T.LlamaConfig(**common, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                                           num_key_value_heads=2, intermediate_size=32, attention_bias=True,
                                                           bos_token_id=0, eos_token_id=0)), (H, 2)),
        "bart": (seq2seq(T.BartForConditionalGeneration, T.BartConfig(**common, d_model=D, encoder_layers=2, decoder_layers=2,
                                                                     encoder_attention_heads=H, decoder_attention_heads=H,
                                                                     encoder_ffn_dim=32, decoder_ffn_dim=32,
                                                                     max_position_embeddings=16)), (H, H)),
        "t5": (seq2seq(T.T5ForConditionalGeneration, T.T5Config(**common, d_model=D, d_kv=3, d_ff=32, num_layers=2,
                                                               num_decoder_layers=2, num_heads=H, decoder_start_token_id=0)),
               (H, H, 3)),  # head_dim d_kv = 3, not d_model / heads
        "bert": (encoder(T.BertModel, T.BertConfig(**common, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                                                   intermediate_size=32)), (H, H)),
    }


def reference_models():
    def build(fn):
        def inner():
            torch.manual_seed(0)
            model = fn().eval()
            return model, _forward_logits(model)
        return inner

    return {
        "nanogpt": (build(nanogpt_model), (H, H)),
        "qwen": (build(qwen_model), (H, H)),
        "olmo": (build(olmo_model), (H, H)),
    }
