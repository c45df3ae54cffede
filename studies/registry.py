"""Every paper study with its one-line claim: ``seqlens study list``, the Studies page, the CI smoke test.

Each entry names a module ``seqlens.studies.<name>`` with ``main(argv) -> int`` that takes
``--smoke``, ``--out DIR`` and ``--seed``, and writes ``metrics.json`` and ``report.html``. The
claims live here once; the modules read theirs from :data:`STUDIES`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class StudyInfo:
    name: str
    paper: str
    claim: str

    @property
    def module(self) -> str:
        return f"seqlens.studies.{self.name}"

    @property
    def available(self) -> bool:
        """Whether the module ships in this install (a study added by another branch may not yet)."""
        return importlib.util.find_spec(self.module) is not None


_ENTRIES = [
    ("induction_phase_change", "Olsson et al. 2022, In-context learning and induction heads",
     "the loss bump on repeated tokens and the jump of the best prefix-matching score happen at the same "
     "point of training"),
    ("retrieval_heads", "Wu et al. 2024, Retrieval head mechanistically explains long-context factuality",
     "few heads are retrieval heads; masking the top ones collapses needle retrieval, masking as many "
     "random heads does not"),
    ("successor_heads", "Gould et al. 2023, Successor heads",
     "a successor head's effective OV maps each ordinal token to its successor, and that map carries "
     "mod-10 structure"),
    ("sinks_act", "Yu et al. 2024, Unveiling and harnessing hidden attention sinks (ACT)",
     "heads sink attention on the first token and on hidden sinks later in the sequence; calibrating them "
     "(ACT) improves task accuracy without training"),
    ("stuffed_mamba", "Chen et al. 2024, Stuffed Mamba",
     "a recurrent state collapses beyond the training length when the state is large for that length; "
     "the mitigations remove the collapse; passkey capacity grows with state size"),
    ("verbatim_memory", "Armeni, Honey & Linzen 2022, Characterizing verbatim short-term memory",
     "a Transformer retrieves a repeated noun list verbatim (repeat surprisal far below 100 %), an LSTM "
     "much less"),
    ("icll_ngram_heads", "Akyürek et al. 2024, In-context language learning: architectures and algorithms",
     "Transformers solve in-context language learning with n-gram heads that recurrent models lack; "
     "ablating those heads hurts ICLL accuracy"),
    ("outliers_ptq", "Pierro & Abreu 2024, Mamba-PTQ: outlier channels",
     "a few input channels carry outlier activations; naive 8-bit quantisation hurts, handling the outlier "
     "channels recovers most of the loss"),
    ("copying", "Jelassi et al. 2024, Repeat after me: Transformers are better than state space models "
     "at copying", "Transformers copy strings longer than those seen in training; state-space models fail "
     "once the string outgrows their state"),
    ("just_read_twice", "Arora et al. 2024, Just read twice",
     "a recurrent model recalls better when the context is repeated (read twice) before the question"),
    ("zoology_mqar", "Arora et al. 2023, Zoology: measuring and improving recall in efficient language models",
     "a recurrent model's multi-query associative recall rises with its state size, while attention solves "
     "the task"),
    ("fox_forgetting", "Lin et al. 2025, Forgetting Transformer (FoX)",
     "FoX's forget gates decay mostly locally with a few long-range heads, and FoX extrapolates beyond "
     "its training length better than a Transformer"),
    ("zoo_circuits", "Olsson et al. 2022; Wu et al. 2024; Gould et al. 2023 (every head finder on the zoo)",
     "the finders single out their heads, and ablating induction-attn2's top induction heads removes the "
     "behaviour far more than ablating as many random heads"),
    ("lrp_faithfulness", "Jafari et al. 2024 (MambaLRP); Achtibat et al. 2024 (AttnLRP)",
     "the architecture's LRP rule set ranks input tokens more faithfully (token flipping ΔA^F) than "
     "gradient × input and than random"),
    ("sae_frontier", "Gao et al. 2024; Bricken et al. 2023 (sparse autoencoders)",
     "the sparsity / reconstruction frontier of SAE architectures on each organism's residual stream"),
]

STUDIES: dict[str, StudyInfo] = {n: StudyInfo(n, p, c) for n, p, c in _ENTRIES}


def get(name: str) -> StudyInfo:
    if name not in STUDIES:
        raise KeyError(f"NAME: unknown study {name!r}; studies: {sorted(STUDIES)}")
    return STUDIES[name]


def read_run(folder, name: str) -> tuple[dict | None, "Path | None"]:
    """``(metrics, report path)`` of study ``name``'s run under ``folder/name/`` (each None when
    that file is missing; a metrics.json that is not a JSON object raises a ValueError naming it)."""
    import json
    from pathlib import Path

    d = Path(folder) / name
    metrics_file, report = d / "metrics.json", d / "report.html"
    metrics = None
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{metrics_file}: not valid JSON ({e})") from None
        if not isinstance(metrics, dict):
            raise ValueError(f"{metrics_file}: expected a JSON object")
    return metrics, (report if report.is_file() else None)
