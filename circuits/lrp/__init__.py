"""seqlens.circuits.lrp: layer-wise relevance propagation on every architecture (docs/methods.md §6).

``attribute(model, tokens, target=None, position=-1, method="auto")`` -> :class:`Attribution`.
Rule sets ("attnlrp", "cp-lrp", "mambalrp", "lrp") run as a modified forward whose gradient ×
input at ``hook_embed`` is the relevance (:mod:`.rules`); each mixer declares its own in
``type(mixer).lrp`` (:class:`seqlens.models.mixer.LRPRules`). Baselines: "gxi", "ig",
"smoothgrad", "rollout". Faithfulness: ``token_flipping`` (MoRF / LeRF curves, ΔA^F).
"""

from seqlens.circuits.lrp.attribute import BASELINES, METHODS, Attribution, attribute, rollout
from seqlens.circuits.lrp.flipping import FlippingCurves, token_flipping
from seqlens.circuits.lrp.rules import LRP_METHODS, divide_gradient, identity_rule, lrp_rules

__all__ = ["Attribution", "attribute", "rollout", "lrp_rules", "divide_gradient", "identity_rule",
           "METHODS", "LRP_METHODS", "BASELINES", "token_flipping", "FlippingCurves"]
