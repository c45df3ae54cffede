"""Agreement with TransformerLens on the same Hugging Face weights: our previous-token, duplicate
and induction scores (model loaded through ``seqlens.load`` / ``from_hf``) equal
``transformer_lens.head_detector.detect_head`` run on ``TransformerBridge.boot_transformers(...,
hf_model=...)`` — everything local, no hub access."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import seqlens  # noqa: E402
from seqlens.circuits import duplicate_token_scores, induction_scores, previous_token_scores  # noqa: E402

V = 151
FINDERS = {"previous_token_head": previous_token_scores, "duplicate_token_head": duplicate_token_scores,
           "induction_head": induction_scores}


def word_tokenizer():
    """A local word-level tokenizer ``<bos> w1 .. w150`` (one word = one id), so prompts are exact."""
    words = ["<bos>"] + [f"w{i}" for i in range(1, V)]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<bos>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<bos>",
                                                unk_token="<bos>")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """``(bridge, ours)``: one random GPT-2 (attention ~ O(1) logits) saved with its tokenizer, loaded both ways."""
    from transformer_lens.model_bridge import TransformerBridge

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=V, n_positions=128, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2,
            bos_token_id=0, eos_token_id=0)).eval()
        directory = tmp_path_factory.mktemp("gpt2")
        hf.save_pretrained(directory)
        word_tokenizer().save_pretrained(directory)
        eager = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        bridge = TransformerBridge.boot_transformers(str(directory), hf_model=eager, device="cpu", tokenizer=tok)
        return bridge, seqlens.load(directory)


def prompts(n: int = 3, half: int = 12) -> list[str]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1, V, (half,), generator=g).tolist()
        out.append(" ".join(f"w{i}" for i in ids + ids))
    return out


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("measure", ["mul", "abs"])
@pytest.mark.parametrize("head", list(FINDERS))
def test_scores_equal_detect_head_on_the_bridge(pair, head, measure, exclude_bos):
    from transformer_lens.head_detector import detect_head

    bridge, ours = pair
    seqs = prompts()
    tokens = bridge.to_tokens(seqs)  # the bridge prepends BOS; score the very same ids
    assert (tokens[:, 0] == 0).all() and tokens.shape == (3, 25)
    ref = detect_head(bridge, seqs, head, error_measure=measure, exclude_bos=exclude_bos)
    mine = FINDERS[head](ours, tokens=tokens, measure=measure, exclude_bos=exclude_bos).scores
    # TransformerLens rounds the abs score to 3 decimals; mul agrees to float rounding
    assert (mine - ref).abs().max().item() <= (1e-5 if measure == "mul" else 5e-4 + 1e-6)
    assert ref.std() > 0.01  # a random model gives distinct scores per head: the comparison has teeth
