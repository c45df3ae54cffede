"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality"; docs/methods.md §2, checked against ``nightdessert/Retrieval_Head``,
``retrieval_head_detection.py``).

Needle-in-a-haystack prompts over a grid of context lengths × needle depths; the model decodes the
answer greedily. At each decode step with generated token ``w`` and for every head, ``j* = argmax_j
A[q, j]`` on the row of the query ``q`` whose next-token prediction produced ``w``; if ``j*`` lies
in the needle span ``[s, e)`` and ``x_{j*} = w`` the head gains ``1/(e−s)`` (the official
``retrieval_calculate`` with ``topk=1``). Only trials whose answer is right count (ROUGE-1 recall
> 0.5, the official ``score > 50``); a head's score is the mean over the counted trials, and heads
above ``threshold`` (0.1) are retrieval heads.

As in the official code the span ``[s, e)`` is the answer inside the needle (``find_needle_idx(
real_needle)``), so a head that copies every answer token from the needle scores exactly 1.

Patterns come from ``model.mixer_pattern``, so the finder runs on every architecture. For
recurrent mixers (implicit attention, docs/methods.md §7) the argmax is taken over ``|α_{t,s}|``:
docs/methods.md §7 asks for ``|α_{t,s}|·‖u_s‖`` in argmax scores, but ``SeqModel`` exposes no uniform
per-head value norms (values live in architecture-specific hooks, and channel-group "heads"
average α over channels), so the value norms are left out; ``settings["argmax_over"]`` records it.

Prompt formats (``kind``), chosen from the model unless given:

- ``"text"`` (the model has a tokenizer): the passkey prompt of :func:`seqlens.tasks.passkey`
  (``style="standard"``: fixed filler sentences, needle ``" The pass key is K. Remember it."``,
  question ``" What is the pass key? The pass key is"``) built with the model's tokenizer; K is
  a random ``answer_len``-digit number. Correct: word-level ROUGE-1 recall > 0.5 on the decoded text.
- ``"bytes"`` (no tokenizer, byte vocabulary): the same prompt at byte level. For the passkey
  organisms (``model.recipe.data == "task:passkey"``) the style and key length are their training
  ones (``style="compact"``: ``" key K."`` in filler, then ``" key K"``); other byte models get
  ``"compact"`` too, so short contexts fit. Correct: token-level recall > 0.5.
- ``"tokens"`` (any other vocabulary V): ``[BOS] hay… [KEY] a_1..a_k hay… [KEY]`` with BOS = 0,
  KEY = V−1, haystack tokens uniform in ``[1, m)`` and the k answer tokens distinct, drawn from
  ``[m, V−1)`` (m = 1 + (V−2)//2), so the answer is unambiguous. Correct: token-level recall > 0.5.

A prompt's ``length`` is prompt + answer tokens (passkey's ``seq_len``: the passkey organisms were
trained at length 64); the depth is the fraction of haystack before the needle.
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from seqlens.circuits.heads import HeadScores
from seqlens.tasks import PASSKEY_STYLES, make_generator, passkey, task_kwargs
from seqlens.validate import positive_int

KINDS = ("auto", "text", "bytes", "tokens")
MEASURES = ("correct", "exact", "recall")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
CORRECT_RECALL = 0.5  # official: rouge1 recall * 100 > 50


@dataclass(frozen=True, eq=False)
class NeedlePrompt:
    """One needle-in-a-haystack trial.

    ``tokens``: LongTensor ``[P]``, the prompt (haystack with the needle, then the question);
    ``answer``: LongTensor ``[k]``, the answer ids the model should generate next; ``span``:
    ``(s, e)``, the half-open token positions of the answer inside the needle (``tokens[s:e]``
    equals ``answer``); ``length``: ``P + k``; ``depth``: requested needle depth in [0, 1];
    ``actual_depth``: fraction of haystack before the needle; ``text``: the answer as text (None
    for the ``"tokens"`` format); ``kind``: the prompt format.
    """

    tokens: Tensor
    answer: Tensor
    span: tuple[int, int]
    length: int
    depth: float
    actual_depth: float
    text: str | None
    kind: str


# ----------------------------------------------------------------------------- prompts


def needle_prompts(model, lengths: int | Sequence[int] | None = None,
                   depths: float | Sequence[float] = DEFAULT_DEPTHS, n_trials: int = 4,
                   seed: int | torch.Generator = 0, kind: str = "auto", style: str | None = None,
                   answer_len: int | None = None) -> list[NeedlePrompt]:
    """Needle prompts over ``lengths × depths`` (``n_trials`` each, in that order) for ``model``.

    ``lengths``: total tokens (prompt + answer) per prompt; default: the passkey organisms'
    training length, else ``min(n_ctx, 256)``. Lengths beyond ``model.cfg.n_ctx`` raise for models
    with a position limit (learned positions). ``depths`` in [0, 1]. ``kind`` / ``style`` /
    ``answer_len``: the format (module docstring), its passkey style and the answer length (digits
    for text / bytes, tokens for ``"tokens"``); None picks the model's defaults.
    """
    kind, style, answer_len = _resolve_format(model, kind, style, answer_len)
    lengths = _check_lengths(model, _default_lengths(model) if lengths is None else lengths)
    depths = _check_depths(depths)
    n_trials = _check_positive_int("n_trials", n_trials)
    g = make_generator(seed)
    prompts = []
    for L in lengths:
        for d in depths:
            if kind == "tokens":
                prompts += _token_prompts(model.cfg.vocab_size, L, d, n_trials, g, answer_len)
            else:
                prompts += _passkey_prompts(model, kind, L, d, n_trials, g, style, answer_len)
    return prompts


def _resolve_format(model, kind: str, style: str | None, answer_len: int | None) -> tuple[str, str, int]:
    """``(kind, style, answer_len)`` with the model's defaults filled in (module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    tok, vocab = model.tokenizer, model.cfg.vocab_size
    recipe = _passkey_recipe(model)
    if kind == "auto":
        kind = "text" if tok is not None else "bytes" if vocab >= 256 else "tokens"
    if kind == "text" and tok is None:
        raise ValueError("kind: 'text' needs a tokenizer, and model.tokenizer is None")
    if kind == "bytes" and vocab < 128:
        raise ValueError(f"kind: 'bytes' needs an ASCII vocabulary (>= 128 ids), the model has {vocab}")
    default_style = recipe.get("style", "compact") if kind == "bytes" else "standard"
    style = default_style if style is None else style
    if style not in PASSKEY_STYLES:
        raise ValueError(f"style: expected one of {sorted(PASSKEY_STYLES)}, got {style!r}")
    answer_len = recipe.get("key_len", 5 if kind != "tokens" else 3) if answer_len is None else answer_len
    answer_len = _check_positive_int("answer_len", answer_len)
    if kind == "tokens" and answer_len > (vocab - 1) - (1 + (vocab - 2) // 2):
        raise ValueError(f"answer_len: {answer_len} distinct answer tokens do not fit vocab_size={vocab}")
    return kind, style, answer_len


def _passkey_recipe(model) -> dict[str, Any]:
    """The passkey task kwargs of a passkey organism (``model.recipe``), else ``{}``."""
    recipe = model.recipe
    if recipe is None or getattr(recipe, "data", None) != "task:passkey":
        return {}
    return task_kwargs(recipe)


def _default_lengths(model) -> list[int]:
    """The passkey organisms' training length, else ``min(n_ctx, 256)``."""
    return [int(_passkey_recipe(model).get("seq_len", min(model.cfg.n_ctx, 256)))]


def _has_position_limit(model) -> bool:
    """True when ``n_ctx`` is a hard limit (learned positions of an attention model)."""
    return model.context_limit is not None


def _check_lengths(model, lengths) -> list[int]:
    """``lengths`` as a non-empty list of positive ints within the model's position limit."""
    lengths = [lengths] if isinstance(lengths, numbers.Integral) else lengths
    if (not isinstance(lengths, Sequence) or not lengths
            or not all(isinstance(L, numbers.Integral) and not isinstance(L, bool) and L > 0 for L in lengths)):
        raise ValueError(f"lengths: expected a positive integer or a non-empty list of them, got {lengths!r}")
    if _has_position_limit(model) and max(lengths) > model.cfg.n_ctx:
        raise ValueError(f"lengths: {max(lengths)} exceeds the model's context n_ctx={model.cfg.n_ctx} "
                         "(learned positions); use lengths <= n_ctx")
    return [int(L) for L in lengths]


def _check_depths(depths) -> list[float]:
    """``depths`` as a non-empty list of floats in [0, 1]."""
    depths = [depths] if isinstance(depths, numbers.Real) else depths
    if (not isinstance(depths, Sequence) or not depths
            or not all(isinstance(d, numbers.Real) and not isinstance(d, bool) and 0 <= d <= 1 for d in depths)):
        raise ValueError(f"depths: expected a float in [0, 1] or a non-empty list of them, got {depths!r}")
    return [float(d) for d in depths]


def _check_positive_int(name: str, value) -> int:
    return positive_int(name, value)


def _passkey_prompts(model, kind: str, length: int, depth: float, n: int, g: torch.Generator,
                     style: str, key_len: int) -> list[NeedlePrompt]:
    """``n`` passkey prompts (:func:`seqlens.tasks.passkey`): the prompt is the sequence up to the
    answer at its end, the span is the key inside the needle."""
    tok = model.tokenizer if kind == "text" else None
    try:
        batch = passkey(n, length, depth=depth, key_len=key_len, seed=g, tokenizer=tok, style=style)
    except ValueError as err:
        raise ValueError(f"lengths: {length} is too short for the {style} {kind} needle prompt ({err})") from None
    out = []
    for b in range(n):
        (s, e), (a, z) = batch.meta["key_span"][b].tolist(), batch.meta["answer_span"][b].tolist()
        row = batch.tokens[b]
        out.append(NeedlePrompt(tokens=row[:a].clone(), answer=row[a:z].clone(), span=(s, e), length=length,
                                depth=depth, actual_depth=float(batch.meta["actual_depth"][b]),
                                text=batch.meta["key"][b], kind=kind))
    return out


def _token_prompts(vocab: int, length: int, depth: float, n: int, g: torch.Generator,
                   k: int) -> list[NeedlePrompt]:
    """``n`` synthetic prompts ``[BOS] hay[:cut] [KEY] a_1..a_k hay[cut:] [KEY]`` (module
    docstring), ``length`` = prompt + k answer tokens."""
    key, mid = vocab - 1, 1 + (vocab - 2) // 2
    n_fill = length - 3 - 2 * k
    if n_fill < 0:
        raise ValueError(f"lengths: {length} is too short for a {k}-token needle prompt; need >= {3 + 2 * k}")
    cut = round(depth * n_fill)
    out = []
    for _ in range(n):
        hay = torch.randint(1, mid, (n_fill,), generator=g)
        ans = mid + torch.randperm(key - mid, generator=g)[:k]
        row = torch.cat([torch.tensor([0]), hay[:cut], torch.tensor([key]), ans, hay[cut:], torch.tensor([key])])
        out.append(NeedlePrompt(tokens=row, answer=ans, span=(cut + 2, cut + 2 + k), length=length, depth=depth,
                                actual_depth=cut / n_fill if n_fill else depth, text=None, kind="tokens"))
    return out


# ----------------------------------------------------------------------------- decoding


@torch.no_grad()
def greedy_decode(model, tokens: Tensor, n_new: int) -> Tensor:
    """Greedy continuation ``[B, n_new]`` of ``tokens [B, P]``.

    A clean model (nothing attached, :func:`~seqlens.models.hooks.attached_hooks`) decodes from its
    state (``forward_chunk`` over the prompt, then ``step``; recurrent state or KV cache): O(1) work
    per new token instead of a forward over the whole prompt. With hooks attached (e.g. head masks
    for the causal check of docs/methods.md §2) each step re-runs the full forward, so the hooks see
    the same full-sequence shapes at every step as in a plain forward.
    """
    from seqlens.models.hooks import attached_hooks

    if n_new > 0 and not attached_hooks(model):
        logits, state = model.forward_chunk(tokens, model.init_state(tokens.shape[0]))
        out = [logits[:, -1].argmax(-1)]
        for _ in range(n_new - 1):
            logits, state = model.step(out[-1], state)
            out.append(logits.argmax(-1))
        return torch.stack(out, 1)
    seq = tokens
    for _ in range(n_new):
        nxt = model(seq)[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, tokens.shape[1]:]


def _groups(prompts: Sequence[NeedlePrompt], max_new_tokens: int | None,
            batch_size: int) -> list[tuple[list[int], int]]:
    """Indices of prompts batched together (same prompt length and decode length, at most
    ``batch_size``) with their decode length: ``[(indices, n_new), ...]``."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prompts):
        n_new = max_new_tokens or len(p.answer)
        by_shape.setdefault((len(p.tokens), n_new), []).append(i)
    return [(idx[i:i + batch_size], n_new) for (_, n_new), idx in by_shape.items()
            for i in range(0, len(idx), batch_size)]


def answer_recall(prompt: NeedlePrompt, generated: Sequence[int], tokenizer=None) -> float:
    """ROUGE-1 recall of the answer in the output: clipped unigram overlap / answer unigrams.

    With a ``tokenizer`` (``"text"`` prompts) the unigrams are the lower-case alphanumeric words of
    the decoded texts (rouge_score's tokenisation, no stemming); otherwise they are token ids, i.e.
    the fraction of answer tokens present in the output.
    """
    if tokenizer is not None and prompt.kind == "text":
        ref, out = _words(prompt.text), _words(tokenizer.decode(list(generated)))
    else:
        ref, out = [int(t) for t in prompt.answer], [int(t) for t in generated]
    if not ref:
        return float("nan")
    return sum((Counter(ref) & Counter(out)).values()) / len(ref)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _check_prompts(model, prompts, max_new_tokens: int | None) -> list[NeedlePrompt]:
    """``prompts`` as a non-empty list of NeedlePrompt that fit the model's position limit."""
    if (isinstance(prompts, NeedlePrompt) or not isinstance(prompts, Sequence) or not prompts
            or not all(isinstance(p, NeedlePrompt) for p in prompts)):
        raise ValueError("prompts: expected a non-empty list of NeedlePrompt (from needle_prompts)")
    if max_new_tokens is not None:
        _check_positive_int("max_new_tokens", max_new_tokens)
    if _has_position_limit(model):
        need = max(len(p.tokens) + (max_new_tokens or len(p.answer)) - 1 for p in prompts)
        if need > model.cfg.n_ctx:
            raise ValueError(f"max_new_tokens: decoding needs {need} positions, beyond the model's "
                             f"n_ctx={model.cfg.n_ctx} (learned positions)")
    return list(prompts)


def _decode_all(model, prompts: list[NeedlePrompt], max_new_tokens: int | None, batch_size: int,
                progress: bool) -> list[Tensor]:
    """Greedy outputs ``[n_new]`` for every prompt, batched by :func:`_groups`."""
    from tqdm.auto import tqdm

    outputs: list[Tensor] = [torch.empty(0, dtype=torch.long)] * len(prompts)
    groups = _groups(prompts, max_new_tokens, batch_size)
    for idx, n_new in tqdm(groups, desc="needle prompts", disable=not progress):
        toks = torch.stack([prompts[i].tokens for i in idx]).to(model.device)
        gen = greedy_decode(model, toks, n_new)
        for i, row in zip(idx, gen.cpu()):
            outputs[i] = row
    return outputs


def needle_accuracy(model, prompts: Sequence[NeedlePrompt], measure: str = "correct",
                    max_new_tokens: int | None = None, batch_size: int = 16, progress: bool = False) -> float:
    """Needle-in-a-haystack accuracy of ``model`` on ``prompts`` (from :func:`needle_prompts`),
    decoding greedily ``len(answer)`` tokens (or ``max_new_tokens``).

    ``measure``: ``"correct"`` (default) the fraction of answers that count as right in
    :func:`retrieval_scores` (ROUGE-1 recall > 0.5); ``"exact"`` the fraction whose first
    ``len(answer)`` generated tokens equal the answer; ``"recall"`` the mean ROUGE-1 recall (Wu et
    al.'s needle-in-a-haystack score / 100). The task metric of the causal check (mask top-K
    retrieval heads vs K random heads): run it inside the masking context.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {list(MEASURES)}, got {measure!r}")
    prompts = _check_prompts(model, prompts, max_new_tokens)
    outputs = _decode_all(model, prompts, max_new_tokens, _check_positive_int("batch_size", batch_size), progress)
    return sum(_judge(model, p, out)[measure] for p, out in zip(prompts, outputs)) / len(prompts)


def _judge(model, prompt: NeedlePrompt, out: Tensor) -> dict[str, float]:
    """``{"recall", "correct", "exact"}`` of one greedy output ``out [n_new]``."""
    recall = answer_recall(prompt, out.tolist(), model.tokenizer)
    k = len(prompt.answer)
    exact = len(out) >= k and bool(torch.equal(out[:k].cpu(), prompt.answer.cpu()))
    return {"recall": recall, "correct": float(recall > CORRECT_RECALL), "exact": float(exact)}


# ----------------------------------------------------------------------------- scores


@torch.no_grad()
def _argmax_keys(model, tokens: Tensor, layer: int) -> Tensor:
    """``[B, H, L]``: each query's most attended key. Softmax layers read it from the
    attention-statistics kernel (``SeqModel.attention_stats``: Triton on GPU, chunked on CPU, no
    L×L matrix; ties to the smallest index, like ``argmax``); recurrent mixers from ``|α|`` of the
    implicit attention (docs/methods.md §7)."""
    if model.blocks[layer].mixer.is_softmax:
        return model.attention_stats(tokens, layer).argmax.long()
    return model.mixer_pattern(tokens, layer).float().abs().argmax(-1)


def copy_hits(model, seq: Tensor, prompt_len: int, spans: Tensor) -> Tensor:
    """Per-trial retrieval score of every head, ``[B, n_layers, H]``, for one decoded batch.

    ``seq [B, P + n]``: prompt (length ``prompt_len`` = P) then the n generated tokens;
    ``spans [B, 2]``: needle spans ``[s, e)``. Generated token ``w_i = seq[:, P + i]`` was predicted
    at query ``P − 1 + i``; a head scores ``1/(e−s)`` when ``j* = argmax_j A[P−1+i, j]`` is in the
    span and ``x_{j*} = w_i`` (Wu et al. §2, official ``retrieval_calculate``). Implicit attention
    is compared by ``|α|`` (module docstring).
    """
    P, n = prompt_len, seq.shape[1] - prompt_len
    # One causal forward over prompt + generated[:-1] gives every decode step's query row at once:
    # row P-1+i only sees tokens <= P-1+i, exactly what the model saw when it generated w_i, so this
    # equals reading the last row of a pattern at each step (the official code's decode loop).
    inp, w = seq[:, :P + n - 1], seq[:, P:]
    s, e = spans[:, 0, None, None], spans[:, 1, None, None]
    per_layer = []
    for layer in range(model.cfg.n_layers):
        j = _argmax_keys(model, inp, layer)[:, :, P - 1:]  # [B, H, n]; ties -> first key
        x_j = inp.gather(1, j.flatten(1)).view_as(j)
        hit = (j >= s) & (j < e) & (x_j == w[:, None, :])
        per_layer.append(hit.sum(-1).float() / (e - s)[..., 0].float())
    return torch.stack(per_layer, dim=1).cpu()


def retrieval_scores(model, lengths: int | Sequence[int] | None = None,
                     depths: float | Sequence[float] = DEFAULT_DEPTHS, n_trials: int = 4,
                     max_new_tokens: int | None = None, seed: int = 0, threshold: float = 0.1,
                     prompts: Sequence[NeedlePrompt] | None = None, only_correct: bool = True,
                     batch_size: int = 16, progress: bool = True, **format_kwargs: Any) -> HeadScores:
    """Retrieval-head scores ``[n_layers, n_heads]`` (Wu et al. 2024; module docstring).

    Builds :func:`needle_prompts` ``(model, lengths, depths, n_trials, seed, **format_kwargs)``
    (``kind``, ``style``, ``answer_len``) unless ``prompts`` are given, decodes greedily
    ``len(answer)`` tokens (or ``max_new_tokens``) and averages :func:`copy_hits` over the counted
    trials: those answered right (recall > 0.5), or all trials if ``only_correct=False``. When no
    trial counts, every score is 0 (no evidence of retrieval; a warning is issued and
    ``settings["counted_trials"] == 0``). ``settings``: the grid, counts, ``accuracy`` / ``recall``
    ``[len(lengths)][len(depths)]`` (fraction of right answers / mean recall per cell, for a
    heatmap), ``threshold`` and ``heads`` (``[layer, head]`` scoring above it, best first).
    """
    built = prompts is None
    if built:
        prompts = needle_prompts(model, lengths, depths, n_trials, seed, **format_kwargs)
    elif format_kwargs or lengths is not None:
        raise ValueError("prompts: given prompts already fix the grid and format; drop "
                         f"{sorted(format_kwargs) + (['lengths'] if lengths is not None else [])}")
    prompts = _check_prompts(model, prompts, max_new_tokens)
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool):
        raise ValueError(f"threshold: expected a number, got {threshold!r}")
    batch_size = _check_positive_int("batch_size", batch_size)
    outputs = _decode_all(model, prompts, max_new_tokens, batch_size, progress)
    judged = [_judge(model, p, out) for p, out in zip(prompts, outputs)]
    counted = [i for i, j in enumerate(judged) if j["correct"] or not only_correct]
    # copy hits only where they count: the implicit attention of every layer over the whole prompt is
    # the cost, and a model that answers few trials right (text-mamba: none) needs few of them
    trial_scores = _score_trials(model, prompts, outputs, counted, batch_size, progress)
    scores = _mean_counted(model, trial_scores, counted)
    settings = _settings(model, prompts, judged, counted, scores, threshold, max_new_tokens, only_correct,
                         seed if built else None)
    return HeadScores(scores=scores, name="retrieval", settings=settings)


def _score_trials(model, prompts: list[NeedlePrompt], outputs: list[Tensor], which: list[int], batch_size: int,
                  progress: bool) -> dict[int, Tensor]:
    """:func:`copy_hits` scores ``[n_layers, H]`` of the prompts ``which`` (by index), given their
    greedy ``outputs``, batched like the decoding (same prompt and output length)."""
    from tqdm.auto import tqdm

    chosen = [prompts[i] for i in which]
    groups = _groups(chosen, None, batch_size) if chosen else []
    trial_scores: dict[int, Tensor] = {}
    for idx, _ in tqdm(groups, desc="copy hits", disable=not progress):
        rows = [which[i] for i in idx]
        by_len: dict[int, list[int]] = {}
        for i in rows:  # outputs of equal length batch together (max_new_tokens fixes it; else answer length)
            by_len.setdefault(len(outputs[i]), []).append(i)
        for same in by_len.values():
            seq = torch.stack([torch.cat([prompts[i].tokens, outputs[i].to(prompts[i].tokens.device)])
                               for i in same]).to(model.device)
            spans = torch.tensor([prompts[i].span for i in same], device=seq.device)
            for i, sc in zip(same, copy_hits(model, seq, len(prompts[same[0]].tokens), spans)):
                trial_scores[i] = sc
    return trial_scores


def _mean_counted(model, trial_scores: dict[int, Tensor], counted: list[int]) -> Tensor:
    """Mean ``[n_layers, H]`` over the counted trials; zeros (with a warning) when none counts."""
    if not counted:
        warnings.warn("retrieval_scores: no trial was answered right, so no trial counts and every "
                      "score is 0 (see settings['accuracy'])", RuntimeWarning, stacklevel=3)
        return torch.zeros(model.cfg.n_layers, model.n_groups)
    return torch.stack([trial_scores[i] for i in counted]).mean(0)


def _grid(prompts: list[NeedlePrompt], values: list[float]) -> tuple[list[int], list[float], list[list[float]]]:
    """``(lengths, depths, mean of values per [length][depth] cell)`` in order of appearance
    (NaN for an empty cell)."""
    lengths = list(dict.fromkeys(p.length for p in prompts))
    depths = list(dict.fromkeys(p.depth for p in prompts))
    cells: dict[tuple[int, float], list[float]] = {}
    for p, v in zip(prompts, values):
        cells.setdefault((p.length, p.depth), []).append(v)
    grid = [[sum(cells[L, d]) / len(cells[L, d]) if (L, d) in cells else float("nan") for d in depths]
            for L in lengths]
    return lengths, depths, grid


def _settings(model, prompts, judged, counted, scores, threshold, max_new_tokens, only_correct,
              seed) -> dict[str, Any]:
    """The ``settings`` of :func:`retrieval_scores` (see its docstring)."""
    lengths, depths, accuracy = _grid(prompts, [j["correct"] for j in judged])
    recall = _grid(prompts, [j["recall"] for j in judged])[2]
    flat = [(float(scores[l, h]), [l, h]) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    heads = [lh for sc, lh in sorted(flat, key=lambda t: -t[0]) if sc > threshold]
    kind, per_cell = prompts[0].kind, len(prompts) / (len(lengths) * len(depths))
    return {
        "model": model.name or type(model).__name__, "arch": model.cfg.arch,
        "data": f"needle prompts ({kind})", "kind": kind, "lengths": lengths, "depths": depths,
        "n_trials": int(per_cell) if per_cell.is_integer() else per_cell, "trials": len(prompts),
        "counted_trials": len(counted), "only_correct": only_correct,
        "accuracy": accuracy, "recall": recall, "mean_accuracy": sum(j["correct"] for j in judged) / len(judged),
        "criterion": f"ROUGE-1 recall > 0.5 ({'words' if kind == 'text' else 'tokens'})",
        "span": "answer tokens inside the needle", "max_new_tokens": max_new_tokens, "seed": seed,
        "threshold": float(threshold), "heads": heads,
        "pattern": "softmax" if model.is_softmax else "implicit attention (METHODS.md §7)",
        "argmax_over": "A" if model.is_softmax else "|alpha| (value norms not exposed by SeqModel)",
        "backend": "SeqModel.attention_stats (no L×L matrix)" if model.is_softmax
        else "torch (SeqModel.mixer_pattern)",
    }
