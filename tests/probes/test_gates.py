"""Gate saturation and interpretable cells (probes/gates.py): gates overwritten with constructed
values give the known saturation fractions; a unit planted to equal "inside a string" is the top
cell for that feature; the Python feature scanner matches hand annotations and ``tokenize``."""

import dataclasses
import io
import math
import tokenize

import pytest
import torch
from seqlens.testing.tiny import CONFIGS, RECURRENT, make, tokens

from seqlens.models import build
from seqlens.probes.gates import (
    PYTHON_FEATURES,
    CellReport,
    GateSaturation,
    NotApplicableError,
    default_text,
    gate_saturation,
    interpretable_cells,
    pearson,
    python_features,
)

# ----------------------------------------------------------------------------- gate saturation

VALUES = torch.tensor([0.05, 0.5, 0.95, 0.99])  # < 0.1: 1/4, > 0.9: 2/4
MEAN = float(VALUES.double().mean())


def pattern(shape, values=VALUES) -> torch.Tensor:
    """``values`` cycled over the flattened ``shape``: every fraction is exact when the size is a
    multiple of len(values)."""
    n = math.prod(shape)
    return values.repeat(n // len(values) + 1)[:n].reshape(shape)


def overwrite(fn):
    return lambda x, hook: fn(tuple(x.shape)).to(x.dtype)


# arch -> (hook suffixes to overwrite, function of the shape giving the hook value, expected rows
# {gate: (left, right, mean)})
KNOWN = {
    "lstm": (["hook_input_gate", "hook_decay", "hook_out_gate"], pattern, {g: (0.25, 0.5, MEAN) for g in ("i", "f", "o")}),
    "mingru": (["hook_input_gate"], pattern, {"z": (0.25, 0.5, MEAN), "1-z": (0.5, 0.25, 1 - MEAN)}),
    "minlstm": (["hook_decay", "hook_input_gate"], pattern, {"f'": (0.25, 0.5, MEAN), "i'": (0.25, 0.5, MEAN)}),
    "gla": (["hook_log_decay"], lambda s: pattern(s).log(), {"g": (0.25, 0.5, MEAN)}),
    "fox": (["hook_log_decay"], lambda s: pattern(s).log(), {"f": (0.25, 0.5, MEAN)}),
}


@pytest.mark.parametrize("arch", list(KNOWN))
def test_constructed_gates_give_known_fractions(arch):
    model = make(arch)
    suffixes, fn, expected = KNOWN[arch]
    hooks = [(f"blocks.{l}.mixer.{s}", overwrite(fn)) for l in range(model.cfg.n_layers) for s in suffixes]
    with model.hooks(fwd_hooks=hooks):
        res = gate_saturation(model, tokens(2, 8))
    assert len(res.layers) == model.cfg.n_layers * len(expected)
    for l in range(model.cfg.n_layers):
        for gate, (left, right, mean) in expected.items():
            row = res.row(l, gate)
            assert row["left"] == left and row["right"] == right, (l, gate, row)
            assert row["mean"] == pytest.approx(mean, abs=1e-6)


def test_mamba_decay_fractions():
    """Δ overwritten with known steps and A = −1: the decay exp(−Δ) lands in known bins for every
    state element (d, n)."""
    model = make("mamba")
    with torch.no_grad():
        for b in model.blocks:
            b.mixer.A_log.zero_()
    delta = torch.tensor([3.0, 0.5, 0.05, 0.01])  # exp(−Δ) = 0.0498, 0.607, 0.951, 0.990
    hooks = [(f"blocks.{l}.mixer.hook_delta", overwrite(lambda s: pattern(s, delta))) for l in range(2)]
    with model.hooks(fwd_hooks=hooks):
        res = gate_saturation(model, tokens(2, 8))
    assert res.gates == ["exp(ΔA)"] * 2
    assert res.left.tolist() == [0.25, 0.25] and res.right.tolist() == [0.5, 0.5]
    assert res.unit_left[0].numel() == model.cfg.d_inner * model.cfg.d_state
    assert res.mean[0] == pytest.approx(float(torch.exp(-delta.double()).mean()), abs=1e-6)


def test_mamba_decay_per_state_element():
    """With A_n = −(n + 1) (S4D-real) the decay differs per n: compare with a direct count."""
    model = make("mamba")
    toks = tokens(2, 8)
    _, cache = model.run_with_cache(toks)
    res = gate_saturation(model, toks, low=0.3, high=0.7)
    decay = torch.exp(cache["blocks.1.mixer.hook_delta"][..., None] * model.blocks[1].mixer.A)
    assert res.row(1, "exp(ΔA)")["left"] == pytest.approx(float((decay < 0.3).double().mean()), abs=1e-12)
    assert res.row(1, "exp(ΔA)")["right"] == pytest.approx(float((decay > 0.7).double().mean()), abs=1e-12)
    assert torch.equal(res.unit_left[1], (decay < 0.3).double().mean((0, 1)).flatten())


def test_per_unit_fractions():
    model = make("mingru")
    D = model.cfg.d_hidden

    def gate(shape):  # unit 0 always closed, unit 1 always open, the rest at 0.5
        g = torch.full(shape, 0.5)
        g[..., 0], g[..., 1] = 0.01, 0.99
        return g

    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_input_gate", overwrite(gate))]):
        res = gate_saturation(model, tokens(3, 5))
    z = res.gates.index("z")
    assert res.unit_left[z][:2].tolist() == [1.0, 0.0] and res.unit_right[z][:2].tolist() == [0.0, 1.0]
    assert res.left[z] == 1 / D and res.n_tokens == 15


def test_retnet_constant_decay():
    model = make("retnet")
    res = gate_saturation(model, tokens(2, 8))
    gamma = model.blocks[0].mixer.gamma  # 1 − 2^(−5−h) > 0.9 for every head
    assert res.right.tolist() == [1.0, 1.0] and res.left.tolist() == [0.0, 0.0]
    assert res.constants["0"] == gamma.tolist()
    assert res.mean[0] == pytest.approx(float(gamma.mean()), abs=1e-6)


@pytest.mark.parametrize("arch", RECURRENT + ["fox"])
def test_every_gated_arch_runs(arch):
    res = gate_saturation(make(arch), tokens(2, 12))
    assert bool(((res.left >= 0) & (res.right >= 0) & (res.left + res.right <= 1)).all())
    assert bool(((res.mean > 0) & (res.mean <= 1)).all())
    assert sorted(set(res.layers)) == [0, 1]
    df = res.to_frame()
    assert list(df.columns[:6]) == ["layer", "gate", "hook", "left", "middle", "right"]
    res.figure()
    res.figure(kind="units")
    back = GateSaturation.from_json(res.to_json())
    assert torch.equal(back.left, res.left) and back.gates == res.gates


def test_lstm_gates_are_the_hooked_gates():
    model = make("lstm")
    toks = tokens(2, 10)
    _, cache = model.run_with_cache(toks)
    res = gate_saturation(model, toks)
    for gate in ("i", "f", "o"):
        g = cache["blocks.1.mixer." + {"i": "hook_input_gate", "f": "hook_decay", "o": "hook_out_gate"}[gate]].double()
        assert res.row(1, gate)["left"] == pytest.approx(float((g < 0.1).double().mean()), abs=1e-12)
        assert res.row(1, gate)["mean"] == pytest.approx(float(g.mean()), abs=1e-6)


def test_gate_errors():
    with pytest.raises(NotApplicableError, match="model: .*not applicable"):
        gate_saturation(make("gpt2"), tokens(1, 4))
    with pytest.raises(ValueError, match="model"):  # also a ValueError
        gate_saturation(make("llama"), tokens(1, 4))
    model = make("lstm")
    with pytest.raises(ValueError, match="low"):
        gate_saturation(model, tokens(1, 4), low=0.9, high=0.1)
    with pytest.raises(ValueError, match="high"):
        gate_saturation(model, tokens(1, 4), high=1.5)
    with pytest.raises(ValueError, match="tokens"):
        gate_saturation(model, torch.rand(1, 4))
    with pytest.raises(ValueError, match="kind"):
        gate_saturation(model, tokens(1, 4)).figure(kind="pie")


# ----------------------------------------------------------------------------- text features


def annotated(feature: str, text: str, row: str):
    """Check ``feature`` against a digit string aligned under ``text`` (one digit per byte). In
    ``text``, ``$`` stands for a newline, ``→`` for a tab and ``␀`` for NUL, so that the
    annotation lines up with the text in the source."""
    text = text.replace("$", "\n").replace("→", "\t").replace("␀", "\x00")
    assert len(row) == len(text.encode())
    got = "".join(str(int(v)) for v in python_features(text)[feature].tolist())
    assert got == row, f"{feature}\n{text!r}\n{got}\n{row}"


def test_features_strings_and_escapes():
    annotated("in_string",
              r"""x = "a\"b" + 'c'$""",
              r"""00001111110001110""")
    # a prefix belongs to its literal; a backslash never closes one, also in raw strings
    annotated("in_string",
              r"""s = r'\'' + b"\\" + u""",
              r"""000011111000111110000""")


def test_features_triple_quotes():
    annotated("in_string",
              'a = """x "y" Q z"""$b'.replace("Q", "'''"),
              '00001111111111111111100')
    annotated("in_string",
              r"""'''$'a'$''' ''""",
              r"""11111111111011""")


def test_features_comments():
    text = r"""x = 1  # it's a "comment"$y = '#'"""
    annotated("in_string",
              text,
              r"""000000000000000000000000000000111""")
    annotated("in_comment",
              text,
              r"""000000011111111111111111100000000""")


def test_features_brackets():
    annotated("bracket_depth",
              r"""f(a[1], {2: (3)}) ')' # (""",
              r"""0112211122223321000000000""")


def test_features_lines():
    text = r"""def f():$    if x:$→return$"""
    annotated("line_pos",
              text,
              r"""012345678012345678901234567""")
    annotated("indent",
              text,
              r"""000000000444444444488888888""")


def test_features_unterminated_and_files():
    # an unclosed single-quoted literal ends at the newline; NUL (file boundary) resets everything
    text = r"""x = 'ab$( "c␀y"""
    annotated("in_string",
              text,
              r"""00001110001100""")
    annotated("bracket_depth",
              text,
              r"""00000000111100""")


def tokenize_spans(src: str) -> tuple[list[int], list[int], list[int]]:
    """Ground truth from the standard tokenizer: STRING (3.12+: FSTRING_START..END) and COMMENT
    spans, and the bracket depth from OP tokens outside f-strings."""
    starts = [0]
    for line in src.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    n = len(src)
    string, comment, events, fdepth, fstart = [0] * n, [0] * n, {}, 0, 0
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        (r0, c0), (r1, c1) = tok.start, tok.end
        if r0 > len(starts) - 1:
            continue
        a, b = starts[r0 - 1] + c0, starts[r1 - 1] + c1
        name = tokenize.tok_name[tok.type]
        if name == "FSTRING_START":
            fdepth, fstart = fdepth + 1, a if fdepth == 0 else fstart
        elif name == "FSTRING_END":
            fdepth -= 1
            if fdepth == 0:
                string[fstart:b] = [1] * (b - fstart)
        elif fdepth:
            continue
        elif tok.type == tokenize.STRING:
            string[a:b] = [1] * (b - a)
        elif tok.type == tokenize.COMMENT:
            comment[a:b] = [1] * (b - a)
        elif tok.type == tokenize.OP and tok.string in "([{)]}":
            events[a] = 1 if tok.string in "([{" else -1
    depth, d = [], 0
    for i in range(n):
        d = max(0, d + events.get(i, 0))
        depth.append(d)
    return string, comment, depth


@pytest.mark.parametrize("module", ["textwrap", "string", "tokenize", "dataclasses"])
def test_features_match_tokenize_on_stdlib(module):
    """Every byte of a few (ASCII) stdlib modules; a script run once over all 715 ASCII files of
    the stdlib corpus found no difference either."""
    from seqlens.corpus import stdlib_root

    src = (stdlib_root() / f"{module}.py").read_text(encoding="utf-8")
    assert src.isascii()  # byte offsets = character offsets
    string, comment, depth = tokenize_spans(src)
    f = python_features(src)
    assert f["in_string"].long().tolist() == string
    assert f["in_comment"].long().tolist() == comment
    assert f["bracket_depth"].long().tolist() == depth


def test_pearson():
    x = torch.tensor([[1.0, 0.0, 3.0], [2.0, 0.0, 2.0], [3.0, 0.0, 1.0]])
    c = pearson(x, x[:, :1])
    assert c[0, 0] == pytest.approx(1.0) and math.isnan(c[1, 0]) and c[2, 0] == pytest.approx(-1.0)


# ----------------------------------------------------------------------------- interpretable cells

SOURCE = '''def greet(name, times=3):
    """Say hello (politely)."""
    # repeat the "greeting"
    for i in range(times):
        print(f"hello {name}!", 'x' * i)  # done?
    return {"name": [name, (times, 'a\\'b')]}


class Box:
    size = ('''


def byte_model(arch: str, **changes):
    return build(dataclasses.replace(CONFIGS[arch], vocab_size=256, **changes), seed=0)


@pytest.mark.parametrize("arch,hook", [("mingru", "blocks.1.mixer.hook_z"), ("lstm", "blocks.1.mixer.hook_c")])
def test_planted_inside_string_unit_is_top(arch, hook):
    model = byte_model(arch)
    inside = python_features(SOURCE)["in_string"]
    unit = 7

    def plant(x, hook):  # causal: position t gets the indicator of byte t
        x = x.clone()
        x[0, :, unit] = inside[: x.shape[1]].to(x.dtype)
        return x

    with model.hooks(fwd_hooks=[(hook, plant)]):
        rep = interpretable_cells(model, SOURCE)
    name, corr = rep.top("in_string")[0]
    assert name == f"{hook}[{unit}]" and corr == pytest.approx(1.0, abs=1e-9)
    assert rep.top("in_string", 2)[1][1] < 0.99
    # the highlighted text: characters inside strings at full red, the others blank
    html = rep.html("in_string")
    assert html.count("<span") == len(SOURCE) and "&quot;" in html and "&#x27;" in html
    full = html.count("rgba(215,48,39,1.000)")
    assert full == int(inside.sum()) and html.count("rgba(215,48,39,0.000)") == len(SOURCE) - full


def test_default_units_and_frame():
    model = byte_model("mingru")
    rep = interpretable_cells(model, SOURCE, top_k=3)
    D = model.cfg.d_hidden
    assert len(rep.units) == model.cfg.n_layers * D and rep.units[D] == "blocks.1.mixer.hook_z[0]"
    assert rep.features == list(PYTHON_FEATURES)
    df = rep.to_frame()
    assert len(df) == 3 * len(PYTHON_FEATURES) and list(df.columns) == ["feature", "rank", "unit", "corr"]
    assert set(df["unit"]) == set(rep.stored_units) and rep.activations.shape == (len(SOURCE), len(rep.stored_units))
    assert rep.text == SOURCE
    assert rep.figure().layout.height == 400 and rep.figure(height=300).layout.height == 300
    rep.figure(all_units=True)
    assert interpretable_cells(model, top_k=1).settings["text"] == "stdlib:val[:8192]"
    back = CellReport.from_json(rep.to_json())
    assert back.units == rep.units and torch.equal(back.corr, rep.corr)
    assert back.html(rep.stored_units[0]) == rep.html(rep.stored_units[0])


def test_correlation_matches_direct_computation():
    model = byte_model("lstm")
    rep = interpretable_cells(model, SOURCE, hook="blocks.0.mixer.hook_z", features=["indent"])
    _, cache = model.run_with_cache(torch.tensor([list(SOURCE.encode())]))
    h = cache["blocks.0.mixer.hook_z"][0].double()
    f = python_features(SOURCE)["indent"].double()
    direct = torch.corrcoef(torch.cat([h.T, f[None]]))[-1, :-1]
    assert torch.allclose(rep.corr[:, 0], direct, atol=1e-6)


def test_windows_and_custom_features():
    model = byte_model("llama")
    text = SOURCE[:40]
    rep = interpretable_cells(model, text, features={"colon": lambda b: [c == ord(":") for c in b],
                                                     "depth": "bracket_depth"}, window=16)
    assert rep.features == ["colon", "depth"] and rep.settings["window"] == 16
    assert rep.feature_values.shape == (2, 40)
    whole = interpretable_cells(model, text, features=["line_pos"], window=None)
    same = interpretable_cells(model, text, features=["line_pos"], window=40)
    assert torch.allclose(whole.corr, same.corr)
    assert interpretable_cells(model, SOURCE[:8], features=["line_pos"]).settings["window"] == model.cfg.n_ctx


def test_cell_errors():
    model = byte_model("mingru")
    with pytest.raises(ValueError, match="model"):
        interpretable_cells(make("mingru"), SOURCE)  # 97-token vocabulary: not bytes
    with pytest.raises(ValueError, match="hook"):
        interpretable_cells(model, SOURCE, hook="blocks.0.mixer.hook_nope")
    with pytest.raises(ValueError, match="hook"):
        interpretable_cells(model, SOURCE, hook="blocks.0.mixer.hook_state")  # fires only in tap_states
    with pytest.raises(ValueError, match="features"):
        interpretable_cells(model, SOURCE, features=["sarcasm"])
    with pytest.raises(ValueError, match="features"):
        interpretable_cells(model, SOURCE, features={"short": [1.0, 2.0]})
    with pytest.raises(ValueError, match="top_k"):
        interpretable_cells(model, SOURCE, top_k=0)
    with pytest.raises(ValueError, match="text"):
        interpretable_cells(model, 123)
    with pytest.raises(ValueError, match="window"):
        interpretable_cells(model, SOURCE, window=0)
    rep = interpretable_cells(model, SOURCE, top_k=1)
    with pytest.raises(ValueError, match="key"):
        rep.html("nope")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text-mingru", "text-lstm"])
def test_zoo_text_cells(name):
    import seqlens

    model = seqlens.load(name)
    rep = interpretable_cells(model, default_text(4096), features=["in_string", "bracket_depth"], top_k=3)
    assert rep.settings["window"] is None
    assert abs(rep.top("in_string")[0][1]) > 0.3
    gates = gate_saturation(model)
    assert gates.settings["data"] == f"recipe:{name}:eval[0]"
