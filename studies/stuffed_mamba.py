"""Study: Stuffed Mamba (Chen et al. 2024): state collapse, its mitigations and passkey capacity.

Every built ``passkey-mamba*`` organism (any state size N and training length; the study groups
them by their task's ``seq_len``, ``seqlens.tasks.task_kwargs(recipe)``) is streamed far past its training length with
``probes.state_collapse`` (its own task stream, ``--tokens`` tokens); each collapsed one is rerun
inside the three mitigations (``normalize_states``, ``forget_more`` with the decay doubled,
``state_window`` of the training length). Passkey capacity: ``probes.passkey_sweep`` over
``--lengths`` and ``probes.capacity_fit`` (T_max = a·N + b) per training length. The three claims
are judged separately: (1) collapse: at a training length, a larger state collapses while a smaller
one does not (or collapses later); (2) the mitigations remove every collapse; (3) capacity grows with
state size: slope a > 0 on ≥ 4 state sizes (fewer: "not testable"). Reproduced = all three.

    python -m seqlens.studies.stuffed_mamba [--tokens 4096] [--lengths 64 128 256 512 1024]
        [--trials 8] [--smoke] [--out DIR]
"""

from __future__ import annotations

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

INFO = STUDIES["stuffed_mamba"]
PREFIX = "passkey-mamba"
MIN_POINTS = 4


def collapse(model, a) -> dict:
    """The collapse verdict, and with a collapse the verdict inside each mitigation."""
    from seqlens.probes import forget_more, normalize_states, state_collapse, state_window

    run = lambda: state_collapse(model, source="task", n_tokens=a.tokens, seed=a.seed, progress=True)  # noqa: E731
    r = run()
    out = {"train_len": r.train_len, "collapsed": r.collapsed, "onset": r.onset, "loss_in": r.loss_in,
           "loss_beyond": r.loss_beyond, "rms_ratio_max": float(r.rms_ratio.max())}
    if r.collapsed:
        mitigations = {"normalize_states": lambda: normalize_states(model),
                       "forget_more": lambda: forget_more(model, decay_scale=2.0),
                       "state_window": lambda: state_window(model, r.train_len)}
        out["mitigated"] = {}
        for name, ctx in mitigations.items():
            with ctx():
                m = run()
            out["mitigated"][name] = {"collapsed": m.collapsed, "loss_beyond": m.loss_beyond}
    return out


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


def judge(coll: dict, fits: dict, d_state: dict, lengths: dict) -> dict[str, bool | None]:
    """Each claim True / False, or None when these organisms cannot test it."""
    by_len: dict[int, list[str]] = {}
    for n in coll:
        by_len.setdefault(lengths[n], []).append(n)
    pairs = [(s, b) for ns in by_len.values() for s in ns for b in ns if d_state[s] < d_state[b]]
    c1 = (None if not pairs else
          any(coll[b]["collapsed"] and not coll[s]["collapsed"] for s, b in pairs))
    mitigated = [m for c in coll.values() for m in c.get("mitigated", {}).values()]
    c2 = None if not mitigated else all(not m["collapsed"] for m in mitigated)
    testable = [f for f in fits.values() if f.get("a") is not None and f["points"] >= MIN_POINTS]
    c3 = None if not testable else all(f["a"] > 0 for f in testable)
    return {"collapse_with_large_state": c1, "mitigations_remove_collapse": c2, "capacity_grows": c3}


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


def main(argv: list[str] | None = None) -> int:
    p = parser("stuffed_mamba", __doc__)
    p.add_argument("--tokens", type=int, default=4096, help="stream length of the collapse probe")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--trials", type=int, default=8)
    a = p.parse_args(argv)
    from seqlens.models import zoo
    from seqlens.probes import passkey_sweep

    names = [n for n in zoo.names() if n.startswith(PREFIX)]
    if a.smoke:
        names, a.tokens, a.lengths, a.trials = names[:2], 256, [32, 64], 1
    study = Study(INFO.name, INFO.paper, INFO.claim, a)
    coll, sweeps, d_state, by_len, lengths = {}, {}, {}, {}, {}
    for name, model in study.organisms(names):
        coll[name] = collapse(model, a)
        d_state[name], lengths[name] = model.cfg.d_state, train_len(model)
        sweeps[name] = passkey_sweep(model, lengths=a.lengths, n_trials=a.trials, seed=a.seed, progress=True)
        by_len.setdefault(lengths[name], []).append(name)
        study.figure(sweeps[name].figure(), f"{name}: passkey accuracy")
        c = coll[name]
        study.log(f"{name} (N={d_state[name]}, trained at {c['train_len']}): collapsed={c['collapsed']}, loss in "
                  f"{c['loss_in']:.3f} / beyond {c['loss_beyond']:.3f}; T_max {sweeps[name].longest_perfect}")
    fits = capacity(sweeps, by_len)
    claims = judge(coll, fits, d_state, lengths)
    coverage_note(study, d_state, lengths)
    measured = {"train_len": lengths, "collapse": coll, "T_max": {n: s.longest_perfect for n, s in sweeps.items()},
                "accuracy": {n: s.accuracy for n, s in sweeps.items()}, "fits": fits, "claims": claims,
                "d_state": d_state}
    verdict = "; ".join(f"{k}: {'not testable' if v is None else ('yes' if v else 'no')}" for k, v in claims.items())
    verdict += "; T_max " + ", ".join(f"{n} {s.longest_perfect}" for n, s in sweeps.items())
    study.finish(measured, overall(claims), verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
