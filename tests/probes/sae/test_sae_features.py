"""feature_report on a planted token detector, and on a state SAE."""

import pytest
import torch

import seqlens
from sae_helpers import random_sae
from seqlens.probes import sae as S
from seqlens.probes.sae.features import token_text

TOKENS = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(4))


def tiny(arch):
    return seqlens.build(seqlens.ModelConfig(arch=arch, d_model=16, n_layers=2, vocab_size=64), seed=0).eval()


def token_detector(model) -> tuple[S.SAE, int]:
    """A standard SAE on hook_embed whose latent 0 fires on exactly one token id (the one whose
    embedding is best separated from the others) and writes a fixed direction."""
    E = model.embed.weight.detach()
    u = E / E.pow(2).sum(-1, keepdim=True)  # u_t · E_t = 1
    s = u @ E.T  # s[t, i] = u_t · E_i
    margins = torch.stack([1 - torch.cat([s[t, :t], s[t, t + 1:]]).max() for t in range(64)])
    t = int(margins.argmax())
    assert margins[t] > 0
    sae = random_sae("standard", d_in=16, d_sae=8, apply_b_dec_to_input=False,
                     metadata={"hook_name": "hook_embed"})
    with torch.no_grad():
        sae.W_enc[:, 0] = u[t]
        sae.b_enc[0] = -(1 - margins[t] / 2)
    return sae, t


def test_report_of_a_planted_token_detector():
    model = tiny("transformer")
    sae, t = token_detector(model)
    tokens = TOKENS.clone()
    tokens[:, 5] = t  # the detected token occurs at least 7 times
    tokens[2, 1] = t
    rep = S.feature_report(model, sae, 0, tokens, top=5, window=3)
    hits = (tokens == t)
    assert hits.sum() >= 7
    assert rep.frequency == pytest.approx(hits.float().mean().item())
    assert len(rep.contexts) == 5
    for c in rep.contexts:
        assert tokens[c["seq"], c["pos"]] == t and c["tokens"][c["highlight"]] == token_text(model, t)
        assert c["activation"] == pytest.approx(rep.contexts[0]["activation"], rel=1e-5)
    assert len(rep.activations) == int(hits.sum())
    want = model.unembed(model.ln_final(sae.W_dec[0].detach()[None, None]))[0, 0]
    top = torch.topk(want, 10)
    assert [v for _, v in rep.logit_top] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert rep.logit_top[0][0] == token_text(model, int(top.indices[0]))
    assert "<mark>" in rep.html() and rep.html().count("<div>") == len(rep.contexts)
    assert list(rep.to_frame().columns) == ["rank", "seq", "pos", "activation", "token", "context"]
    assert len(rep.figure().data) == 2
    assert type(rep).from_json(rep.to_json()).contexts == rep.contexts


def test_report_of_a_state_sae_names_the_state_entries_it_reads():
    model = tiny("mamba")
    hook = "blocks.1.mixer.hook_state"
    X = S.harvest(model, hook, TOKENS, positions=[7, 15], progress=False)
    shape = X.info["vector_shape"]
    sae = S.train_sae(X, architecture="topk", d_sae=32, k=4, steps=20, batch_size=4, progress=False)
    f = int(S.evaluate(sae, X).feature_frequency.argmax())
    rep = S.feature_report(model, sae, f, TOKENS, positions=[7, 15], top=3)
    assert rep.logit_top == [] and len(rep.state_reads) == 10
    w = sae.W_enc[:, f].detach().reshape(shape)
    for r in rep.state_reads:
        assert all(type(i) is int for i in r["index"]) and len(r["index"]) == len(shape)
        assert w[tuple(r["index"])].item() == pytest.approx(r["weight"])
    assert abs(rep.state_reads[0]["weight"]) == pytest.approx(w.abs().max().item())
    assert all(c["pos"] in (7, 15) for c in rep.contexts)
    table = S.feature_table(model, sae, TOKENS, positions=[7, 15])  # the browser's table on a state hook
    assert torch.allclose(table.frequency, S.evaluate(sae, X).feature_frequency)
    assert table.top_context[f] and table.order("frequency")[0] == int(table.frequency.argmax())


def test_feature_report_errors():
    model = tiny("transformer")
    sae, _ = token_detector(model)
    with pytest.raises(ValueError, match="feature: expected an integer in \\[0, 8\\)"):
        S.feature_report(model, sae, 8, TOKENS)
    with pytest.raises(ValueError, match="d_in=12"):
        S.feature_report(model, random_sae("topk", metadata={"hook_name": "blocks.0.hook_resid_post"}), 0, TOKENS)


def test_feature_table_finds_the_planted_token_detector_by_search():
    """The browser's table: the planted detector's top token is the detected token, a search for
    it finds latent 0, and frequencies equal evaluate's."""
    model = tiny("transformer")
    sae, t = token_detector(model)
    tokens = TOKENS.clone()
    tokens[:, 5] = t
    table = S.feature_table(model, sae, tokens, top=4)
    text = token_text(model, t)
    assert table.top_tokens[0] == [text]
    assert text in table.top_context[0]
    assert 0 in table.search(text) and 0 in table.search(text.upper())
    assert table.search("") == list(range(8))
    X = S.harvest(model, "hook_embed", tokens, progress=False).to_tensor()
    f = sae.encode(X).detach()
    assert torch.allclose(table.frequency, S.evaluate(sae, X).feature_frequency)
    assert torch.allclose(table.max_activation, f.max(0).values.clamp_min(0))
    assert table.order("frequency")[0] == int(table.frequency.argmax())
    assert table.order("max_activation", descending=False)[0] == int(table.max_activation.argmin())
    frame = table.to_frame([0])
    assert frame["feature"].tolist() == [0] and frame["top_context"][0] == table.top_context[0]
    assert len(table.figure().data) == 1
    with pytest.raises(ValueError, match="by: expected one of"):
        table.order("name")


def test_running_top_streams_like_the_full_matrix():
    """Each latent's largest activations and their rows, kept over small batches, equal a top-k
    of the whole code matrix."""
    from seqlens.probes.sae.features import _running_top

    sae = random_sae("topk", d_in=12, d_sae=20, k=4)
    X = torch.randn(50, 12, generator=torch.Generator().manual_seed(1))
    store = S.ActivationStore.from_tensor(X)
    fires, values, rows = _running_top(sae, store, top=3, batch_size=7)
    f = sae.encode(X).detach()
    want = f.topk(3, dim=0)
    assert torch.equal(fires, (f > 0).sum(0))
    assert torch.allclose(values, want.values)
    assert torch.allclose(f.gather(0, rows), want.values)  # rows hold those values (ties may reorder)
