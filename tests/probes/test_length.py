"""probes.position_loss / PositionLoss / held_out_documents (docs/methods.md §11): equality to the
cross entropy computed by hand from ``model(row)``, a planted model whose loss is known exactly
(ln V everywhere), chunked = one forward, causality, teacher-forced exactness = greedy decoding,
the aggregates against a by-hand computation, and the bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqlens.circuits.retrieval import greedy_decode
from seqlens.probes import PositionLoss, held_out_documents, position_loss
from seqlens.testing.tiny import CONFIGS, V, make, tokens


def by_hand(model, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss and hit of each row on its own, from ``model(row)``."""
    out_l, out_h = [], []
    with torch.no_grad():
        for row in rows:
            logits = model(row[None, :-1])[0].float()
            out_l.append(F.cross_entropy(logits, row[1:], reduction="none"))
            out_h.append((logits.argmax(-1) == row[1:]).float())
    return torch.stack(out_l), torch.stack(out_h)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_equals_the_cross_entropy_of_each_row_by_hand(name):
    model = make(name).eval()
    rows = tokens(5, 25, seed=1)
    r = position_loss(model, rows, bucket=8, batch_size=2)
    loss, hit = by_hand(model, rows)
    assert torch.allclose(r.loss, loss, atol=1e-5) and torch.equal(r.hit, hit)
    assert r.edges == [0, 8, 16, 24] and r.settings["arch"] == model.cfg.arch


@pytest.mark.parametrize("name", ["llama", "fox", "mamba", "gla", "lstm"])
def test_chunks_carrying_the_state_equal_one_forward_and_the_past_ignores_the_future(name):
    model = make(name).eval()
    rows = tokens(3, 41, seed=2)
    whole = position_loss(model, rows, bucket=10)
    chunked = position_loss(model, rows, bucket=10, chunk=7)
    assert torch.allclose(whole.loss, chunked.loss, atol=1e-4)
    prefix = position_loss(model, rows[:, :21], bucket=10)  # causal: positions < 20 see no later token
    assert torch.allclose(whole.loss[:, :20], prefix.loss, atol=1e-4)


def test_a_planted_uniform_model_has_loss_ln_v_at_every_position():
    model = make("mamba").eval()
    with torch.no_grad():  # final norm's scale 0: logits all 0, p = 1/V for every token
        model.ln_final.weight.zero_()
        if getattr(model.ln_final, "bias", None) is not None:
            model.ln_final.bias.zero_()
    rows = tokens(4, 33, seed=3)
    r = position_loss(model, rows, bucket=8)
    assert torch.allclose(r.loss, torch.full_like(r.loss, math.log(V)), atol=1e-5)
    for b in r.buckets():
        assert b["loss"] == pytest.approx(math.log(V), abs=1e-5) and b["loss_se"] == pytest.approx(0, abs=1e-6)
    assert r.rise(8)[0] == pytest.approx(0, abs=1e-6)
    assert torch.equal(r.hit, (rows[:, 1:] == 0).float())  # argmax of equal logits is id 0


def test_teacher_forced_exactness_is_greedy_decoding():
    """A row is exact iff every masked target is the argmax given the true prefix, which is the
    greedy continuation: so the model's own greedy answer is exact, a changed digit is not."""
    model = make("gla").eval()
    prompts = tokens(4, 12, seed=4)
    answer = greedy_decode(model, prompts, 5)
    rows = torch.cat([prompts, answer], 1)
    rows[2, -2] = (rows[2, -2] + 1) % V  # row 2: one answer token is not the greedy one
    mask = torch.zeros(4, rows.shape[1] - 1, dtype=torch.bool)
    mask[:, -5:] = True  # the positions predicting the 5 answer tokens
    r = position_loss(model, rows, mask=mask, bucket=4)
    assert r.row_exact(0, r.loss.shape[1]).tolist() == [1.0, 1.0, 0.0, 1.0]
    assert torch.isnan(r.loss[:, :-5]).all() and torch.isfinite(r.loss[:, -5:]).all()


def test_aggregates_are_means_over_rows_of_each_rows_mean():
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(6, 16, generator=g) * 3
    loss[0, :4] = math.nan  # row 0 unscored in bucket 0
    hit = (torch.rand(6, 16, generator=g) > 0.5).float()
    hit[torch.isnan(loss)] = math.nan
    r = PositionLoss(loss=loss, hit=hit, bucket=4)
    b0 = loss[1:, :4].double().mean(1)
    assert r.buckets()[0]["loss"] == pytest.approx(float(b0.mean()))
    assert r.buckets()[0]["loss_se"] == pytest.approx(float(b0.std() / math.sqrt(5)))
    assert r.buckets()[0]["rows"] == 5 and r.buckets()[1]["rows"] == 6
    per_row = (loss[:, 4:16].double().mean(1) - loss[:, 2:4].double().mean(1))[1:]  # row 0 has no [2, 4)
    mean, se, n = r.rise(4, factor=4)
    assert (mean, se, n) == (pytest.approx(float(per_row.mean())), pytest.approx(float(per_row.std() / math.sqrt(5))), 5)
    assert r.to_frame().shape == (4, 7)


def test_learned_positions_past_the_table_are_refused_never_clipped():
    model = make("gpt2")  # n_ctx = 128, learned positions
    with pytest.raises(ValueError, match="context_limit 128"):
        position_loss(model, tokens(1, 130))
    assert position_loss(model, tokens(1, 129)).loss.shape == (1, 128)


def test_bad_inputs_name_the_argument():
    model = make("mamba")
    with pytest.raises(ValueError, match="tokens"):
        position_loss(model, torch.rand(2, 5))
    with pytest.raises(ValueError, match="tokens"):
        position_loss(model, torch.full((1, 4), V))
    with pytest.raises(ValueError, match="mask"):
        position_loss(model, tokens(2, 9), mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="targets"):
        position_loss(model, tokens(2, 9), targets=tokens(2, 4))
    with pytest.raises(ValueError, match="bucket"):
        position_loss(model, tokens(2, 9), bucket=0)
    with pytest.raises(ValueError, match="chunk"):
        position_loss(model, tokens(2, 9), chunk=0)
    with pytest.raises(ValueError, match="train_len"):
        position_loss(model, tokens(2, 9), bucket=2).rise(4)


def test_held_out_documents_are_seeded_validation_windows_inside_one_file():
    from seqlens.corpus import EOS_ID, StdlibCorpus

    a, b = held_out_documents(3, 300, seed=5), held_out_documents(3, 300, seed=5)
    assert a.shape == (3, 301) and torch.equal(a, b) and not (a == EOS_ID).any()
    assert not torch.equal(a, held_out_documents(3, 300, seed=6))
    val = StdlibCorpus().text("val")
    assert all(bytes(row.tolist()) in val for row in a)
    with pytest.raises(ValueError, match="rows"):
        held_out_documents(10**6, 300)


def test_prompt_lengths_exact_retrieval_equals_greedy_decoding_of_the_key():
    """On the zoo's passkey organism: task_prompts are the recipe's own task at a new length, and
    prompt_lengths' exact retrieval is the share of prompts whose greedy 5-token answer is the key."""
    import seqlens
    from seqlens.probes import prompt_lengths, task_prompts

    model = seqlens.load("passkey-mamba-n2")
    x, y, m = task_prompts(model, 128, 6, seed=7 + 128)
    assert x.shape == (6, 128) and int(m.sum()) == 6 * 5  # 5 key digits per prompt
    assert torch.equal(m, m[:1].expand_as(m))  # the key ends every prompt
    first = int(m[0].nonzero()[0])  # the position predicting the first key digit
    greedy = greedy_decode(model, x[:, :first + 1], 5)
    want = (greedy == y[:, first:first + 5]).all(1).float().mean().item()
    got = prompt_lengths(model, [128], 6, seed=7)[128]
    assert got["exact"] == pytest.approx(want) and got["rows"] == 6
    with pytest.raises(ValueError, match="model"):
        task_prompts(seqlens.load("text-mamba"), 64, 2)
