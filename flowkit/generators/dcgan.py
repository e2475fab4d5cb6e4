r"""A DCGAN-style generator sized for 8 x 8 images (Radford et al. 2016 [RadfordEtAl16]).

A linear layer to a ``2w x 2 x 2`` map, two stride-2 transposed convolutions (``4 x 4``,
then ``8 x 8``), batch normalisation and ReLU after every layer but the last, and a tanh
output. :meth:`DCGANGenerator.body` is everything below the tanh: Algorithm 1's layers are
inserted there (Nitanda & Suzuki 2018 [NS18], sec. 3.3 and 7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.validation import check_int, check_seed

__all__ = ["DCGANGenerator"]


class DCGANGenerator(nn.Module):
    """Latents ``(B, latent_dim)`` to images ``(B, 1, 8, 8)`` in (-1, 1).

    Parameters
    ----------
    latent_dim : int
        Size of the latent vector (standard normal).
    width : int
        Channels of the ``4 x 4`` map (``2 * width`` at ``2 x 2``).
    seed : int
        Initial weights (torch's default initialisation, drawn under this seed).
    """

    output_map = staticmethod(torch.tanh)

    def __init__(self, latent_dim: int = 32, width: int = 64, *, seed: int = 0):
        super().__init__()
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.width = check_int(width, "width")
        check_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.project = nn.Sequential(nn.Linear(latent_dim, 2 * width * 4),
                                         nn.BatchNorm1d(2 * width * 4), nn.ReLU())
            self.up = nn.Sequential(
                nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.ConvTranspose2d(width, 1, 4, 2, 1))

    def body(self, z: Tensor) -> Tensor:
        """Pre-tanh images ``(B, 1, 8, 8)``: the generator without its output map."""
        return self.up(self.project(z).reshape(len(z), 2 * self.width, 2, 2))

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.body(z))
