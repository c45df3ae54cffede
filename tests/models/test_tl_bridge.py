"""Every hook name we share with TransformerLens 4's ``TransformerBridge`` holds the same tensor
here and there: tiny random GPT-2 and Llama checkpoints (non-trivial norm weights and biases,
grouped-query attention, rotary, SwiGLU) saved with ``transformers`` to a temporary directory,
booted with ``TransformerBridge.boot_transformers(..., hf_model=...)`` and loaded with
``seqlens.load`` — fully offline."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import seqlens  # noqa: E402

V = 97
# names both caches must hold (per layer l), so the comparison cannot pass by an empty overlap
SHARED = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "ln1.hook_out", "attn.hook_q", "attn.hook_k",
          "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
          "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "ln2.hook_out", "mlp.hook_pre",
          "mlp.hook_post", "mlp.hook_out", "hook_mlp_out", "hook_resid_post"]
EXTRA = {"gpt2": ["hook_pos_embed"], "llama": [f"blocks.{l}.{n}" for l in range(2)
                                              for n in ("mlp.hook_pre_linear", "attn.hook_rot_q", "attn.hook_rot_k")]}


def word_tokenizer():
    words = ["<bos>"] + [f"w{i}" for i in range(1, V)]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<bos>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<bos>",
                                                unk_token="<bos>")


def hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norm weights away from 1 and non-zero biases: pre- vs post-affine differ
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_shared_hook_names_hold_the_same_tensors(kind, tmp_path, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_model(kind).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    eager = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=eager, device="cpu",
                                                 tokenizer=transformers.AutoTokenizer.from_pretrained(tmp_path))
    ours = seqlens.load(tmp_path)
    toks = torch.randint(1, V, (2, 9), generator=torch.Generator().manual_seed(0))
    _, theirs = bridge.run_with_cache(toks)
    _, mine = ours.run_with_cache(toks)
    shared = [k for k in theirs.keys() if k in mine]
    required = ["hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out"]
    required += [f"blocks.{l}.{n}" for l in range(2) for n in SHARED] + EXTRA[kind]
    assert set(required) <= set(shared), sorted(set(required) - set(shared))
    for name in shared:
        a, b = theirs[name], mine[name]
        assert a.shape == b.shape, (name, a.shape, b.shape)
        # the same masked entries (the bridge may mask scores with finfo.min where we use -inf)
        masked = lambda t: ~torch.isfinite(t) | (t <= torch.finfo(t.dtype).min / 2)  # noqa: E731
        assert torch.equal(masked(a), masked(b)), name
        finite = ~masked(a)
        torch.testing.assert_close(b[finite], a[finite], atol=1e-5, rtol=1e-4, msg=name)
    # the norms' pre-affine and post-affine tensors really differ here, so the check has teeth
    assert not torch.allclose(mine["blocks.0.ln1.hook_normalized"], mine["blocks.0.ln1.hook_out"], atol=1e-3)
