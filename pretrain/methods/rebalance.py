"""Loss re-balancing between global-global and global-local pairs (paper Sec. 3.2.4).

With P_gg global-global pairs, P_gl global-local pairs, L_g the SUM of the global-global pair losses
and L_l the SUM of the global-local pair losses, multi-crop SSL methods use the plain mean over all
pairs (Eq. 2)::

    L = (L_g + L_l) / (P_gg + P_gl)

which lets the many global-local pairs dominate (2 globals, 6 locals: P_gg / P_gl = 1/6). The paper
re-weights the two means (Eq. 3)::

    L = alpha * L_g / P_gg + (1 - alpha) * L_l / P_gl

Eq. 3 with alpha = P_gg / (P_gg + P_gl) is Eq. 2 (alpha = 1/7 for DINO's 2 + 6 views); the paper's
recipe uses alpha = 0.4 for every method and backbone (docs/recipes.md, "Baseline and ours").
"""

from __future__ import annotations

import math

from torch import Tensor

from lowssl.config import require

ALPHA_KEY = "method.alpha"


def check_alpha(alpha: float | None, key: str = ALPHA_KEY) -> None:
    """Raise ConfigError naming ``key`` unless alpha is None (Eq. 2) or a number in [0, 1] (Eq. 3)."""
    valid = alpha is None or (
        isinstance(alpha, int | float)
        and not isinstance(alpha, bool)
        and math.isfinite(alpha)
        and 0 <= alpha <= 1
    )
    require(
        valid,
        key,
        f"allowed values: null (Eq. 2, alpha = P_gg / (P_gg + P_gl)) or a number in [0, 1]; got {alpha!r}",
    )


def effective_alpha(alpha: float | None, p_gg: int, p_gl: int) -> float:
    """The global-global weight actually used: alpha itself, or P_gg / (P_gg + P_gl) for Eq. 2."""
    return p_gg / (p_gg + p_gl) if alpha is None else float(alpha)


def rebalance(loss_gg_sum: Tensor, loss_gl_sum: Tensor, p_gg: int, p_gl: int, alpha: float | None) -> Tensor:
    """Combine summed pair losses by Eq. 3 (``alpha`` in [0, 1]) or Eq. 2 (``alpha=None``).

    ``alpha=None`` evaluates Eq. 2 literally, so it equals the plain mean over all pairs exactly.
    Without local views (P_gl = 0) there is nothing to balance: the loss is L_g / P_gg.
    """
    check_alpha(alpha)
    if p_gg <= 0 or p_gl < 0:
        raise ValueError(f"pair counts must be P_gg > 0 and P_gl >= 0, got P_gg={p_gg}, P_gl={p_gl}")
    if p_gl == 0:
        return loss_gg_sum / p_gg
    if alpha is None:
        return (loss_gg_sum + loss_gl_sum) / (p_gg + p_gl)  # Eq. 2
    return alpha * loss_gg_sum / p_gg + (1 - alpha) * loss_gl_sum / p_gl  # Eq. 3
