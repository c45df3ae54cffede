"""Head ablation (circuits/ablation.py): equivalences with weight edits, the definition of each mode
on every architecture, hook hygiene, step / stream, the planted induction circuit, and the causal
check (docs/methods.md §2) on the induction-attn2 organism."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from seqlens.testing import tiny as tm
from seqlens.testing.planted import DH, V, planted_model
from seqlens.circuits.ablation import CausalCheck, ablate_heads, all_heads, causal_check, causal_mean, n_heads
from seqlens.models.lstm import HOOK as LSTM_HOOK
from seqlens.circuits.task_metric import TaskMetric
from seqlens.models import build

ARCHS = list(tm.CONFIGS)
MODES = ["zero", "mean", "uniform"]
ATOL = 1e-5
# the activation each family's zero / mean ablation edits (LSTM: read-out only, see ablation.py)
FAMILIES = {"transformer": "attention", "fox": "attention", "gla": "linear", "retnet": "linear",
            "mamba": "mamba", "mamba2": "mamba2", "mingru": "minrnn", "minlstm": "minrnn", "lstm": "lstm"}


def family(model) -> str:
    """The test's grouping of architectures by how ablation is checked (the library asks the mixer)."""
    return FAMILIES[model.cfg.arch]


SITE = {"attention": "hook_z", "linear": "hook_z", "mamba": "hook_z", "mamba2": "hook_z", "minrnn": "hook_z"}


@pytest.fixture(scope="module")
def models():
    """One tiny random model per architecture (eval mode), shared by the module."""
    return {name: tm.make(name).eval() for name in ARCHS}


@pytest.fixture(scope="module")
def x():
    return tm.tokens(2, 10, seed=1)


@pytest.fixture(scope="module")
def ref():
    return tm.tokens(3, 9, seed=2)


def no_hooks_left(model) -> bool:
    return (all(not hp._forward_hooks for hp in model.hook_dict.values())
            and all(not b.mixer._forward_pre_hooks for b in model.blocks))


def out_columns(model, layer: int, head: int) -> tuple[torch.nn.Linear, slice]:
    """The mixer's output projection and the input columns that carry ``head``'s output."""
    mixer, fam = model.blocks[layer].mixer, family(model)
    if fam == "attention":
        return mixer.o, slice(head * mixer.d_head, (head + 1) * mixer.d_head)
    if fam == "linear":
        return mixer.o_proj, slice(head * mixer.d_v, (head + 1) * mixer.d_v)
    if fam == "mamba2":  # heads of head_dim channels; the gated norm's rms is held (see Mamba2Mixer)
        return mixer.out_proj, slice(head * mixer.head_dim, (head + 1) * mixer.head_dim)
    width = mixer.d_inner if fam == "mamba" else mixer.hidden_dim
    g = width // n_heads(model)
    return mixer.out_proj, slice(head * g, (head + 1) * g)


def edited(model, fn):
    """A copy of ``model`` with ``fn(copy)`` applied to its weights (under no_grad)."""
    copy = build(model.cfg, seed=0).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        fn(copy)
    return copy


# ----------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("name", ["gpt2", "neox", "fox"])
def test_zero_attention_head_equals_zeroed_value_weights(models, x, name):
    m, (layer, head) = models[name], (1, 2)
    rows = slice(head * m.cfg.head_dim, (head + 1) * m.cfg.head_dim)

    def kill_v(c):
        c.blocks[layer].mixer.v.weight[rows] = 0
        if c.blocks[layer].mixer.v.bias is not None:
            c.blocks[layer].mixer.v.bias[rows] = 0

    with ablate_heads(m, [(layer, head)], "zero"):
        got = m(x)
    torch.testing.assert_close(got, edited(m, kill_v)(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "fox"])
def test_uniform_sets_the_heads_pattern_to_one_over_i_plus_one(models, x, name):
    m, layer = models[name], 1
    _, clean = m.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    with ablate_heads(m, [(layer, 2)], "uniform"):
        _, cache = m.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    name = f"blocks.{layer}.mixer.hook_pattern"
    p, p0 = cache[name], clean[name]
    L = x.shape[1]
    want = torch.ones(L, L).tril() / torch.arange(1, L + 1)[:, None]
    torch.testing.assert_close(p[:, 2], want.expand_as(p[:, 2]), atol=1e-6, rtol=0)
    others = [0, 1, 3]
    torch.testing.assert_close(p[:, others], p0[:, others], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_uniform_equals_zeroed_query_weights(models, x, name):
    # q = 0 gives all-zero logits on softmax attention (no forget bias): the same uniform pattern
    m, (layer, head) = models[name], (0, 1)
    rows = slice(head * m.cfg.head_dim, (head + 1) * m.cfg.head_dim)

    def kill_q(c):
        c.blocks[layer].mixer.q.weight[rows] = 0
        c.blocks[layer].mixer.q.bias[rows] = 0

    with ablate_heads(m, [(layer, head)], "uniform"):
        got = m(x)
    torch.testing.assert_close(got, edited(m, kill_q)(x), atol=ATOL, rtol=0)


def test_mean_with_reference_equals_value_bias_edit(models, x, ref):
    # pattern rows sum to 1, so v = const (weights 0, bias = mean z) makes z = mean z exactly
    m, (layer, head) = models["gpt2"], (1, 3)
    rows = slice(head * m.cfg.head_dim, (head + 1) * m.cfg.head_dim)
    _, cache = m.run_with_cache(ref, names_filter=f"blocks.{layer}.mixer.hook_z")
    mean_z = cache[f"blocks.{layer}.mixer.hook_z"][:, :, head].mean((0, 1))

    def const_v(c):
        c.blocks[layer].mixer.v.weight[rows] = 0
        c.blocks[layer].mixer.v.bias[rows] = mean_z

    with ablate_heads(m, [(layer, head)], "mean", reference=ref):
        got = m(x)
    torch.testing.assert_close(got, edited(m, const_v)(x), atol=ATOL, rtol=0)


def test_mean_without_reference_uses_the_current_input(models, x):
    m, (layer, head) = models["gpt2"], (0, 2)
    name = f"blocks.{layer}.mixer.hook_z"
    _, clean = m.run_with_cache(x, names_filter=name)
    with ablate_heads(m, [(layer, head)], "mean"):
        _, cache = m.run_with_cache(x, names_filter=name)
    want = clean[name][:, :, head].mean((0, 1)).expand_as(cache[name][:, :, head])
    torch.testing.assert_close(cache[name][:, :, head], want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["mingru", "minlstm", "lstm"])
def test_mean_on_readout_models_equals_output_bias_edit(models, x, ref, name):
    # h -> out_proj directly: a constant h[g] = mean is the columns' weights folded into the bias
    m, (layer, head) = models[name], (1, 1)
    proj, cols = out_columns(m, layer, head)
    site = "hook_z"
    _, cache = m.run_with_cache(ref, names_filter=f"blocks.{layer}.mixer.{site}")
    mean_h = cache[f"blocks.{layer}.mixer.{site}"].mean((0, 1))[cols]

    def fold(c):
        p = c.blocks[layer].mixer.out_proj
        bias = p.weight[:, cols] @ mean_h + (p.bias if p.bias is not None else 0)
        p.weight[:, cols] = 0
        if p.bias is None:
            p.bias = torch.nn.Parameter(bias)
        else:
            p.bias.copy_(bias)

    with ablate_heads(m, [(layer, head)], "mean", reference=ref):
        got = m(x)
    torch.testing.assert_close(got, edited(m, fold)(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["mamba", "gla", "retnet"])
def test_mean_on_gated_models_sets_the_site_to_the_reference_mean(models, x, ref, name):
    m, (layer, head) = models[name], (0, 2)
    site = f"blocks.{layer}.mixer." + "hook_z"
    _, cache = m.run_with_cache(ref, names_filter=site)
    mean = cache[site].mean((0, 1))
    _, cols = out_columns(m, layer, head)
    units = cols if name == "mamba" else head

    def set_mean(a, hook):
        a = a.clone()
        if name == "mamba":
            a[..., units] = mean[units]
        else:
            a[:, :, units] = mean[units]
        return a

    with ablate_heads(m, [(layer, head)], "mean", reference=ref):
        got = m(x)
    torch.testing.assert_close(got, m.run_with_hooks(x, fwd_hooks=[(site, set_mean)]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gla", "retnet", "mamba", "mingru", "minlstm", "lstm"])
def test_recurrent_uniform_definition(models, x, name):
    """Uniform = the group's mixed output rebuilt from uniform causal weights on its values."""
    m, (layer, head) = models[name], (0, 1)
    mix = f"blocks.{layer}.mixer."
    _, clean = m.run_with_cache(x, names_filter=lambda n: n.startswith(mix))
    with ablate_heads(m, [(layer, head)], "uniform"):
        _, cache = m.run_with_cache(x, names_filter=lambda n: n.startswith(mix))
    proj, cols = out_columns(m, layer, head)
    if name in ("gla", "retnet"):  # hook_z[h] = mean_{s≤t} v_s[h]
        got, want = cache[mix + "hook_z"][:, :, head], causal_mean(clean[mix + "hook_v"][:, :, head])
    elif name == "mamba":  # ssm_out[g] = mean_{s≤t} u_s[g] + D u_t[g]
        u = clean[mix + "hook_conv"][..., cols]
        want = causal_mean(u) + m.blocks[layer].mixer.D[cols] * u
        got = cache[mix + "hook_z"][..., cols]
    elif name in ("mingru", "minlstm"):  # h[g] = mean_{s≤t} h̃_s[g]
        want = causal_mean(clean[mix + "hook_candidate"][..., cols])
        got = cache[mix + "hook_z"][..., cols]
    else:  # LSTM read-out of h'[g] = o ⊙ tanh(mean_{s≤t} g_s), through the module out_proj
        h = clean[mix + "hook_z"].clone()
        g, o = clean[mix + "hook_candidate"][..., cols], clean[mix + "hook_out_gate"][..., cols]
        h[..., cols] = o * torch.tanh(causal_mean(g))
        got, want = cache[mix + "hook_out"], proj(h)
    torch.testing.assert_close(got, want.to(got.dtype), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ARCHS)
def test_every_arch_changes_logits_and_only_touches_its_group(models, x, ref, name, mode):
    m, (layer, head) = models[name], (0, 0)
    reference = ref if mode == "mean" else None
    mix = f"blocks.{layer}.mixer."
    base, clean = m.run_with_cache(x, names_filter=lambda n: n.startswith(mix))
    with ablate_heads(m, [(layer, head)], mode, reference):
        got, cache = m.run_with_cache(x, names_filter=lambda n: n.startswith(mix))
    # (1) the logits change at every position after the first
    assert bool(((got - base).abs().amax(-1)[:, 1:] > 1e-6).all()), (got - base).abs().amax(-1)
    # (2) the other groups' activations in that layer are untouched
    fam = family(m)
    _, cols = out_columns(m, layer, head)
    if fam == "lstm":  # read-out only: the recurrence (every hooked quantity) is unchanged
        for k in ("i", "f", "g", "o", "c", "h"):
            assert torch.equal(cache[mix + LSTM_HOOK[k]], clean[mix + LSTM_HOOK[k]]), k
    else:  # the site's units (heads of hook_z, channels otherwise) moved to the last axis
        a, a0 = (c[mix + SITE[fam]] for c in (cache, clean))
        if fam in ("attention", "linear", "mamba2"):
            a, a0, cols = a.movedim(2, -1), a0.movedim(2, -1), head
        keep = torch.ones(a.shape[-1], dtype=torch.bool)
        keep[cols] = False
        assert torch.equal(a[..., keep], a0[..., keep]) and not torch.equal(a[..., ~keep], a0[..., ~keep])
    # (3) the edit reaches the output only through the group's own output-projection columns
    _, cols = out_columns(m, layer, head)
    deaf = edited(m, lambda c: out_columns(c, layer, head)[0].weight[:, cols].zero_())
    with ablate_heads(deaf, [(layer, head)], mode, reference):
        got = deaf(x)
    torch.testing.assert_close(got, deaf(x), atol=ATOL, rtol=0)  # explicit vs fused attention path


@pytest.mark.parametrize("name", ARCHS)
def test_zero_all_heads_of_a_layer_equals_zeroed_output_projection(models, x, name):
    m, layer = models[name], 1
    with ablate_heads(m, [(layer, h) for h in range(n_heads(m))], "zero"):
        got = m(x)
    want = edited(m, lambda c: out_columns(c, layer, 0)[0].weight.zero_())(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_zero_one_head_equals_zeroed_output_columns(models, x, name):
    m, (layer, head) = models[name], (1, 3)
    _, cols = out_columns(m, layer, head)
    with ablate_heads(m, [(layer, head)], "zero"):
        got = m(x)
    want = edited(m, lambda c: out_columns(c, layer, head)[0].weight[:, cols].zero_())(x)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- step / stream


@pytest.mark.parametrize("name", ARCHS)
def test_stream_under_ablation_matches_forward_or_raises(models, x, ref, name):
    m, heads = models[name], [(0, 1), (1, 2)]
    for mode, reference in (("zero", None), ("mean", ref), ("uniform", None)):
        with ablate_heads(m, heads, mode, reference):
            full = m(x)
            if mode == "uniform" and family(m) != "attention":
                with pytest.raises(NotImplementedError, match="step"):
                    m.stream(x, chunk_size=4)
                continue
            torch.testing.assert_close(m.stream(x, chunk_size=4).logits, full, atol=1e-4, rtol=0)
    with ablate_heads(m, heads, "mean"):  # a chunk's own mean is not the input's: refused
        with pytest.raises(NotImplementedError, match="reference"):
            m.stream(x, chunk_size=4)
    assert no_hooks_left(m)


# ----------------------------------------------------------------------------- hygiene and errors


@pytest.mark.parametrize("name", ["gpt2", "mamba", "lstm"])
def test_hooks_are_removed_on_exit_and_on_exception(models, x, ref, name):
    m = models[name]
    base = m(x)
    for mode in MODES:
        with ablate_heads(m, [(0, 0), (1, 1)], mode, ref if mode == "mean" else None):
            assert not torch.equal(m(x), base)
        assert no_hooks_left(m) and torch.equal(m(x), base)
        with pytest.raises(RuntimeError, match="boom"):
            with ablate_heads(m, [(1, 0)], mode):
                raise RuntimeError("boom")
        assert no_hooks_left(m) and torch.equal(m(x), base)


def test_nested_user_hooks_survive(models, x):
    m, seen = models["gpt2"], []
    with m.hooks(fwd_hooks=[("blocks.0.mixer.hook_z", lambda z, hook: seen.append(1))]):
        with ablate_heads(m, [(0, 0)]):
            m(x)
        m(x)
    assert len(seen) == 2 and no_hooks_left(m)


@pytest.mark.parametrize("heads, match", [
    ([(2, 0)], r"heads: \(2, 0\) out of range"),
    ([(0, 4)], r"heads: \(0, 4\) out of range"),
    ([(0, -1)], "out of range"),
    ([(0, 1, 2)], "pairs of integers"),
    ([(0.5, 1)], "pairs of integers"),
    ((1, 1), "single pair"),
    ("L1H1", "heads: expected an iterable"),
])
def test_bad_heads_raise_naming_heads(models, heads, match):
    with pytest.raises(ValueError, match=match):
        with ablate_heads(models["gpt2"], heads):
            pass
    assert no_hooks_left(models["gpt2"])


def test_bad_mode_and_reference_raise(models, x):
    m = models["mamba"]
    with pytest.raises(ValueError, match="mode: expected one of"):
        with ablate_heads(m, [(0, 0)], "mask"):
            pass
    with pytest.raises(ValueError, match="reference: only used by mode='mean'"):
        with ablate_heads(m, [(0, 0)], "zero", reference=x):
            pass
    with pytest.raises(ValueError, match=r"reference: expected shape \[batch, seq_len\]"):
        with ablate_heads(m, [(0, 0)], "mean", reference=x[0]):
            pass
    with pytest.raises(ValueError, match=r"heads: \(0, 4\)"):  # Mamba heads = 4 channel groups
        with ablate_heads(m, [(0, 4)]):
            pass
    assert no_hooks_left(m)


# ----------------------------------------------------------------------------- planted circuit

R = 15  # distinct tokens repeated once: 30 positions (planted context N = 32)


def planted_with_readout(C: float = 10.0):
    """``planted_model()`` embedded in a wider residual stream with a read-out path: an OUT block
    of V dims where L1H1 writes the token *at* the position it attends to (x_j, the token after
    the earlier copy of x_i: the induction prediction) and the unembedding reads it with gain C.
    Everything else (L0H0, L0H1, the distractor L1H0, the L1H1 query / key) is the planted one."""
    base = planted_model()
    OUT = base.cfg.d_model
    m = build(base.cfg.replace(d_model=OUT + V), seed=0)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for n, p in base.named_parameters():
            params[n][tuple(slice(0, s) for s in p.shape)] = p
        for norm in [b.ln1 for b in m.blocks] + [m.ln_final]:
            norm.weight.fill_(1.0)
        a1 = m.blocks[1].mixer
        for t in range(V):  # L1H1 OV: token t at the key -> OUT_t; unembed reads OUT
            a1.v.weight[DH + t, t] = 1.0
            a1.o.weight[OUT + t, DH + t] = 1.0
            m.unembed.weight[t, OUT + t] = C
    return m.eval()


@pytest.fixture(scope="module")
def planted_io():
    g = torch.Generator().manual_seed(0)
    half = torch.stack([torch.randperm(V, generator=g)[:R] for _ in range(8)])
    return planted_with_readout(), torch.cat([half, half], 1)


@torch.no_grad()
def second_half_loss(model, tokens) -> float:
    """Mean next-token loss on the second copy (predicting x_{R+1..2R-1})."""
    logp = F.log_softmax(model(tokens).float(), -1)
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return float(nll[:, R:].mean())


@pytest.mark.parametrize("mode", MODES)
def test_planted_induction_breaks_when_either_circuit_head_is_ablated(planted_io, mode):
    m, toks = planted_io
    base = second_half_loss(m, toks)
    assert base < 0.1  # the readout predicts the repeat (measured 0.050)
    losses = {}
    for head in [(1, 1), (0, 1), (1, 0)]:
        with ablate_heads(m, [head], mode, toks if mode == "mean" else None):
            losses[head] = second_half_loss(m, toks)
    # measured (zero / mean / uniform): L1H1 2.77 / 2.79 / 3.19, L0H1 13.5 / 9.0 / 42.7 nats
    assert losses[(1, 1)] > 2.5 and losses[(0, 1)] > 2.5, losses
    assert abs(losses[(1, 0)] - base) < 1e-5, losses  # the distractor does nothing


def test_causal_check_result_on_planted(planted_io):
    m, toks = planted_io
    metric = TaskMetric("second_half_loss", lambda mod: second_half_loss(mod, toks), higher_is_better=False)
    res = causal_check(m, [(1, 1)], task=metric, n_random=3, seed=0, progress=False)
    assert res.heads == [(1, 1)] and res.metric == "second_half_loss" and not res.higher_is_better
    assert res.baseline < 0.1 and res.ablated > 2.5 and res.drop == pytest.approx(res.ablated - res.baseline)
    assert len(res.random) == 3 and all(len(d) == 1 and (1, 1) not in d for d in res.random_heads)
    assert res.random_heads == causal_check(m, [(1, 1)], task=metric, n_random=3, seed=0,
                                            progress=False).random_heads  # seeded
    frame = res.to_frame()
    assert list(frame["condition"]) == ["baseline", "target", "random", "random", "random"]
    assert frame["drop"].iloc[1] == pytest.approx(res.drop)
    back = CausalCheck.from_json(res.to_json())
    assert back.heads == res.heads and back.random_heads == res.random_heads and back.random == res.random
    assert json.loads(res.to_json())["settings"]["mode"] == "zero"
    fig = res.figure()
    assert len(fig.data) == 2 and list(fig.data[0].x)[1] == "target (1 head)"  # not "1 heads"
    assert fig.layout.yaxis.title.text == "second_half_loss<br>(lower is better)"
    with pytest.raises(ValueError, match="heads: expected at least one"):
        causal_check(m, [], task=metric, progress=False)
    with pytest.raises(ValueError, match="heads: 4 heads to match"):
        causal_check(m, all_heads(m), task=metric, n_random=1, progress=False)


# ----------------------------------------------------------------------------- zoo organism


@pytest.mark.slow  # 21 ablated evaluations of a shipped checkpoint
def test_causal_check_on_induction_organism():
    """induction-attn2: ablating its three best induction heads (induction_scores on the default
    data, which starts with the task's BOS) removes most of induction_loss_drop; as many random
    heads remove about half as much.

    Measured (zero ablation, n_random=20, seed 0; checkpoint of 600 steps at seq_len 128, periods
    8..64): baseline 3.691; top-3 [(1, 0), (1, 3), (1, 1)] ablated 0.984 (fraction removed 0.73);
    random triples remove 0.37 on average. Random heads are not harmless here: the organism's
    four layer-0 heads are its previous-token heads, which every induction head needs, so a random
    triple usually hits two of them. Top-2 removes 0.33 vs 0.15; all four layer-1 heads 0.97."""
    import seqlens
    from seqlens.circuits import induction_scores

    m = seqlens.load("induction-attn2")
    scores = induction_scores(m)
    top = [h for h, _ in scores.top(3)]
    assert all(layer == 1 for layer, _ in top) and scores.top(1)[0][1] > 0.5
    res = causal_check(m, top, n_random=20, mode="zero", seed=0, progress=False)
    assert res.metric.endswith("induction_loss_drop") and res.higher_is_better and res.baseline > 3.0
    frac, rand = res.fraction_removed(), torch.tensor(res.random_fraction_removed())
    assert frac > 0.6, (frac, res.ablated)  # most of the in-context loss drop
    assert rand.mean() < 0.5 and frac > 1.5 * rand.mean(), (frac, rand)
    assert res.drop > res.random_drop_mean + res.random_drop_std, (res.drop, res.random_drop_mean)


def test_random_head_sets_never_repeat_a_set_and_enumerate_few():
    """Issue 17: draws with replacement across draws showed L1H1 three times in 5 controls."""
    from seqlens.circuits.ablation import random_head_sets

    pool = [(0, 0), (0, 1), (1, 0), (1, 1)]
    every = random_head_sets(pool, 1, 5, seed=0)  # 4 single heads exist: all of them, once each
    assert every == [[(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)]]
    pairs = random_head_sets(pool, 2, 5, seed=0)  # 6 pairs exist: 5 different ones
    assert len(pairs) == 5 and len({tuple(p) for p in pairs}) == 5
    assert all(len(set(p)) == 2 and set(p) <= set(pool) for p in pairs)
    assert pairs == random_head_sets(pool, 2, 5, seed=0)  # seeded
