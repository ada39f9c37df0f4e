"""Dropout over whole sequences, shared by every stack and by CharRNN itself."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SequenceDropout(nn.Module):
    """Dropout on (B, T, C) activations.

    "locked" draws one mask per sequence and feature and keeps it for all T steps
    (variational dropout, Gal & Ghahramani 2016; AWD-LSTM's LockedDropout), so a
    dropped unit stays dropped through the recurrence; "per-step" is plain dropout.
    """

    def __init__(self, p: float, mask: str = "locked") -> None:
        super().__init__()
        self.p, self.locked = p, mask == "locked"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.locked:
            return F.dropout(x, self.p, True)
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep).div_(keep)
        return x * mask
