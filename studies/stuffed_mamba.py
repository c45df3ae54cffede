"""Study: Stuffed Mamba (Chen et al. 2024): state collapse, its mitigations and passkey capacity.

Every built ``passkey-mamba*`` organism (any state size N and training length L, grouped by L =
its task's ``seq_len``, ``seqlens.tasks.task_kwargs(recipe)``) is judged on **single long
prompts** past L, as the paper does (docs/methods.md §11; run C onward): ``--prompts`` fresh
passkey prompts at L, 2L and 4L (``probes.prompt_lengths``, run in chunks of ``--chunk`` tokens
carrying the state), each scored by answer loss, key-digit accuracy and exact retrieval (every
key digit the greedy one).

Rule (fixed before run C): an organism *works* at L when its exact retrieval at L is ≥
``WORKS`` (0.9); a working organism has *collapsed* when its exact retrieval at 2L is below
``COLLAPSED`` (0.5); one that does not work at L is not judged. Claims:

1. collapse with the larger state: at every training length with ≥ 2 judged state sizes, the
   collapsed ones are exactly the largest (a non-empty proper upper set of the judged N);
2. the mitigations remove every collapse: each collapsed organism inside ``normalize_states``,
   ``forget_more`` (decay doubled) and ``state_window`` (window L) works again at 2L (exact ≥ 0.5,
   the same single prompts, run in the same chunks, on which the mitigations act);
3. capacity grows with state size: ``probes.passkey_sweep`` over ``--lengths`` and
   ``probes.capacity_fit`` (T_max = a·N + b) per training length, slope a > 0 on ≥ 4 state sizes
   (fewer: not testable).

Reproduced = all three. Also reported, not in the claims: the paper's per-token LM loss on single
held-out text windows of 4 × 256 bytes for the text Mamba(s) (``--text``; one state size, so no
comparison across N), and the old measure of runs A-B (``old_stream_rule``):
``probes.state_collapse`` on ``--tokens`` tokens of a stream of *concatenated* task prompts, whose
rule called all eight passkey Mambas collapsed. It was replaced because each new prompt of such a
stream is a new task, not a longer input; the old rule's mitigations-on-streams are no longer run.

    python -m seqlens.studies.stuffed_mamba [--prompts 64] [--chunk 32] [--tokens 4096]
        [--lengths 64 128 256 512 1024] [--trials 8] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["stuffed_mamba"]
PREFIX = "passkey-mamba"
MIN_POINTS = 4
WORKS, COLLAPSED = 0.9, 0.5
TEXT = ["text-mamba"]


def single_prompts(model, a) -> dict:
    """Exact retrieval / answer loss on single prompts at L, 2L, 4L; the verdict; with a collapse,
    exact retrieval at 2L inside each mitigation."""
    from seqlens.probes import forget_more, normalize_states, prompt_lengths, state_window

    L = train_len(model)
    run = lambda lengths: prompt_lengths(model, lengths, a.prompts, seed=a.seed + 1000, chunk=a.chunk)  # noqa: E731
    at = run([L, 2 * L, 4 * L])
    out = {"train_len": L, "at": at, "collapsed": collapsed(at, L),
           "loss_rise": (at[2 * L]["loss"] + at[4 * L]["loss"]) / 2 - at[L]["loss"]}
    if out["collapsed"]:
        mitigations = {"normalize_states": lambda: normalize_states(model),
                       "forget_more": lambda: forget_more(model, decay_scale=2.0),
                       "state_window": lambda: state_window(model, L)}
        out["mitigated"] = {}
        for name, ctx in mitigations.items():
            with ctx():
                m = run([2 * L])[2 * L]
            out["mitigated"][name] = {"exact": m["exact"], "loss": m["loss"], "collapsed": m["exact"] < COLLAPSED}
    return out


def collapsed(at: dict, L: int) -> bool | None:
    """The rule of the module docstring: None when the organism does not work at L."""
    if at[L]["exact"] < WORKS:
        return None
    return at[2 * L]["exact"] < COLLAPSED


def old_stream(model, a) -> dict:
    """The old rule's measure (runs A-B): ``state_collapse`` on a stream of concatenated prompts."""
    from seqlens.probes import state_collapse

    r = state_collapse(model, source="task", n_tokens=a.tokens, seed=a.seed, progress=True)
    return {"collapsed": r.collapsed, "loss_in": r.loss_in, "loss_beyond": r.loss_beyond,
            "rms_ratio_max": float(r.rms_ratio.max())}


def capacity(sweeps: dict, names_by_len: dict[int, list[str]]) -> dict:
    from seqlens.probes import capacity_fit

    fits = {}
    for L, names in names_by_len.items():
        pts = {sweeps[n].settings["state_size"]["d_state"]: sweeps[n] for n in names}
        if len(pts) < 2:
            fits[L] = {"points": len(pts), "fit": None, "why": "fewer than two state sizes"}
            continue
        try:
            f = capacity_fit(pts)
        except ValueError as e:  # every T censored
            fits[L] = {"points": len(pts), "fit": None, "why": str(e)}
            continue
        fits[L] = {"points": len(f.state_sizes), "a": f.a, "b": f.b, "r2": f.r2_linear, "c": f.c,
                   "state_sizes": f.state_sizes, "T_max": f.lengths, "excluded": f.excluded}
    return fits


def split_at(coll: dict[str, bool | None], d_state: dict[str, int]) -> bool | None:
    """Whether the collapsed organisms of one training length are exactly its largest states (a
    non-empty proper upper set of the judged N); None with fewer than 2 judged state sizes."""
    judged = sorted((d_state[n], bool(c)) for n, c in coll.items() if c is not None)
    if len({d for d, _ in judged}) < 2:
        return None
    flags = [c for _, c in judged]
    k = flags.index(True) if True in flags else len(flags)
    return 0 < k < len(flags) and all(flags[k:]) and not any(flags[:k])


def splits_by_len(coll: dict, d_state: dict, lengths: dict) -> dict[int, bool | None]:
    """:func:`split_at` per training length."""
    by_len: dict[int, dict[str, bool | None]] = {}
    for n, c in coll.items():
        by_len.setdefault(lengths[n], {})[n] = c["collapsed"]
    return {L: split_at(c, d_state) for L, c in sorted(by_len.items())}


def judge(coll: dict, fits: dict, d_state: dict, lengths: dict) -> dict[str, bool | None]:
    """Each claim True / False, or None when these organisms cannot test it. ``coll[name]``
    holds ``collapsed`` (True / False / None) and, when collapsed, ``mitigated``."""
    splits = [s for s in splits_by_len(coll, d_state, lengths).values() if s is not None]
    c1 = None if not splits else all(splits)
    mitigated = [m for c in coll.values() for m in c.get("mitigated", {}).values()]
    c2 = None if not mitigated else all(not m["collapsed"] for m in mitigated)
    testable = [f for f in fits.values() if f.get("a") is not None and f["points"] >= MIN_POINTS]
    c3 = None if not testable else all(f["a"] > 0 for f in testable)
    return {"collapse_with_large_state": c1, "mitigations_remove_collapse": c2, "capacity_grows": c3}


def old_claim1(old: dict, d_state: dict, lengths: dict) -> bool | None:
    """The old rule's claim 1 on the stream measure: some larger state collapses while a smaller
    one at the same training length does not."""
    pairs = [(s, b) for s in old for b in old if lengths[s] == lengths[b] and d_state[s] < d_state[b]]
    return None if not pairs else any(old[b]["collapsed"] and not old[s]["collapsed"] for s, b in pairs)


def overall(claims: dict[str, bool | None]) -> bool | None:
    """False if any claim failed, True if every claim held, None (not measured) otherwise."""
    values = list(claims.values())
    return False if False in values else (True if all(v is True for v in values) else None)


def train_len(model) -> int:
    """The sequence length ``model`` was trained on (its recipe's final task)."""
    from seqlens.tasks import task_kwargs

    return int(task_kwargs(model.recipe)["seq_len"])


def coverage_note(study: Study, d_state: dict, lengths: dict) -> None:
    """Say which training lengths have too few state sizes for the capacity claim, and which
    passkey Mamba recipes the zoo defines but has not built."""
    from seqlens.models import zoo

    sizes: dict[int, set[int]] = {}
    for n, d in d_state.items():
        sizes.setdefault(lengths[n], set()).add(d)
    short = {L: sorted(s) for L, s in sizes.items() if len(s) < MIN_POINTS}
    if short:
        study.note(f"capacity needs ≥ {MIN_POINTS} state sizes per training length; too few at "
                   + ", ".join(f"T={L}: N={s}" for L, s in sorted(short.items())))
    unbuilt = [n for n in zoo.organisms() if n.startswith(PREFIX) and not zoo.is_built(n)]
    study.missing.extend(unbuilt)


def text_loss(study: Study, names: list[str], a) -> dict:
    """The paper's per-token LM loss on single held-out windows of 4 × L (reported, not judged)."""
    from seqlens.probes import held_out_documents, position_loss

    out = {}
    for name, model in study.organisms(names):
        L = train_len(model)
        r = position_loss(model, held_out_documents(a.text_rows, 4 * L, seed=a.seed), bucket=L // 2, progress=True)
        rise, se, n = r.rise(L)
        out[name] = {"train_len": L, "rise": rise, "rise_se": se, "rows": n, "buckets": r.buckets()}
        study.figure(r.figure(name=name), f"{name}: per-token loss on single held-out windows")
        study.log(f"{name}: LM loss rise past L on single windows {rise:+.3f} ± {se:.3f} nats ({n} windows)")
    return out


def describe(name: str, d: int, c: dict) -> str:
    at = c["at"]
    exact = "/".join(f"{v['exact']:.2f}" for v in at.values())
    state = {True: "collapsed", False: "generalises", None: "not judged (fails at L)"}[c["collapsed"]]
    return f"{name} (N={d}, L={c['train_len']}): exact retrieval at L/2L/4L {exact} → {state}"


def main(argv: list[str] | None = None) -> int:
    p = parser("stuffed_mamba", __doc__)
    p.add_argument("--prompts", type=int, default=64, help="single prompts per length")
    p.add_argument("--chunk", type=int, default=32, help="tokens per chunk (the state is carried between chunks)")
    p.add_argument("--tokens", type=int, default=4096, help="stream length of the old (secondary) measure")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--text", nargs="*", default=TEXT, help="text organisms for the per-token LM loss")
    p.add_argument("--text-rows", type=int, default=32, help="held-out windows per text organism")
    a = p.parse_args(argv)
    from seqlens.models import zoo
    from seqlens.probes import passkey_sweep

    names = [n for n in zoo.names() if n.startswith(PREFIX)]
    if a.smoke:
        names, a.tokens, a.lengths, a.trials, a.prompts, a.text_rows = names[:2], 256, [32, 64], 1, 4, 2
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    coll, old, sweeps, d_state, by_len, lengths = {}, {}, {}, {}, {}, {}
    for name, model in study.organisms(names):
        coll[name], old[name] = single_prompts(model, a), old_stream(model, a)
        d_state[name], lengths[name] = model.cfg.d_state, train_len(model)
        sweeps[name] = passkey_sweep(model, lengths=a.lengths, n_trials=a.trials, seed=a.seed, progress=True)
        by_len.setdefault(lengths[name], []).append(name)
        study.figure(sweeps[name].figure(), f"{name}: passkey accuracy")
        study.log(describe(name, d_state[name], coll[name]) + f"; T_max {sweeps[name].longest_perfect}; old stream "
                  f"rule collapsed={old[name]['collapsed']}")
    fits = capacity(sweeps, by_len)
    claims = judge(coll, fits, d_state, lengths)
    coverage_note(study, d_state, lengths)
    text = text_loss(study, a.text, a)
    old_c1 = old_claim1(old, d_state, lengths)
    by_split = splits_by_len(coll, d_state, lengths)
    measured = {"train_len": lengths, "single_prompts": coll, "claim1_by_train_len": by_split, "T_max": {n: s.longest_perfect for n, s in sweeps.items()},
                "accuracy": {n: s.accuracy for n, s in sweeps.items()}, "fits": fits, "claims": claims,
                "d_state": d_state, "text_loss": text,
                "old_stream_rule": {"collapse": old, "collapse_with_large_state": old_c1}}
    verdict = "; ".join(f"{k}: {'not testable' if v is None else ('yes' if v else 'no')}" for k, v in claims.items())
    verdict += " (claim 1 per training length: " + ", ".join(
        f"L={L} {'not testable' if v is None else ('yes' if v else 'no')}" for L, v in by_split.items()) + ")"
    verdict += "; " + "; ".join(describe(n, d_state[n], c) for n, c in coll.items())
    verdict += "; T_max " + ", ".join(f"{n} {s.longest_perfect}" for n, s in sweeps.items())
    verdict += (f"; old stream rule: {sum(bool(o['collapsed']) for o in old.values())} of {len(old)} collapsed, "
                f"claim 1 {'not testable' if old_c1 is None else ('yes' if old_c1 else 'no')}")
    study.finish(measured, overall(claims), verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
