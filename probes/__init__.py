"""seqlens.probes: what recurrent states hold and how they fail; every probe returns a Result.

- :mod:`.collapse`: ``state_collapse`` (Stuffed Mamba's diagnosis, streamed with O(state) memory)
  and the mitigations ``normalize_states``, ``forget_more``, ``state_window``.
- :mod:`.linear`: ``fit_probe`` (any hook, any labels, control task), used by the others.
- :mod:`.capacity`: ``passkey_sweep`` / ``capacity_fit`` (Stuffed Mamba) and ``lag_decoding``.
- :mod:`.outliers`: ``outlier_channels`` (Mamba-PTQ's μ + 6σ rule, zeroing cost).
- :mod:`.gates`: ``gate_saturation`` and ``interpretable_cells`` (byte-level Python features).
- :mod:`.length`: ``position_loss`` (loss per token position of single long sequences: FoX's and
  Stuffed Mamba's length extrapolation), ``held_out_documents``, ``task_prompts``, ``prompt_lengths``.
- :mod:`.memory`: ``repeat_surprisal`` (Armeni et al.'s verbatim short-term memory paradigm).
- :mod:`.sae`: sparse autoencoders on any hook (``from seqlens.probes import sae``): five
  architectures in SAELens' format, harvesting, training, metrics, feature reports.
"""

from seqlens.probes.capacity import (CapacityFit, LagCurve, PasskeySweep, capacity_fit, lag_curves_figure,
                                     lag_decoding, passkey_sweep)
from seqlens.probes.collapse import (CollapseComparison, CollapseResult, compare, forget_more, normalize_states,
                                     state_collapse, state_window)
from seqlens.probes.gates import (CellReport, GateSaturation, NotApplicableError, gate_saturation,
                                  interpretable_cells, python_features)
from seqlens.probes.length import PositionLoss, held_out_documents, position_loss, prompt_lengths, task_prompts
from seqlens.probes.linear import ProbeResult, fit_probe, fit_probe_arrays
from seqlens.probes.memory import MemoryResult, repeat_surprisal
from seqlens.probes.outliers import OutlierResult, outlier_channels, zero_input_channels

__all__ = [
    "CapacityFit", "CellReport", "CollapseComparison", "CollapseResult", "compare", "forget_more",
    "normalize_states", "state_collapse", "state_window", "GateSaturation", "LagCurve", "MemoryResult", "NotApplicableError",
    "OutlierResult", "PasskeySweep", "ProbeResult", "capacity_fit", "fit_probe", "fit_probe_arrays",
    "gate_saturation", "interpretable_cells", "lag_curves_figure", "lag_decoding", "outlier_channels",
    "passkey_sweep", "PositionLoss", "held_out_documents", "position_loss", "prompt_lengths", "python_features", "task_prompts", "repeat_surprisal", "zero_input_channels",
]
