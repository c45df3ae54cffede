"""Verbatim short-term memory (seqlens.probes.memory): ground truth on an induction organism and on
models without context access, surprisal bookkeeping, bootstrap CIs, Result views, bad input."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import seqlens
from seqlens import tasks
from seqlens.models import ModelConfig, build
from seqlens.probes.memory import (MemoryResult, bootstrap_median_ci, memory_prompts, noun_surprisal,
                                   repeat_surprisal)

FAST = dict(n_trials=16, n_boot=200, progress=False)


def zero_mixers(model: torch.nn.Module) -> torch.nn.Module:
    """Zero every mixer's output projection: the logits then depend on the current token only."""
    with torch.no_grad():
        for block in model.blocks:
            proj = getattr(block.mixer, "o", None) or block.mixer.out_proj
            proj.weight.zero_()
    return model.eval()


def bigram_tokens_model() -> torch.nn.Module:
    """Attention-only transformer (vocab 97, no positions) with zeroed attention output; no
    recipe and no tokenizer, so the memory probe picks its synthetic-token prompts."""
    from seqlens.testing.tiny import CONFIGS, make

    assert CONFIGS["attn_only"].positions == "none" and CONFIGS["attn_only"].attn_only
    return zero_mixers(make("attn_only"))


def bigram_bytes_model(n_ctx: int = 512) -> torch.nn.Module:
    """Byte-vocabulary Mamba with zeroed mixer outputs (MLP-free blocks: a pure bigram model)."""
    cfg = ModelConfig(arch="mamba", vocab_size=256, d_model=32, n_layers=2, d_state=8, expand=2, n_ctx=n_ctx)
    return zero_mixers(build(cfg, seed=1))


def bigram_learned_model(n_ctx: int) -> torch.nn.Module:
    """Byte-vocabulary attention-only transformer with a learned position table of ``n_ctx`` rows
    (a hard context limit), zeroed attention output and position rows: a pure bigram model."""
    cfg = ModelConfig(arch="transformer", vocab_size=256, d_model=32, n_layers=1, n_heads=4, n_ctx=n_ctx,
                      positions="learned", attn_only=True)
    model = zero_mixers(build(cfg, seed=1))
    with torch.no_grad():
        model.pos_embed.weight.zero_()
    return model


class ChunkTokenizer:
    """A toy Hugging Face-style tokenizer: words cut into 3-letter pieces (the first with its
    leading space), so every noun is several tokens; ids assigned on first sight; BOS = 1."""

    bos_token_id, pad_token_id = 1, 0

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<pad>": 0, "<bos>": 1}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        pieces = [p for w in re.findall(r" ?[A-Za-z]+|\s|[^\sA-Za-z]", text)
                  for p in re.findall(r"^ ?[A-Za-z]{1,3}|[A-Za-z]{1,3}|.", w)]
        return [self.ids.setdefault(p, len(self.ids)) for p in pieces]

    def decode(self, ids) -> str:
        inverse = {i: p for p, i in self.ids.items()}
        return "".join(inverse[int(i)] for i in ids)

    def __len__(self) -> int:
        return 400


def direct_noun_surprisal(model, row: list[int], span: tuple[int, int]) -> float:
    """Σ_{t in span} −ln p(row[t] | row[:t]) from one unbatched forward pass."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([row]))[0].double(), -1)
    return -sum(logp[t - 1, row[t]].item() for t in range(*span))


# ----------------------------------------------------------------------------- ground truth


@pytest.fixture(scope="module")
def induction_result() -> MemoryResult:
    model = seqlens.load("induction-attn2")
    return repeat_surprisal(model, set_sizes=(3, 5), intervening=(8, 32), **{**FAST, "n_trials": 24})


def test_induction_organism_recalls_repeated_lists(induction_result):
    r = induction_result
    assert r.settings["mode"] == "tokens" and r.settings["surprisal"] == "nats"
    for k in (3, 5):
        repeat = r.cell("repeat", k, 32)
        assert repeat["median"] < 30 and repeat["ci_high"] < 40, repeat  # ≪ 100 %
        novel = r.cell("novel", k, 8)
        assert 90 < novel["ci_low"] <= novel["median"] <= novel["ci_high"] < 115, novel  # ≈ 100 %
        for il in (8, 32):
            assert r.cell("repeat", k, il)["ci_high"] < r.cell("novel", k, il)["ci_low"]
    # list 1 is unpredictable random tokens: about ln(63) nats per noun
    assert abs(r.x1.median().item() - torch.log(torch.tensor(63.0)).item()) < 0.5


def test_token_prompts_layout():
    model = seqlens.load("induction-attn2")
    (p,) = memory_prompts(model, 4, [6], "novel", n_trials=3, seed=2)
    assert (p.tokens[:, 0] == 0).all() and (p.tokens[:, 1:] != 0).all(), "BOS first, never again"
    assert p.tokens.shape == (3, 1 + 4 + 6 + 4)
    assert p.spans1[0].tolist() == [[1, 2], [2, 3], [3, 4], [4, 5]]
    assert p.spans2[0, 0].tolist() == [11, 12]
    for b in range(3):
        nouns, filler = set(p.list1[b]) | set(p.list2[b]), set(p.tokens[b, 5:11].tolist())
        assert not set(p.list1[b]) & set(p.list2[b]) and not nouns & filler
        assert p.tokens[b, 1:5].tolist() == p.list1[b] and p.tokens[b, 11:].tolist() == p.list2[b]
    (rep,) = memory_prompts(model, 4, [6], "repeat", n_trials=3, seed=2)
    assert torch.equal(rep.tokens[:, :11], p.tokens[:, :11]), "list 1 and filler shared by conditions"


@pytest.fixture(scope="module")
def bigram_tokens_result() -> MemoryResult:
    return repeat_surprisal(bigram_tokens_model(), set_sizes=(3, 5), intervening=(0, 16),
                            **{**FAST, "n_trials": 32})


def test_model_without_context_shows_no_memory_tokens(bigram_tokens_result):
    r = bigram_tokens_result
    assert r.settings["mode"] == "tokens"
    c = r.conditions.index("repeat")  # same nouns after the same predecessors: exactly x2 = x1
    torch.testing.assert_close(r.ratio[c], torch.full_like(r.ratio[c], 100.0), rtol=0, atol=1e-3)
    # permute / novel: x1 and x2 are exchangeable, so the population median is exactly 100 %;
    # each 95 % CI holds it (for this seed: a per-cell 5 % miss is chance, not memory)
    assert ((r.median - 100).abs() < 5).all(), r.to_frame()
    assert (r.ci_low <= 100 + 1e-3).all() and (r.ci_high >= 100 - 1e-3).all(), r.to_frame()


def test_model_without_context_shows_no_memory_bytes():
    r = repeat_surprisal(bigram_bytes_model(), set_sizes=(3, 5), intervening=(8, 40), **FAST)
    assert r.settings["mode"] == "bytes" and r.settings["unit"] == "bytes"
    c = r.conditions.index("repeat")
    torch.testing.assert_close(r.ratio[c], torch.full_like(r.ratio[c], 100.0), rtol=0, atol=1e-3)
    assert (r.ci_low <= 100 + 1e-3).all() and (r.ci_high >= 100 - 1e-3).all(), r.to_frame()


# ----------------------------------------------------------------------------- bookkeeping


def test_byte_surprisal_is_the_sum_over_a_nouns_bytes():
    from seqlens.testing.tiny import randomize

    cfg = ModelConfig(arch="transformer", vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_ctx=512)
    model = randomize(build(cfg, seed=3), 3).eval()  # uses its context: nothing cancels by symmetry
    (p,) = memory_prompts(model, 3, 8, "permute", n_trials=2, seed=5)
    nouns = noun_surprisal(model, p)
    for b in range(2):
        row = p.tokens[b, : int(p.lengths[b])].tolist()
        text = bytes(row).decode()
        assert text.endswith(tasks.MEMORY_CUE + " " + ", ".join(p.list2[b]) + ".")
        start = int(p.spans1[b, -1, 1]) + 1  # the intervening text: exactly 8 bytes after "."
        assert bytes(row[start: start + 8]).decode() == (" " + tasks.MEMORY_FILLER[0])[:8]
        for j, noun in enumerate(p.list2[b]):
            s, e = p.spans2[b, j].tolist()
            assert bytes(row[s:e]).decode() == noun and e - s == len(noun) > 1
            assert nouns[b, 1, j].item() == pytest.approx(direct_noun_surprisal(model, row, (s, e)), rel=1e-4)
    r = repeat_surprisal(model, set_sizes=(3,), intervening=(8,), conditions=("permute",), n_trials=2,
                         seed=5, n_boot=50, progress=False)
    torch.testing.assert_close(r.x1[0, 0, 0], nouns[:, 0, 1:].mean(-1))  # first noun excluded
    torch.testing.assert_close(r.x2[0, 0, 0], nouns[:, 1, 1:].mean(-1))


def test_tokenizer_prompts_multi_token_nouns():
    tok = ChunkTokenizer()
    cfg = ModelConfig(arch="transformer", vocab_size=len(tok), d_model=32, n_layers=1, n_heads=4, n_ctx=256)
    model = build(cfg, seed=0).eval()
    model.tokenizer = tok
    (p,) = memory_prompts(model, 3, 5, "novel", n_trials=2, seed=1)
    nouns = noun_surprisal(model, p)
    row = p.tokens[0, : int(p.lengths[0])].tolist()
    assert row[0] == tok.bos_token_id and row.count(tok.bos_token_id) == 1
    for lst, spans in ((p.list1[0], p.spans1[0]), (p.list2[0], p.spans2[0])):
        for j, noun in enumerate(lst):
            s, e = spans[j].tolist()
            assert tok.decode(row[s:e]) == " " + noun
    s, e = max(p.spans2[0].tolist(), key=lambda se: se[1] - se[0])
    assert e - s >= 2
    j = p.spans2[0].tolist().index([s, e])
    assert nouns[0, 1, j].item() == pytest.approx(direct_noun_surprisal(model, row, (s, e)), rel=1e-4)
    r = repeat_surprisal(model, set_sizes=(3,), intervening=(5,), **FAST)
    assert r.settings["mode"] == "tokenizer"


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_ci_is_seeded_and_contains_the_median():
    values = torch.exp(4.6 + 0.3 * torch.randn(41, generator=torch.Generator().manual_seed(0)))
    a = bootstrap_median_ci(values, n_boot=500, ci=0.95, seed=7)
    assert a == bootstrap_median_ci(values, n_boot=500, ci=0.95, seed=7)
    assert a != bootstrap_median_ci(values, n_boot=500, ci=0.95, seed=8)
    median, low, high, n = a
    assert n == 41 and median == pytest.approx(values.median().item())
    assert low <= median <= high and low < high
    _, low99, high99, _ = bootstrap_median_ci(values, n_boot=500, ci=0.99, seed=7)
    assert low99 <= low and high99 >= high
    with_nan = torch.cat([values, torch.tensor([float("nan"), float("inf")])])
    assert bootstrap_median_ci(with_nan, n_boot=500, seed=7) == a  # non-finite values dropped


def test_result_is_deterministic_and_ci_contains_median(bigram_tokens_result):
    again = repeat_surprisal(bigram_tokens_model(), set_sizes=(3, 5), intervening=(0, 16),
                             **{**FAST, "n_trials": 32})
    for name in ("x1", "x2", "median", "ci_low", "ci_high"):
        assert torch.equal(getattr(again, name), getattr(bigram_tokens_result, name)), name
    r = bigram_tokens_result
    assert ((r.ci_low <= r.median + 1e-4) & (r.median <= r.ci_high + 1e-4)).all()


# ----------------------------------------------------------------------------- views


def test_frame_figure_json(bigram_tokens_result):
    r = bigram_tokens_result
    df = r.to_frame()
    assert len(df) == 3 * 2 * 2
    assert {"condition", "set_size", "intervening", "median", "ci_low", "ci_high", "n"} <= set(df.columns)
    assert (df["n"] == 32).all()
    assert len(r.trials_frame()) == 3 * 2 * 2 * 32
    fig = r.figure()
    assert len(fig.data) == 3 * 2  # one line per condition in each set-size panel
    assert fig.data[0].error_y.array is not None
    back = MemoryResult.from_json(r.to_json())
    assert back.conditions == r.conditions and back.set_sizes == r.set_sizes
    assert torch.equal(back.median, r.median) and torch.equal(back.x1, r.x1) and back.settings == r.settings


# ----------------------------------------------------------------------------- context and errors


def test_overflow_error_or_trim():
    model = bigram_learned_model(n_ctx=220)  # the prompts need 216-224 bytes
    with pytest.raises(ValueError, match=r"set_sizes / intervening.*n_ctx=220"):
        repeat_surprisal(model, set_sizes=(3,), intervening=(64,), **FAST)
    r = repeat_surprisal(model, set_sizes=(3,), intervening=(64,), overflow="trim", **FAST)
    assert r.settings["trimmed_rows"] > 0 and int(r.seq_len.max()) == 220
    c = r.conditions.index("repeat")
    torch.testing.assert_close(r.ratio[c], torch.full_like(r.ratio[c], 100.0), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="even without its intro"):
        repeat_surprisal(bigram_learned_model(n_ctx=120), set_sizes=(3,), intervening=(64,),
                         overflow="trim", **FAST)


def test_recurrent_models_have_no_context_limit():
    """n_ctx only records a recurrent model's training context: prompts longer than it run,
    untrimmed, and the pure bigram model still scores 100 % on repeats."""
    r = repeat_surprisal(bigram_bytes_model(n_ctx=120), set_sizes=(3,), intervening=(64,), **FAST)
    assert int(r.seq_len.max()) > 120 and r.settings["trimmed_rows"] == 0
    assert r.settings["context_limit"] is None
    c = r.conditions.index("repeat")
    torch.testing.assert_close(r.ratio[c], torch.full_like(r.ratio[c], 100.0), rtol=0, atol=1e-3)


@pytest.mark.parametrize("kwargs, name", [
    (dict(set_sizes=(1, 3)), "set_sizes"),
    (dict(set_sizes=()), "set_sizes"),
    (dict(set_sizes=5), "set_sizes"),
    (dict(set_sizes=(3, 3)), "set_sizes"),
    (dict(set_sizes=(60,)), "set_sizes"),
    (dict(intervening=(-1,)), "intervening"),
    (dict(conditions=("shuffle",)), "conditions"),
    (dict(conditions="repeat"), "conditions"),
    (dict(n_trials=1), "n_trials"),
    (dict(n_boot=0), "n_boot"),
    (dict(ci=1.5), "ci"),
    (dict(overflow="clip"), "overflow"),
    (dict(mode="chars"), "mode"),
    (dict(mode="tokenizer"), "mode"),
    (dict(seed=1.5), "seed"),
])
def test_bad_input_names_the_argument(kwargs, name):
    model = bigram_tokens_model()
    args = {"set_sizes": (3,), "intervening": (4,), **FAST, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}"):
        repeat_surprisal(model, **args)


def test_too_many_nouns_for_the_vocabulary():
    model = seqlens.load("induction-attn2")  # n_ctx 128, 63 non-BOS ids
    with pytest.raises(ValueError, match="^set_sizes"):
        repeat_surprisal(model, set_sizes=(40,), intervening=(4,), **FAST)
