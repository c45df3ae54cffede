"""State collapse: diagnosis and mitigations (Stuffed Mamba, Chen et al. 2024; docs/methods.md §5).

Diagnosis (:func:`state_collapse`)
----------------------------------
A long input (``"newlines"``, ``"repeat"``, the model's own ``"task"`` stream, or your tokens) runs
through ``SeqModel.stream`` in chunks of ``chunk`` tokens (128, as in ``thunlp/stuffed-mamba``'s
``analyze_states.py``), carrying the state, with ``return_logits=False``: memory is O(state) plus
one chunk, whatever the length. One chunk boundary is moved onto the training length ``L`` so
that a snapshot exists exactly there. After every chunk, per layer and per head:

- the carried state's ``mean, var, rms, median, min, max`` (variance with ``correction=0``;
  ``rms = sqrt(mean(h²))``), pooled over the head's elements and the batch rows;
- ``cos``: cosine similarity of each row's head state with the previous snapshot's (mean over
  rows; NaN at the first snapshot);
- the decay applied during the chunk, read from the hooks (after any edit other hooks make):
  ``decay_mean, decay_var, decay_min, decay_max`` over the chunk's tokens and the head's channels;
- the next-token loss (nats) and greedy accuracy, summed per chunk and per position bucket
  ``[0, L), [L, 2L), [2L, 4L), ...`` over the scored (row, position) pairs: every position
  (the last chunk row's logits are carried to the next chunk, so all but the very last position
  have a target), except on the ``"task"`` stream of a recipe trained on its task's
  ``loss_mask`` (``train_on="mask"``, e.g. the passkey organisms, which never learned to predict
  the filler), where only the masked positions count — the task's own metric.

Heads and the "state" per architecture (``H`` = ``cfg.pattern_heads`` for the channel-group archs):

============  ============================  =================================  ===================
arch          state (head view)             decay (hook)                       heads
============  ============================  =================================  ===================
mamba         ``ssm [B, D, N]``             ``exp(Δ A)`` (``hook_delta``)      H groups of d_inner
gla / retnet  ``S [B, H, d_k, d_v]``        ``g = exp(log g)`` (hook_log_decay) the mixer's heads
mingru        ``h [B, D_h]``                ``1 − z`` (``hook_gate``)          H groups of D_h
minlstm       ``h [B, D_h]``                ``f'`` (``hook_gate``)             H groups of D_h
lstm          cell ``c [B, D_h]``           ``f`` (``hook_f``)                 H groups of D_h
transformer   new KV entries of the chunk   none (NaN)                         query heads
fox           new KV entries of the chunk   forget gate ``f`` (hook_log_forget) query heads
============  ============================  =================================  ===================

Attention has no fixed-size state: its "state" statistics are those of the keys and values the
chunk wrote into the cache (``[k; v]`` per query head), ``cos`` is NaN, and memory grows with
the cache (O(L)); models with learned positions cannot run past ``n_ctx`` (ValueError).

Collapse rule (recorded in ``settings["rule"]``)
------------------------------------------------
``collapsed`` iff both hold:

1. loss: ``max_k ℓ(bucket_k) > ℓ_in + loss_margin`` over the buckets beyond ``L`` that span at
   least ``L/2`` positions (a short last bucket is too noisy to judge), where ``ℓ_in`` is the mean loss over positions ``[0, L)`` — the regime
   the model was trained on; ``loss_margin = 0.5`` nats by default;
2. state: some (layer, head) has ``max_{t > L} rms_t > rms_ratio · rms_L`` (``rms_L``: the
   snapshot at position ``L``, floored at 1e-3 × the layer's largest head RMS so silent heads do
   not divide by ~0); ``rms_ratio = 2`` by default.

Non-finite losses or states count as exceeding. ``collapsed`` is None when the stream does not
go past ``L``. Why these thresholds: a model that extrapolates gracefully changes its per-token
loss by well under 0.1-0.2 nats past its training length (more context usually lowers it), while
the collapse Stuffed Mamba reports raises it by several nats; 0.5 nats (perplexity × 1.65) is
clearly broken yet far below a real collapse. A state whose RMS doubles past ``L`` is in a
regime training never produced (Stuffed Mamba: a few channels explode); growth alone is not
collapse (slow channels of a healthy model keep filling up), hence the AND with the loss.
``onset`` (only when collapsed) is the first snapshot past ``L`` whose chunk loss and largest RMS
ratio both exceed (one chunk's loss is noisy: on real text single chunks can exceed on their own).

Mitigations (context managers; they act on the state carried between chunks)
-----------------------------------------------------------------------------
``stream`` runs each chunk through the fused kernels, so the state can only be edited where it is
carried: :func:`normalize_states` and :func:`state_window` rewrite the state each mixer returns
at the end of every chunk (``stream`` / ``step`` / ``forward_chunk``; a full ``forward`` from an
empty state is unchanged). With ``chunk=1`` they are the per-token rules. :func:`forget_more`
edits hooks, so it acts on every token and in every entry point.

- :func:`normalize_states`: ``h ← h · τ/‖h‖`` when ``‖h‖ > τ``, per batch row, layer and head
  (Frobenius norm of the head view above; the intended rule of docs/methods.md §5, whose official
  code inverts the ratio). ``τ [n_layers, n_heads]``: the largest head norm on a reference prompt
  (default: 8 rows of the model's own task stream, ``L`` tokens each). Mamba's conv state is left alone; for
  the LSTM only the cell ``c`` is rescaled.
- :func:`forget_more` (``b_scale`` scales the write, ``decay_scale = c`` raises the decay to the
  power ``c``, i.e. multiplies the log decay; the write is unchanged by ``c``):

  ========  ===============================================================================
  mamba     ``hook_delta`` Δ·c and ``hook_B`` B·b_scale/c: ``exp(cΔA)`` with ``Δ B`` · b_scale
            (exactly "A multiplied by c", Stuffed Mamba's Δ/A multiplier without changing the
            input weight)
  gla       ``hook_log_decay`` log g·c; ``hook_k`` k·b_scale (what ``kᵀv`` writes)
  retnet    same as gla (the constant log γ goes through hook_log_decay too)
  mingru    ``hook_gate`` z' = 1 − (1 − z)^c; ``hook_candidate`` h̃ · b_scale · z/z' (so the
            write z·h̃ is unchanged by c)
  minlstm   ``hook_gate`` f'^c; ``hook_input_gate`` i'·b_scale
  lstm      ``hook_f`` f^c; ``hook_i`` i·b_scale (nonlinear: the edits feed the LSTM's replay)
  fox       ``hook_log_forget`` log f·c (``b_scale`` must be 1); softmax attention: not
            applicable (NotImplementedError)
  ========  ===============================================================================

  With a growing decay (≥ 1), ``c > 1`` grows it faster: use ``b_scale`` there.
- :func:`state_window`: sliding window by state difference ``h_(t−r,t] = h_t − (∏_{k=t−r+1..t}
  a_k) h_{t−r}`` (docs/methods.md §5). Linear recurrences only (mamba, gla, retnet, mingru, minlstm):
  at each chunk end the chunk's own contribution ``S_j = h_end − D_j ⊙ h_start`` (``D_j`` the
  chunk's cumulative decay, from the decay hooks) joins a queue; the oldest chunks leave it, each
  subtracted with its decay since (log-decay prefix sums in float64), while the rest still cover
  ``window`` tokens. The carried state is then exactly the state of the last ``window`` tokens
  from a zero state (given the coefficients the run realised) when ``window`` is a multiple of
  the chunk length; otherwise the window rounds up to whole chunks. Memory: ``window / chunk``
  chunk states. LSTM: NotImplementedError (nonlinear). Attention: the KV cache (and FoX's
  cumulative forget) is cut to its last ``window`` entries.
"""

from __future__ import annotations

import contextlib
import math
from array import array
import time
import weakref
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlens.result import Result
from seqlens.text import encode, is_byte_level

DEFAULT_TOKENS = 16_384
DEFAULT_CHUNK = 128
LOSS_MARGIN = 0.5  # nats per token
RMS_RATIO = 2.0
SOURCES = ("newlines", "repeat", "task")
STAT_NAMES = ("mean", "var", "rms", "median", "min", "max")
DECAY_NAMES = ("decay_mean", "decay_var", "decay_min", "decay_max")
NEWLINE_ID = 10  # "\n" in byte vocabularies
# the "capital" prompt of thunlp/stuffed-mamba (analysis/get_prompt.py), our "repeat" source
REPEAT_TEXT = ("The capital of China is Beijing. The capital of USA is Washington. "
               "The capital of Norway is Oslo. ")
REPEAT_PERIOD = 64  # random-token period of "repeat" for non-byte vocabularies
REFERENCE_ROWS = 8  # rows of the default reference prompt of normalize_states
LOG_FLOOR = -1000.0  # per-token log decay floor (exp underflows to 0 long before)
RULE = ("collapsed iff max over buckets [L·2^k, L·2^(k+1)) past L (spanning ≥ L/2 positions) of the mean "
        "loss > mean loss over [0, L) + loss_margin  AND  some (layer, head) has max_{t>L} state RMS > "
        "rms_ratio × its RMS at t = L (non-finite values count as exceeding)")

FAMILIES = {"mamba": "mamba", "gla": "gla", "retnet": "gla", "mingru": "minrnn", "minlstm": "minrnn",
            "lstm": "lstm", "transformer": "attention", "fox": "attention"}
LINEAR = ("mamba", "gla", "minrnn")

# active mitigations per model, recorded in the settings of every CollapseResult
_ACTIVE: "weakref.WeakKeyDictionary[Any, list[dict]]" = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------- architecture views


def _family(model) -> str:
    from seqlens.models.base import SeqModel

    if not isinstance(model, SeqModel):
        raise TypeError(f"model: expected a seqlens SeqModel, got {type(model).__name__}")
    fam = FAMILIES.get(model.cfg.arch)
    if fam is None:
        raise NotImplementedError(f"model: no collapse probe for arch {model.cfg.arch!r}")
    return fam


def n_state_heads(model) -> int:
    """Heads the statistics are reported for: GLA / RetNet / attention heads, else
    ``cfg.pattern_heads`` channel groups (Mamba: of d_inner; minGRU / minLSTM / LSTM: of D_h)."""
    fam = _family(model)
    return model.cfg.n_heads if fam in ("gla", "attention") else model.cfg.pattern_heads


def _state_key(fam: str) -> str:
    return {"mamba": "ssm", "gla": "S", "minrnn": "h", "lstm": "c"}[fam]


def head_view(state: Tensor, heads: int) -> Tensor:
    """``[B, ...] -> [B, H, G]``: a layer's state split into ``heads`` contiguous groups along the
    first non-batch dim (Mamba ``[B, D, N]``, GLA ``[B, H, d_k, d_v]``, minGRU / LSTM ``[B, D]``)."""
    return state.reshape(state.shape[0], heads, -1)


def _attention_view(layer_state: dict[str, Tensor], new: int, heads: int) -> Tensor:
    """``[B, H, G]``: the last ``new`` cached keys and values of every query head."""
    k, v = layer_state["k"], layer_state["v"]
    rep = heads // k.shape[1]
    kv = torch.cat([k[:, :, -new:], v[:, :, -new:]], dim=-1)  # [B, H_kv, T, 2 dh]
    kv = kv.repeat_interleave(rep, dim=1) if rep > 1 else kv
    return kv.reshape(kv.shape[0], heads, -1)


def _decay_hooks(model) -> tuple[str, ...]:
    """Hook names (under ``blocks.{l}.mixer``) whose final values give the decay."""
    fam = _family(model)
    if fam == "attention":
        return ("hook_log_forget",) if model.cfg.arch == "fox" else ()
    return {"mamba": ("hook_delta",), "gla": ("hook_log_decay",), "minrnn": ("hook_gate",),
            "lstm": ("hook_f",)}[fam]


def _decay_tensor(model, layer: int, seen: dict[str, Tensor], heads: int) -> Tensor | None:
    """The per-token decay of the last chunk, ``[B, T, H, G]`` (G: the head's decay elements)."""
    fam, arch = _family(model), model.cfg.arch
    if not seen:
        return None
    if fam == "mamba":
        A = model.blocks[layer].mixer.A  # [D, N]
        d = torch.exp(seen["hook_delta"].float()[..., None] * A)  # [B, T, D, N]
    elif fam == "gla":
        d = seen["hook_log_decay"].float().exp()  # [B, T, H, d_k]
    elif fam == "minrnn":
        g = seen["hook_gate"].float()
        d = 1 - g if arch == "mingru" else g  # [B, T, D_h]
    elif fam == "lstm":
        d = seen["hook_f"].float()
    else:
        d = seen["hook_log_forget"].float().exp()  # [B, T, H]
    B, T = d.shape[:2]
    return d.reshape(B, T, heads, -1)


def _log_chunk_decay(model, layer: int, seen: dict[str, Tensor]) -> Tensor:
    """log of the chunk's cumulative decay, broadcastable to the layer's state (float64):
    Mamba ``A·ΣΔ [B, D, N]``, GLA ``Σ log g [B, H, d_k, 1]``, minGRU / minLSTM ``Σ log a [B, D_h]``."""
    fam, arch = _family(model), model.cfg.arch
    if fam == "mamba":
        s = seen["hook_delta"].double().sum(1)  # [B, D]
        return s[..., None] * model.blocks[layer].mixer.A.double()
    if fam == "gla":
        return seen["hook_log_decay"].double().clamp_min(LOG_FLOOR).sum(1)[..., None]
    g = seen["hook_gate"].double()
    a = 1 - g if arch == "mingru" else g
    return torch.log(a).clamp_min(LOG_FLOOR).sum(1)


# ----------------------------------------------------------------------------- hook readers


def _store(store: dict[str, Tensor], name: str, module, inputs, output) -> None:
    store[name] = output.detach()


@contextlib.contextmanager
def _last_values(model, names: Sequence[str]) -> Iterator[list[dict[str, Tensor]]]:
    """Yields ``seen[layer][name]``: the value of ``blocks.{l}.mixer.{name}`` in the layer's last
    mixer call, after every other hook on it. The readers are registered on the hook points right
    before each mixer call (a forward pre-hook), so they run after all hooks registered earlier —
    edits included — and removed right after (the LSTM's replay calls a hook several times; the
    last call, on the whole chunk, wins)."""
    seen: list[dict[str, Tensor]] = [{} for _ in model.blocks]
    handles: list[Any] = []
    live: list[list[Any]] = [[] for _ in model.blocks]

    def pre(layer: int, module, args, kwargs):
        seen[layer].clear()
        for name in names:
            live[layer].append(getattr(module, name).register_forward_hook(partial(_store, seen[layer], name)))

    def post(layer: int, module, args, kwargs, output):
        for h in live[layer]:
            h.remove()
        live[layer].clear()

    if names:
        for l, block in enumerate(model.blocks):
            handles.append(block.mixer.register_forward_pre_hook(partial(pre, l), with_kwargs=True))
            handles.append(block.mixer.register_forward_hook(partial(post, l), with_kwargs=True,
                                                             always_call=True))
    try:
        yield seen
    finally:
        for h in handles + [h for hs in live for h in hs]:
            h.remove()


@contextlib.contextmanager
def _mitigation(model, info: dict):
    _ACTIVE.setdefault(model, []).append(info)
    try:
        yield
    finally:
        _ACTIVE[model].remove(info)


# ----------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def train_length(model, train_len: int | None = None) -> tuple[int, str]:
    """``(L, where it came from)``: ``train_len`` if given, else the recipe's
    ``data_kwargs["seq_len"]`` (the length the organism was trained at), else ``cfg.n_ctx``."""
    if train_len is not None:
        return _positive_int("train_len", train_len), "argument"
    recipe = getattr(model, "recipe", None)
    seq_len = None if recipe is None else getattr(recipe, "data_kwargs", {}).get("seq_len")
    if isinstance(seq_len, int) and seq_len > 0:
        return seq_len, "recipe.data_kwargs['seq_len']"
    return model.cfg.n_ctx, "cfg.n_ctx"


# ----------------------------------------------------------------------------- token sources


def _text_ids(model, text: str) -> list[int]:
    return encode(text, getattr(model, "tokenizer", None))  # no BOS: the text is repeated


class _Generated:
    """A lazily generated ``[batch, ∞)`` token stream: ``get(pos, length) -> (tokens, mask)`` for
    consecutive requests (only the unconsumed part of the task buffer is kept)."""

    def __init__(self, model, source: str, batch: int, seed: int):
        self.batch, self.seed, self.source = batch, seed, source
        V = model.cfg.vocab_size
        if source == "newlines":
            nl = _text_ids(model, "\n")[-1] if getattr(model, "tokenizer", None) is not None else NEWLINE_ID
            self.nl = nl if nl < V else 0
            self.description = f"token {self.nl} ('\\n' in byte vocabularies) repeated"
        elif source == "repeat":
            if is_byte_level(model) or getattr(model, "tokenizer", None) is not None:
                period = torch.tensor(_text_ids(model, REPEAT_TEXT), dtype=torch.long)
                self.description = f"{REPEAT_TEXT!r} repeated ({len(period)} tokens)"
            else:
                g = torch.Generator().manual_seed(seed)
                period = torch.randint(0, V, (REPEAT_PERIOD,), generator=g)
                self.description = f"{REPEAT_PERIOD} random tokens (seed {seed}) repeated"
            self.period = period
        else:
            self._init_task(model)

    def _init_task(self, model) -> None:
        recipe = getattr(model, "recipe", None)
        if recipe is None:
            raise ValueError("source: 'task' needs a model with a training recipe (model.recipe is None); "
                             "pass 'newlines', 'repeat' or tokens")
        self.data, self.kwargs = recipe.data, dict(recipe.data_kwargs)
        if self.data == "corpus:stdlib":
            from seqlens.corpus import StdlibCorpus

            self.text = StdlibCorpus().tokens("val")
            self.offsets = [r * len(self.text) // self.batch for r in range(self.batch)]
            self.description = "the stdlib corpus' validation split, streamed (wrapping around)"
        else:
            self.buffer = torch.zeros(self.batch, 0, dtype=torch.long)
            self.mask_buffer = torch.zeros(self.batch, 0, dtype=torch.bool)
            self.draws = 0
            self.masked = getattr(recipe, "train_on", "all") == "mask"
            self.description = (f"independent {self.data} sequences ({self.kwargs}) concatenated, "
                                f"seeds {self.seed}, {self.seed}+1, ...")

    @property
    def loss_positions(self) -> str:
        if self.source == "task" and self.data != "corpus:stdlib" and self.masked:
            return "the task's loss_mask (the recipe trains on it: train_on='mask')"
        return "every position"

    def get(self, pos: int, length: int) -> tuple[Tensor, Tensor | None]:
        """``(tokens [batch, length], loss mask or None)`` for positions ``[pos, pos + length)``;
        the mask (task streams of recipes trained on the task's ``loss_mask``) marks the logits
        whose loss counts."""
        if self.source == "newlines":
            return torch.full((self.batch, length), self.nl, dtype=torch.long), None
        if self.source == "repeat":
            p = len(self.period)
            idx = (pos + torch.arange(length)[None] + torch.arange(self.batch)[:, None] * (p // self.batch)) % p
            return self.period[idx], None
        if self.data == "corpus:stdlib":
            n = len(self.text)
            idx = (torch.tensor(self.offsets)[:, None] + pos + torch.arange(length)[None]) % n
            return self.text[idx].long(), None
        from seqlens.tasks import make_task

        while self.buffer.shape[1] < length:
            kw = {**self.kwargs, "batch": self.batch, "seed": self.seed + self.draws}
            self.draws += 1
            task = make_task(self.data.removeprefix("task:"), **kw)
            self.buffer = torch.cat([self.buffer, task.tokens], 1)
            self.mask_buffer = torch.cat([self.mask_buffer, task.loss_mask], 1)
        out, self.buffer = self.buffer[:, :length], self.buffer[:, length:]
        mask, self.mask_buffer = self.mask_buffer[:, :length], self.mask_buffer[:, length:]
        return out, (mask if self.masked else None)


def _boundaries(n: int | None, chunk: int, train_len: int) -> Iterator[tuple[int, int]]:
    """Chunk spans ``[a, b)``: multiples of ``chunk`` plus one boundary at ``train_len``."""
    pos = 0
    while n is None or pos < n:
        nxt = (pos // chunk + 1) * chunk
        if pos < train_len < nxt:
            nxt = train_len
        if n is not None:
            nxt = min(nxt, n)
        yield pos, nxt
        pos = nxt


def _rechunk(chunks: Iterable[Tensor], spans: Iterator[tuple[int, int]],
             limit: int | None) -> Iterator[tuple[Tensor, None]]:
    """Re-cut an iterable of ``[B, T]`` chunks along ``spans`` (stops at ``limit`` tokens or when
    the input ends); holds at most one input chunk plus one output chunk."""
    buf: list[Tensor] = []
    have = 0
    it = iter(chunks)
    for a, b in spans:
        if limit is not None and a >= limit:
            return
        need = b - a
        while have < need:
            nxt = next(it, None)
            if nxt is None:
                break
            if not isinstance(nxt, Tensor) or nxt.dim() != 2:
                raise ValueError(f"source: expected an iterable of [batch, T] token tensors, got "
                                 f"{type(nxt).__name__} {list(getattr(nxt, 'shape', []))}")
            buf.append(nxt)
            have += nxt.shape[1]
        if have == 0:
            return
        cat = torch.cat(buf, 1) if len(buf) > 1 else buf[0]
        take = min(need, have)
        yield cat[:, :take], None
        rest = cat[:, take:]
        buf, have = ([rest] if rest.shape[1] else []), rest.shape[1]
        if take < need:
            return


def _token_chunks(model, source: Any, n_tokens: int | None, chunk: int, train_len: int,
                  batch: int | None, seed: int) -> tuple[Iterator[tuple[Tensor, Tensor | None]], str, str, int | None]:
    """``(chunks of (tokens, loss mask or None), description, scored positions, total or None)``."""
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"source: expected one of {list(SOURCES)} or token ids [batch, length] / an "
                             f"iterable of [batch, T] chunks, got {source!r}")
        n = DEFAULT_TOKENS if n_tokens is None else n_tokens
        gen = _Generated(model, source, 1 if batch is None else batch, seed)
        spans = _boundaries(n, chunk, train_len)
        return (gen.get(a, b - a) for a, b in spans), gen.description, gen.loss_positions, n
    if isinstance(source, Tensor):
        if source.dim() != 2:
            raise ValueError(f"source: expected token ids of shape [batch, length], got {list(source.shape)}")
        if batch is not None and batch != source.shape[0]:
            raise ValueError(f"batch: {batch} does not match the tokens' batch {source.shape[0]}")
        n = source.shape[1] if n_tokens is None else n_tokens
        if n > source.shape[1]:
            raise ValueError(f"n_tokens: {n} exceeds the {source.shape[1]} tokens given")
        spans = _boundaries(n, chunk, train_len)
        return ((source[:, a:b], None) for a, b in spans), "tokens", "every position", n
    if isinstance(source, Iterable):
        spans = _boundaries(n_tokens, chunk, train_len)
        return _rechunk(source, spans, n_tokens), "iterable of chunks", "every position", n_tokens
    raise ValueError(f"source: expected one of {list(SOURCES)}, a LongTensor [batch, length] or an iterable "
                     f"of [batch, T] chunks, got {type(source).__name__}")


# ----------------------------------------------------------------------------- statistics


def _moments(x: Tensor, dims: tuple[int, ...], head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, var, mean of squares)`` over ``dims`` (two passes: no cancellation in the variance;
    plain sums are ~10× faster than ``torch.var_mean`` on CPU)."""
    n = x.numel() // x.shape[head_dim]
    mean = x.sum(dims) / n
    shape = [1] * x.dim()
    shape[head_dim] = -1
    var = (x - mean.view(shape)).pow(2).sum(dims) / n
    return mean, var, var + mean * mean


def state_stats(view: Tensor) -> Tensor:
    """``[B, H, G] -> [H, 6]``: ``mean, var, rms, median, min, max`` per head, pooled over the batch
    rows and the head's elements (variance with ``correction=0``)."""
    x = view.float()
    mean, var, sq = _moments(x, (0, 2), 1)
    med = x.transpose(0, 1).reshape(x.shape[1], -1).median(dim=1).values
    return torch.stack([mean, var, sq.sqrt(), med, x.amin((0, 2)), x.amax((0, 2))], 1)


def decay_stats(decay: Tensor) -> Tensor:
    """``[B, T, H, G] -> [H, 4]``: ``mean, var, min, max`` per head over batch, tokens and the
    head's decay elements."""
    d = decay.float()
    mean, var, _ = _moments(d, (0, 1, 3), 2)
    return torch.stack([mean, var, d.amin((0, 1, 3)), d.amax((0, 1, 3))], 1)


class _Tracker:
    """Aggregates one stream: per-chunk statistics as Python floats (O(n_chunks) small numbers),
    loss sums per chunk and per bucket; holds only the previous head states (O(state))."""

    def __init__(self, model, heads: int, train_len: int, bar):
        self.model, self.fam, self.heads, self.L, self.bar = model, _family(model), heads, train_len, bar
        self.positions: list[int] = []
        # per-chunk summaries as packed float32 (4 bytes a number, no per-object overhead)
        self.state, self.cos, self.decay = array("f"), array("f"), array("f")
        self.loss_sum: list[float] = []
        self.loss_cnt: list[int] = []
        self.bucket_sum: dict[int, float] = {}
        self.bucket_cnt: dict[int, int] = {}
        self.bucket_hit: dict[int, int] = {}
        self.prev: list[Tensor | None] = [None] * model.cfg.n_layers
        self.last_logits: Tensor | None = None
        self.last_mask: Tensor | None = None
        self.chunk: Tensor | None = None
        self.mask: Tensor | None = None

    def bucket(self, pos: Tensor) -> Tensor:
        """Bucket 0 = [0, L); k ≥ 1 = [L·2^(k−1), L·2^k)."""
        ratio = pos.double() / self.L
        return torch.where(ratio < 1, 0, torch.floor(torch.log2(ratio.clamp_min(1))).long() + 1)

    def add_loss(self, chunk_index: int, pos: Tensor, logits: Tensor, targets: Tensor,
                 mask: Tensor | None) -> None:
        """Score ``logits [B, n, V]`` at absolute positions ``pos [n]`` against ``targets [B, n]``
        where ``mask [B, n]`` (None: everywhere): loss sums, counts and hits per chunk and bucket."""
        if targets.shape[1] == 0:
            return
        B, n, V = logits.shape
        loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), reduction="none").view(B, n)
        hit = logits.argmax(-1) == targets
        keep = torch.ones_like(hit) if mask is None else mask.to(hit.device)
        loss, hit, keep = loss.double().cpu(), hit.cpu(), keep.cpu()
        self.loss_sum[chunk_index] += float(loss[keep].sum())
        self.loss_cnt[chunk_index] += int(keep.sum())
        b = self.bucket(pos)[None].expand(B, n)
        for k in torch.unique(b[keep]).tolist():
            sel = keep & (b == k)
            self.bucket_sum[k] = self.bucket_sum.get(k, 0.0) + float(loss[sel].sum())
            self.bucket_cnt[k] = self.bucket_cnt.get(k, 0) + int(sel.sum())
            self.bucket_hit[k] = self.bucket_hit.get(k, 0) + int(hit[sel].sum())

    def losses(self, start: int, logits: Tensor, tokens: Tensor, mask: Tensor | None) -> None:
        c = len(self.positions)
        self.loss_sum.append(0.0)
        self.loss_cnt.append(0)
        T = tokens.shape[1]
        if self.last_logits is not None:  # the previous chunk's last row predicts this chunk's first token
            self.add_loss(c - 1, torch.tensor([start - 1]), self.last_logits[:, None], tokens[:, :1],
                          self.last_mask)
        self.add_loss(c, torch.arange(start, start + T - 1), logits[:, :-1], tokens[:, 1:],
                      None if mask is None else mask[:, :-1])
        self.last_logits = logits[:, -1].detach().clone()
        self.last_mask = None if mask is None else mask[:, -1:].clone()

    def __call__(self, seen: list[dict[str, Tensor]], start: int, logits: Tensor, state) -> None:
        tokens = self.chunk
        self.losses(start, logits, tokens, self.mask)
        T = tokens.shape[1]
        nan = torch.full((self.heads,), float("nan"))
        nan_decay = torch.full((self.heads, len(DECAY_NAMES)), float("nan"))
        for l, layer_state in enumerate(state.layers):
            if self.fam == "attention":
                view = _attention_view(layer_state, T, self.heads)
                cos = nan
            else:
                view = head_view(layer_state[_state_key(self.fam)], self.heads)
                cos = nan if self.prev[l] is None else F.cosine_similarity(
                    view.float(), self.prev[l], dim=-1).mean(0).cpu()
                self.prev[l] = view.detach().float().clone()
            self.state.extend(state_stats(view).flatten().tolist())
            self.cos.extend(cos.tolist())
            d = _decay_tensor(self.model, l, seen[l], self.heads)
            self.decay.extend((nan_decay if d is None else decay_stats(d)).flatten().tolist())
        self.positions.append(start + T)
        if self.bar is not None:
            self.bar.update(T)


# ----------------------------------------------------------------------------- the Result


@dataclass(kw_only=True)
class CollapseResult(Result):
    """Statistics of one long stream (see the module docstring for every definition).

    ``positions [C]``: tokens consumed at each snapshot (chunk end); ``state [C, n_layers, H, 6]``
    (``STAT_NAMES``: mean, var, rms, median, min, max of the carried state); ``cos [C, n_layers, H]``;
    ``decay [C, n_layers, H, 4]`` (``DECAY_NAMES``); ``chunk_loss [C]`` mean loss of the logits in
    each chunk (NaN without targets) and ``chunk_count [C]`` how many (row, position) pairs it
    scored; ``bucket_edges [K + 1]``, ``bucket_loss [K]``, ``bucket_accuracy [K]`` (greedy),
    ``bucket_count [K]``: per position bucket ``[0, L), [L, 2L), ...``;
    ``train_len``; ``loss_in`` (mean over ``[0, L)``), ``loss_beyond`` (worst bucket past L, NaN if
    none), ``rms_ratio [n_layers, H]`` (max RMS past L / RMS at L), ``collapsed`` (the rule) and
    ``onset`` (when collapsed: the first snapshot where chunk loss and RMS ratio both exceed; else None).
    """

    positions: Tensor
    state: Tensor
    cos: Tensor
    decay: Tensor
    chunk_loss: Tensor
    chunk_count: Tensor
    bucket_edges: Tensor
    bucket_loss: Tensor
    bucket_count: Tensor
    bucket_accuracy: Tensor
    train_len: int
    loss_in: float
    loss_beyond: float
    rms_ratio: Tensor
    collapsed: bool | None = None
    onset: int | None = None

    def __post_init__(self) -> None:
        if self.state.dim() != 4 or self.state.shape[-1] != len(STAT_NAMES):
            raise ValueError(f"state: expected [chunks, layers, heads, {len(STAT_NAMES)}], got {list(self.state.shape)}")

    def stat(self, name: str) -> Tensor:
        """``[C, n_layers, H]`` of one statistic (``STAT_NAMES`` or ``DECAY_NAMES`` or ``"cos"``)."""
        if name in STAT_NAMES:
            return self.state[..., STAT_NAMES.index(name)]
        if name in DECAY_NAMES:
            return self.decay[..., DECAY_NAMES.index(name)]
        if name == "cos":
            return self.cos
        raise ValueError(f"name: expected one of {[*STAT_NAMES, *DECAY_NAMES, 'cos']}, got {name!r}")

    @property
    def rms(self) -> Tensor:
        return self.stat("rms")

    def to_frame(self):
        """One row per (snapshot, layer, head): ``chunk, position, layer, head``, the state
        statistics, ``cos``, the decay statistics and the chunk's ``loss``."""
        import pandas as pd

        C, L, H, _ = self.state.shape
        idx = torch.cartesian_prod(torch.arange(C), torch.arange(L), torch.arange(H)).reshape(-1, 3)
        df = pd.DataFrame({"chunk": idx[:, 0].tolist(), "position": self.positions[idx[:, 0]].tolist(),
                           "layer": idx[:, 1].tolist(), "head": idx[:, 2].tolist()})
        for i, name in enumerate(STAT_NAMES):
            df[name] = self.state[..., i].reshape(-1).tolist()
        df["cos"] = self.cos.reshape(-1).tolist()
        for i, name in enumerate(DECAY_NAMES):
            df[name] = self.decay[..., i].reshape(-1).tolist()
        df["loss"] = self.chunk_loss[idx[:, 0]].tolist()
        return df

    def loss_frame(self):
        """One row per position bucket: ``start, end, loss, accuracy`` (greedy next-token),
        ``count`` (scored tokens), ``beyond`` (start ≥ train_len)."""
        import pandas as pd

        e = self.bucket_edges.tolist()
        return pd.DataFrame({"start": e[:-1], "end": e[1:], "loss": self.bucket_loss.tolist(),
                             "accuracy": self.bucket_accuracy.tolist(), "count": self.bucket_count.tolist(),
                             "beyond": [s >= self.train_len for s in e[:-1]]})

    def figure(self, heads: bool = False, log_x: bool = True, **layout: Any):
        """State RMS (per layer, mean over heads; every head with ``heads=True``) and chunk loss
        against position, a dashed line at the training length."""
        return _figure([("", self)], heads, log_x, **layout)


def _figure(results: list[tuple[str, CollapseResult]], heads: bool, log_x: bool, **layout: Any):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("state RMS", "next-token loss per chunk (nats)"))
    for label, r in results:
        x = r.positions.tolist()
        rms = r.rms
        prefix = f"{label} " if label else ""
        for l in range(rms.shape[1]):
            if heads:
                for h in range(rms.shape[2]):
                    fig.add_trace(go.Scatter(x=x, y=rms[:, l, h].tolist(), mode="lines",
                                             name=f"{prefix}L{l}H{h}"), row=1, col=1)
            else:
                fig.add_trace(go.Scatter(x=x, y=rms[:, l].mean(-1).tolist(), mode="lines",
                                         name=f"{prefix}layer {l}"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=r.chunk_loss.tolist(), mode="lines", name=f"{prefix}loss"),
                      row=2, col=1)
    L = results[0][1].train_len
    for row in (1, 2):
        fig.add_vline(x=L, line_dash="dash", line_color="red", row=row, col=1)
    verdicts = ", ".join(f"{lab or 'collapsed'}: {r.collapsed}" for lab, r in results)
    fig.update_layout(title=f"state collapse (train_len {L}; {verdicts})")
    fig.update_layout(**layout)  # the caller's settings win
    fig.update_xaxes(title_text="position (tokens)", type="log" if log_x else "linear", row=2, col=1)
    if log_x:
        fig.update_xaxes(type="log", row=1, col=1)
    return fig


@dataclass(kw_only=True)
class CollapseComparison(Result):
    """Before / after a mitigation: two :class:`CollapseResult` of the same stream."""

    before: CollapseResult
    after: CollapseResult

    def __post_init__(self) -> None:
        for name in ("before", "after"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, CollapseResult(**{k: v for k, v in value.items() if k != "type"}))

    def to_frame(self):
        """One row each (``run`` = before / after): ``loss_in, loss_beyond, max_rms_ratio,
        final_rms`` (mean over layers and heads at the last snapshot), ``collapsed, onset``."""
        import pandas as pd

        rows = []
        for run, r in (("before", self.before), ("after", self.after)):
            rows.append({"run": run, "loss_in": r.loss_in, "loss_beyond": r.loss_beyond,
                         "max_rms_ratio": float(r.rms_ratio.max()) if r.rms_ratio.numel() else math.nan,
                         "final_rms": float(r.rms[-1].mean()), "collapsed": r.collapsed, "onset": r.onset})
        return pd.DataFrame(rows)

    def figure(self, heads: bool = False, log_x: bool = True, **layout: Any):
        return _figure([("before", self.before), ("after", self.after)], heads, log_x, **layout)


def compare(before: CollapseResult, after: CollapseResult, mitigation: str = "") -> CollapseComparison:
    """Pair two runs of :func:`state_collapse` (same model and stream; ``after`` inside a
    mitigation context) into one Result."""
    for name, r in (("before", before), ("after", after)):
        if not isinstance(r, CollapseResult):
            raise TypeError(f"{name}: expected a CollapseResult, got {type(r).__name__}")
    if before.train_len != after.train_len or before.positions.shape != after.positions.shape:
        raise ValueError("after: expected a run over the same stream as before (train_len and snapshots differ)")
    return CollapseComparison(before=before, after=after,
                              settings={"mitigation": mitigation or after.settings.get("mitigations"),
                                        "model": before.settings.get("model")})


# ----------------------------------------------------------------------------- the rule


def _nan_max(x: Tensor) -> float:
    """Max with NaN counted as +inf (a non-finite value exceeds any threshold)."""
    if x.numel() == 0:
        return math.nan
    return float(torch.nan_to_num(x.double(), nan=math.inf).max())


def _verdict(r: dict[str, Any], L: int, loss_margin: float, rms_ratio: float) -> None:
    """Fill ``loss_in, loss_beyond, rms_ratio, collapsed, onset`` of the result fields ``r``."""
    edges, bl, bc = r["bucket_edges"], r["bucket_loss"], r["bucket_count"]
    r["loss_in"] = float(bl[0]) if len(bl) and edges[0] == 0 and edges[1] <= L else math.nan
    beyond = (edges[:-1] >= L) & (edges[1:] - edges[:-1] >= max(1, L // 2)) & (bc > 0)
    r["loss_beyond"] = _nan_max(bl[beyond]) if bool(beyond.any()) else math.nan
    pos, rms = r["positions"], r["state"][..., STAT_NAMES.index("rms")]  # [C, L, H]
    at = (pos == L).nonzero()
    past = pos > L
    if len(at) == 0 or not bool(past.any()) or not bool(beyond.any()):
        r["rms_ratio"] = torch.full(rms.shape[1:], math.nan)
        r["collapsed"], r["onset"] = None, None
        return
    ref = rms[int(at[0])]
    ref = torch.maximum(ref, 1e-3 * ref.amax(-1, keepdim=True)).clamp_min(1e-30)
    ratio_t = torch.nan_to_num(rms[past] / ref, nan=math.inf)  # [C', L, H]
    r["rms_ratio"] = ratio_t.amax(0).float()
    loss_bad = r["loss_beyond"] > r["loss_in"] + loss_margin or not math.isfinite(r["loss_beyond"])
    r["collapsed"] = bool(loss_bad and float(r["rms_ratio"].max()) > rms_ratio)
    chunk_bad = torch.nan_to_num(r["chunk_loss"][past].double(), nan=math.inf) > r["loss_in"] + loss_margin
    both = chunk_bad & (ratio_t.flatten(1).amax(1) > rms_ratio)
    r["onset"] = int(pos[past][both][0]) if r["collapsed"] and bool(both.any()) else None


# ----------------------------------------------------------------------------- the probe


def state_collapse(model, source: Any = "newlines", n_tokens: int | None = None, chunk: int = DEFAULT_CHUNK,
                   train_len: int | None = None, batch: int | None = None, seed: int = 0,
                   progress: Any = True, loss_margin: float = LOSS_MARGIN,
                   rms_ratio: float = RMS_RATIO) -> CollapseResult:
    """Stream a long input through ``model`` carrying the state and record, per chunk, layer and
    head, the state and decay statistics, the loss per position bucket and the collapse verdict
    (definitions and rule: the module docstring).

    ``source``: ``"newlines"`` (the Stuffed Mamba prompt), ``"repeat"`` (a sentence repeated; random
    tokens for non-byte vocabularies), ``"task"`` (the model's recipe: task sequences concatenated,
    or the stdlib validation text), token ids ``[batch, length]``, or an iterable of ``[batch, T]``
    chunks (read lazily). ``n_tokens``: stream length (default 16,384 for named sources, all of the
    given tokens otherwise). ``train_len``: default from the recipe (``data_kwargs["seq_len"]``), else
    ``cfg.n_ctx``. ``batch``: rows of the named sources (default 1). Memory is O(state + chunk)
    for recurrent models (per-chunk summaries are a few floats each)."""
    fam = _family(model)
    chunk = _positive_int("chunk", chunk)
    n_tokens = _positive_int("n_tokens", n_tokens, allow_none=True)
    if n_tokens is not None and n_tokens < 2:
        raise ValueError(f"n_tokens: expected at least 2 tokens (one next-token target), got {n_tokens}")
    batch = _positive_int("batch", batch, allow_none=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    loss_margin, rms_ratio = _positive_float("loss_margin", loss_margin), _positive_float("rms_ratio", rms_ratio)
    L, L_from = train_length(model, train_len)
    chunks, description, scored, total = _token_chunks(model, source, n_tokens, chunk, L, batch, seed)
    if fam == "attention" and model.cfg.positions == "learned" and total is not None and total > model.cfg.n_ctx:
        raise ValueError(f"n_tokens: {total} exceeds n_ctx={model.cfg.n_ctx}; learned position embeddings "
                         "cannot run past it (state collapse is not applicable)")
    heads = n_state_heads(model)
    bar = None
    if progress:  # True or a callable(done, total) (seqlens.progress); one step per streamed token
        from seqlens.progress import progress_bar
        bar = progress_bar(progress, total=total, desc="state_collapse", unit="tok")
    tracker = _Tracker(model, heads, L, bar)
    device = model.device

    def feed() -> Iterator[Tensor]:
        for c, mask in chunks:
            tracker.chunk, tracker.mask = c.to(device), mask
            yield tracker.chunk

    t0 = time.perf_counter()
    try:
        with _last_values(model, _decay_hooks(model)) as seen:
            model.stream(feed(), chunk_size=chunk, callback=partial(tracker, seen), return_logits=False)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    return _build(model, tracker, L, L_from, heads, fam, loss_margin, rms_ratio, {
        "source": source if isinstance(source, str) else description, "source_description": description,
        "loss_positions": scored,
        "n_tokens": tracker.positions[-1], "chunk": chunk, "batch": int(tracker.chunk.shape[0]), "seed": seed,
        "elapsed_s": elapsed})


def _unpack(values: array, shape: tuple[int, ...]) -> Tensor:
    return torch.frombuffer(bytearray(values.tobytes()), dtype=torch.float32).reshape(shape)


def _build(model, t: _Tracker, L: int, L_from: str, heads: int, fam: str, loss_margin: float,
           rms_ratio: float, extra: dict) -> CollapseResult:
    n = t.positions[-1]
    K = max(t.bucket_cnt) + 1 if t.bucket_cnt else 1  # buckets 0 .. K-1 hold positions
    edges = [0] + [L * 2 ** k for k in range(K - 1)] + [n]
    cnt = torch.tensor([t.bucket_cnt.get(k, 0) for k in range(len(edges) - 1)], dtype=torch.long)
    bsum = torch.tensor([t.bucket_sum.get(k, 0.0) for k in range(len(edges) - 1)], dtype=torch.float64)
    bhit = torch.tensor([t.bucket_hit.get(k, 0) for k in range(len(edges) - 1)], dtype=torch.float64)
    ccnt = torch.tensor(t.loss_cnt, dtype=torch.long)
    r: dict[str, Any] = {
        "positions": torch.tensor(t.positions, dtype=torch.long),
        "state": _unpack(t.state, (len(t.positions), -1, heads, len(STAT_NAMES))),
        "cos": _unpack(t.cos, (len(t.positions), -1, heads)),
        "decay": _unpack(t.decay, (len(t.positions), -1, heads, len(DECAY_NAMES))),
        "chunk_loss": (torch.tensor(t.loss_sum, dtype=torch.float64) / ccnt).float(),
        "chunk_count": ccnt,
        "bucket_edges": torch.tensor(edges, dtype=torch.long),
        "bucket_loss": (bsum / cnt).float(), "bucket_count": cnt, "bucket_accuracy": (bhit / cnt).float(),
        "train_len": L,
    }
    _verdict(r, L, loss_margin, rms_ratio)
    state_desc = {"mamba": "ssm [B, d_inner, d_state], heads = cfg.pattern_heads channel groups of d_inner",
                  "gla": "S [B, H, d_k, d_v], the mixer's heads",
                  "minrnn": "h [B, D_h], heads = cfg.pattern_heads channel groups",
                  "lstm": "cell c [B, D_h], heads = cfg.pattern_heads channel groups",
                  "attention": "the keys and values each chunk wrote to the KV cache, per query head"}[fam]
    settings = {"model": getattr(model, "name", None), "arch": model.cfg.arch, **extra, "train_len": L,
                "train_len_from": L_from, "heads": heads, "state": state_desc,
                "decay_hooks": list(_decay_hooks(model)), "stats": list(STAT_NAMES), "decay_stats": list(DECAY_NAMES),
                "rule": RULE, "loss_margin": loss_margin, "rms_ratio": rms_ratio,
                "mitigations": [dict(m) for m in _ACTIVE.get(model, [])],
                "scan_backend": getattr(model.blocks[0].mixer, "scan_backend", "auto")}
    return CollapseResult(settings=settings, **r)


# ----------------------------------------------------------------------------- mitigations


def _recurrent_family(model, what: str) -> str:
    fam = _family(model)
    if fam == "attention":
        raise NotImplementedError(f"{what}: arch {model.cfg.arch!r} has no fixed-size recurrent state (its state is "
                                  "the KV cache); not applicable")
    return fam


def reference_norms(model, reference: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """``[n_layers, H]``: the largest head state norm (over batch rows and chunk ends) while
    streaming ``reference [B, L]``."""
    fam = _recurrent_family(model, "reference_norms")
    if not isinstance(reference, Tensor) or reference.dim() != 2 or reference.shape[1] == 0:
        raise ValueError(f"reference: expected token ids [batch, length], got "
                         f"{list(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__}")
    heads = n_state_heads(model)
    best = torch.zeros(model.cfg.n_layers, heads, dtype=torch.float64)

    def cb(start, logits, state):
        for l, s in enumerate(state.layers):
            norms = head_view(s[_state_key(fam)], heads).double().norm(dim=-1).amax(0).cpu()
            best[l] = torch.maximum(best[l], norms)

    model.stream(reference.to(model.device), chunk_size=chunk, callback=cb, return_logits=False)
    return best.float()


def _default_reference(model) -> Tensor:
    L, _ = train_length(model)
    if getattr(model, "recipe", None) is None:
        raise ValueError("reference: the model has no training recipe to draw a reference prompt from; pass "
                         "reference tokens [batch, length] or tau")
    return _Generated(model, "task", REFERENCE_ROWS, 0).get(0, L)[0]


@contextlib.contextmanager
def normalize_states(model, tau: float | Tensor | None = None, reference: Tensor | None = None):
    """State normalisation (Stuffed Mamba; docs/methods.md §5): inside the block, every state a mixer
    carries to the next chunk is rescaled per batch row, layer and head, ``h ← h·τ/‖h‖`` when
    ``‖h‖ > τ`` (see the module docstring for what "state" and "head" are per architecture).

    ``tau``: a number (every head), a tensor ``[n_layers, H]``, or None: the largest head norms
    reached on ``reference`` (token ids ``[B, L]``; default: 8 rows of the model's own task stream
    of training length, see :func:`reference_norms`). Yields ``{"tau": [n_layers, H], "clipped":
    [n_layers, H]}``, ``clipped`` counting the (chunk, row) rescalings."""
    fam = _recurrent_family(model, "normalize_states")
    heads = n_state_heads(model)
    shape = (model.cfg.n_layers, heads)
    if tau is None:
        tau_t = reference_norms(model, _default_reference(model) if reference is None else reference)
    elif isinstance(tau, Tensor):
        if tuple(tau.shape) != shape:
            raise ValueError(f"tau: expected a number or a tensor of shape {list(shape)}, got {list(tau.shape)}")
        tau_t = tau.detach().float().cpu()
    else:
        tau_t = torch.full(shape, _positive_float("tau", tau))
    if not bool((tau_t > 0).all()) or not bool(torch.isfinite(tau_t).all()):
        raise ValueError(f"tau: expected positive finite thresholds, got {tau_t.tolist()}")
    clipped = torch.zeros(shape, dtype=torch.long)
    key = _state_key(fam)

    def hook(layer: int, module, args, kwargs, output):
        out, new = output
        if new is None:
            return None
        s = new[key]
        view = head_view(s, heads)
        norm = view.double().norm(dim=-1, keepdim=True)  # [B, H, 1]
        t = tau_t[layer].to(device=s.device, dtype=torch.float64)[None, :, None]
        over = norm > t
        clipped[layer] += over[..., 0].sum(0).cpu()
        scale = torch.where(over, t / norm.clamp_min(1e-300), torch.ones_like(norm)).to(s.dtype)
        return out, {**new, key: (view * scale).reshape(s.shape)}

    handles = [b.mixer.register_forward_hook(partial(hook, l), with_kwargs=True) for l, b in enumerate(model.blocks)]
    info = {"name": "normalize_states", "tau": tau_t.tolist()}
    try:
        with _mitigation(model, info):
            yield {"tau": tau_t, "clipped": clipped}
    finally:
        for h in handles:
            h.remove()


def _pow(x: Tensor, c: float) -> Tensor:
    return x if c == 1.0 else x.clamp_min(0) ** c


def _forget_hooks(model, b_scale: float, c: float) -> list[tuple[str, Callable]]:
    fam, arch = _family(model), model.cfg.arch
    mul = lambda f: (lambda t, hook: t * f)  # noqa: E731
    names: list[tuple[str, Callable]] = []
    if fam == "mamba":
        names = [("hook_delta", mul(c)), ("hook_B", mul(b_scale / c))]
    elif fam == "gla":
        names = [("hook_log_decay", mul(c)), ("hook_k", mul(b_scale))]
    elif arch == "minlstm":
        names = [("hook_gate", lambda t, hook: _pow(t, c)), ("hook_input_gate", mul(b_scale))]
    elif arch == "mingru":
        return _mingru_hooks(model, b_scale, c)
    elif fam == "lstm":
        names = [("hook_f", lambda t, hook: _pow(t, c)), ("hook_i", mul(b_scale))]
    elif arch == "fox":
        if b_scale != 1.0:
            raise NotImplementedError("b_scale: attention has no state write to scale (FoX: only decay_scale applies)")
        names = [("hook_log_forget", mul(c))]
    else:
        raise NotImplementedError(f"forget_more: arch {model.cfg.arch!r} (softmax attention) has no decay or state "
                                  "write to edit; not applicable")
    return [(f"blocks.{l}.mixer.{n}", fn) for l in range(model.cfg.n_layers) for n, fn in names]


def _mingru_hooks(model, b_scale: float, c: float) -> list[tuple[str, Callable]]:
    """minGRU shares z between decay (1 − z) and write (z): z' = 1 − (1 − z)^c on hook_gate and
    h̃·b_scale·z/z' on hook_candidate (called right after it), so the write stays z·h̃·b_scale."""
    out = []
    for l in range(model.cfg.n_layers):
        ratio: dict[str, Tensor] = {}

        def gate(z, hook, ratio=ratio):
            if c == 1.0:
                return z
            z2 = 1 - _pow(1 - z, c)
            ratio["r"] = torch.where(z2 > 0, z / z2.clamp_min(1e-30), torch.ones_like(z))
            return z2

        def cand(h, hook, ratio=ratio):
            r = ratio.pop("r", None)
            return h * b_scale if r is None else h * (b_scale * r).to(h.dtype)

        out += [(f"blocks.{l}.mixer.hook_gate", gate), (f"blocks.{l}.mixer.hook_candidate", cand)]
    return out


@contextlib.contextmanager
def forget_more(model, b_scale: float = 1.0, decay_scale: float = 1.0):
    """"Forget more, remember less" (Stuffed Mamba; docs/methods.md §5): inside the block the state
    write is scaled by ``b_scale`` and every decay ``a`` becomes ``a^decay_scale`` (log decay ×
    ``decay_scale``), through the per-architecture hooks listed in the module docstring. Acts on
    every token and every entry point (forward, step, stream)."""
    b_scale, decay_scale = _positive_float("b_scale", b_scale), _positive_float("decay_scale", decay_scale)
    hooks = _forget_hooks(model, b_scale, decay_scale)
    info = {"name": "forget_more", "b_scale": b_scale, "decay_scale": decay_scale}
    with model.hooks(fwd_hooks=hooks), _mitigation(model, info):
        yield info


class _Window:
    """Per-layer queue of chunk contributions for :func:`state_window`."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Tensor, Tensor, int]] = deque()  # (S_j, log-decay prefix after j, T_j)
        self.prefix: Tensor | None = None
        self.total = 0


@contextlib.contextmanager
def state_window(model, window: int):
    """Sliding window by state difference (docs/methods.md §5): inside the block, the state each mixer
    carries to the next chunk holds only the last ``window`` tokens (rounded up to whole chunks),
    ``h_(t−r,t] = h_t − (∏ a) h_{t−r}``; exact for linear recurrences (see the module docstring).
    Attention: the KV cache keeps its last ``window`` entries. LSTM: NotImplementedError."""
    window = _positive_int("window", window)
    fam = _family(model)
    if fam == "lstm":
        raise NotImplementedError("state_window: the LSTM's recurrence is nonlinear (gates read h), so the state "
                                  "of the last tokens is not a difference of states; not applicable")
    info = {"name": "state_window", "window": window}
    if fam == "attention":
        with _mixer_forward_hooks(model, lambda layer: partial(_trim_cache, window)), _mitigation(model, info):
            yield info
        return
    key = _state_key(fam)
    queues = [_Window() for _ in model.blocks]
    with _last_values(model, _decay_hooks(model)) as seen:

        def hook(layer: int, module, args, kwargs, output):
            out, new = output
            old = kwargs.get("state")
            if new is None or old is None:
                return None
            return out, {**new, key: _slide(queues[layer], model, layer, seen[layer], old[key], new[key], window)}

        with _mixer_forward_hooks(model, lambda layer: partial(hook, layer)), _mitigation(model, info):
            yield info


@contextlib.contextmanager
def _mixer_forward_hooks(model, make: Callable[[int], Callable]):
    """Register ``make(layer)`` as a torch forward hook (with kwargs) on every mixer; removed on exit."""
    handles = [b.mixer.register_forward_hook(make(l), with_kwargs=True) for l, b in enumerate(model.blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _slide(q: _Window, model, layer: int, seen: dict[str, Tensor], h_in: Tensor, h_out: Tensor,
           window: int) -> Tensor:
    """One chunk of the window: queue the chunk's own contribution, drop the oldest chunks while
    the rest still cover ``window`` tokens, return the windowed state."""
    T = next(iter(seen.values())).shape[1]
    log_d = _log_chunk_decay(model, layer, seen)  # broadcastable to the state
    s_j = h_out - torch.exp(log_d).to(h_out.dtype) * h_in  # this chunk's contribution from a zero state
    q.prefix = log_d if q.prefix is None else q.prefix + log_d
    q.queue.append((s_j, q.prefix, T))
    q.total += T
    h = h_out
    while q.total - q.queue[0][2] >= window:
        s_o, p_o, t_o = q.queue.popleft()
        h = h - torch.exp(q.prefix - p_o).to(h.dtype) * s_o
        q.total -= t_o
    return h


def _trim_cache(window: int, module, args, kwargs, output):
    out, new = output
    if new is None:
        return None
    trimmed = {k: (v[:, :, -window:] if k in ("k", "v", "c") and v.shape[2] > window else v) for k, v in new.items()}
    return out, trimmed


__all__ = ["CollapseComparison", "CollapseResult", "DECAY_NAMES", "LOSS_MARGIN", "RMS_RATIO", "SOURCES",
           "STAT_NAMES", "compare", "decay_stats", "forget_more", "head_view", "n_state_heads",
           "normalize_states", "reference_norms", "state_collapse", "state_stats", "state_window",
           "train_length"]
