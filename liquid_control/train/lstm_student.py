"""The baseline student: an LSTM with as many neurons as the LTC, distilled the same way.

It sees the same normalised observation as the LTC plus the step's elapsed time (minus 1, so the
nominal step is 0), since an LSTM has no notion of time of its own; a linear readout maps the
hidden units to the network-unit actions. Its state is ``cat(h, c)``, (B, 2 * units).
"""

from __future__ import annotations

import torch
from torch import nn


class LSTMStudent(nn.Module):
    """LSTM(units) + linear readout, with the LTC module's ``forward``/``step`` signature."""

    def __init__(self, input_size: int, units: int, output_size: int) -> None:
        super().__init__()
        self.units = units
        self.lstm = nn.LSTM(input_size + 1, units, batch_first=True)
        self.readout = nn.Linear(units, output_size)

    @property
    def state_size(self) -> int:
        return 2 * self.units

    @property
    def motor_size(self) -> int:
        return self.readout.out_features

    def _split(self, h: torch.Tensor | None):
        if h is None:
            return None
        return h[:, : self.units].unsqueeze(0).contiguous(), h[:, self.units :].unsqueeze(
            0
        ).contiguous()

    def forward(
        self,
        x: torch.Tensor,
        h0: torch.Tensor | None = None,
        elapsed: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, S), h0 (B, 2 units) or None, elapsed (B, T) or scalar or None -> y (B, T, M), h."""
        B, T, _ = x.shape
        if elapsed is None:
            e = x.new_zeros(B, T, 1)
        else:
            e = (torch.as_tensor(elapsed, dtype=x.dtype).expand(B, T) - 1.0).unsqueeze(-1)
        out, (h, c) = self.lstm(torch.cat([x, e], -1), self._split(h0))
        return self.readout(out), torch.cat([h[0], c[0]], -1)

    def step(
        self,
        x: torch.Tensor,
        h: torch.Tensor | None = None,
        elapsed: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S), h (B, 2 units) or None, elapsed (B,) or scalar -> y (B, M), h."""
        e = (
            None
            if elapsed is None
            else torch.as_tensor(elapsed, dtype=x.dtype).expand(x.shape[0]).unsqueeze(1)
        )
        y, h = self.forward(x.unsqueeze(1), h, e)
        return y[:, 0], h

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
