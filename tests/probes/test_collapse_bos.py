"""Regression: the "repeat" source of state_collapse repeats its text's tokens, not the tokenizer's
BOS with every period (Hugging Face tokenizers add BOS in a plain encode(); it goes through
seqlens.text.encode now, which leaves special tokens out)."""

from __future__ import annotations

import torch

from seqlens.models import ModelConfig, build
from seqlens.probes.collapse import REPEAT_TEXT, state_collapse
from seqlens.testing.tokenizers import bos_word_tokenizer
from seqlens.text import encode


def test_repeat_stream_has_no_bos_per_period():
    tok = bos_word_tokenizer(REPEAT_TEXT.split())
    period = encode(REPEAT_TEXT, tok)
    assert tok.bos_token_id == 0 and 0 not in period and len(period) == len(REPEAT_TEXT.split())
    cfg = ModelConfig(arch="mamba", vocab_size=len(tok), d_model=16, n_layers=1, d_state=4, expand=2, n_ctx=64)
    model = build(cfg, seed=0).eval()
    model.tokenizer = tok
    seen: list[torch.Tensor] = []
    model.embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    n = 3 * len(period)
    res = state_collapse(model, "repeat", n_tokens=n, chunk=16, train_len=16, progress=False)
    streamed = torch.cat(seen, dim=1)[0]
    assert streamed.numel() == n
    assert tok.bos_token_id not in streamed.tolist()  # the bug: one BOS every period
    assert streamed.tolist() == period * 3
    assert f"({len(period)} tokens)" in str(res.settings) + str(getattr(res, "source", ""))
