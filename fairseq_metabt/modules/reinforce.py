"""REINFORCE with a moving-average baseline (Williams 1992).

Used by meta back-translation for the backward model (Pham et al. 2021, Eq. 8
and A.2: ``grad_psi ~ -(r - b) grad_psi log P(x_hat | y; psi)``) and by DDS for
the scorer (Wang et al. 2020, Eq. 6).
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from fairseq_metabt.errors import UserError


class MovingAverageBaseline:
    """``b <- decay * b + (1 - decay) * r``; the first reward initialises ``b``.

    Initialising with the first reward (instead of 0) avoids one huge
    advantage at the start, when rewards have an unknown scale.
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise UserError(f"baseline decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.value = 0.0
        self.initialized = False

    def advantage(self, reward: torch.Tensor) -> torch.Tensor:
        """``r - b`` with the baseline *before* this step's update (an unbiased estimate)."""
        return reward - (self.value if self.initialized else reward.detach().mean())

    def update(self, mean_reward: float) -> bool:
        """Move ``b`` towards ``mean_reward``; a non-finite reward is ignored (False) and never enters ``b``."""
        if not math.isfinite(float(mean_reward)):
            return False
        if not self.initialized:
            self.value, self.initialized = float(mean_reward), True
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * float(mean_reward)
        return True

    def state_dict(self) -> Dict[str, float]:
        return {"value": self.value, "initialized": self.initialized, "decay": self.decay}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.value = float(state["value"])
        self.initialized = bool(state["initialized"])


def policy_gradient_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``-sum_i A_i log p_i``: its gradient is the REINFORCE estimate; advantages carry no gradient."""
    return -(advantages.detach().to(log_probs.dtype) * log_probs).sum()
