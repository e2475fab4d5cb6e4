r"""A DCGAN-style critic for 8 x 8 images, without batch normalisation.

Two stride-2 convolutions (``8 -> 4 -> 2``) with leaky ReLU and a linear read-out. No batch
norm: the WGAN-GP penalty is per sample, and a critic evaluated on the concatenated batch
``[fake, real, penalty points]`` must not mix them (Gulrajani et al. 2017, sec. 4).
With ``out_features`` it is a feature map (for :class:`flowkit.critics.MMDCritic`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.validation import check_int, check_seed

__all__ = ["DCGANCritic"]


class DCGANCritic(nn.Module):
    """Images ``(B, 1, 8, 8)`` to scores ``(B,)`` (or features ``(B, out_features)``).

    Parameters
    ----------
    width : int
        Channels after the first convolution (``2 * width`` after the second).
    out_features : int, optional
        ``None``: one score per image (a WGAN-GP critic); otherwise a feature vector.
    seed : int
        Initial weights (torch's default initialisation, drawn under this seed).
    """

    def __init__(self, width: int = 32, out_features: int | None = None, *, seed: int = 0):
        super().__init__()
        self.width = check_int(width, "width")
        if out_features is not None:
            check_int(out_features, "out_features")
        check_seed(seed)
        self.scalar = out_features is None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),
                nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(),
                nn.Linear(2 * width * 4, out_features or 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x.reshape(len(x), 1, 8, 8))
        return out.squeeze(1) if self.scalar else out
