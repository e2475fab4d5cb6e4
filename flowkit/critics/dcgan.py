r"""A DCGAN-style critic for 8 x 8 images, without batch normalisation.

Two stride-2 convolutions (``8 -> 4 -> 2``) with leaky ReLU and a linear read-out. No batch
norm: the WGAN-GP penalty is per sample, and a critic evaluated on the concatenated batch
``[fake, real, penalty points]`` must not mix them (Gulrajani et al. 2017 [GulrajaniEtAl17],
sec. 4).
With ``out_features`` it is a feature map (for :class:`flowkit.critics.MMDCritic`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowkit.validation import check_int, check_seed

__all__ = ["DCGANCritic"]

_SLOPE = 0.2


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
                nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(_SLOPE),
                nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(_SLOPE), nn.Flatten(),
                nn.Linear(2 * width * 4, out_features or 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x.reshape(len(x), 1, 8, 8))
        return out.squeeze(1) if self.scalar else out

    def values_and_input_gradients(self, x: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        r"""``f(x)`` and :math:`\nabla f` at ``points``, the chain rule written out.

        With :math:`z_1 = C_1 p`, :math:`z_2 = C_2\,\sigma(z_1)`, :math:`f = w^\top
        \sigma(z_2) + c` (:math:`C_i` the convolutions, :math:`\sigma` the leaky ReLU),
        :math:`\nabla_p f = C_1^\top D_1 C_2^\top D_2 w`, :math:`D_i = \operatorname{diag}
        \sigma'(z_i)`, where the adjoint :math:`C_i^\top` of a stride-2 convolution is the
        transposed convolution with the same weights. An ordinary differentiable expression
        of the parameters: the WGAN-GP penalty back-propagates through it in one first-order
        pass instead of autograd's double backward (:class:`flowkit.critics.WGANGPCritic`
        uses it when present). Scalar critics only.
        """
        if not self.scalar:
            raise ValueError("values_and_input_gradients needs a scalar critic (out_features=None)")
        conv1, _, conv2, _, _, linear = self.body
        values = self(x)
        z1 = conv1(points.reshape(len(points), 1, 8, 8))
        z2 = conv2(F.leaky_relu(z1, _SLOPE))
        grad = linear.weight.reshape(1, *z2.shape[1:]) * _leaky_slope(z2)
        grad = F.conv_transpose2d(grad, conv2.weight, stride=2, padding=1) * _leaky_slope(z1)
        grad = F.conv_transpose2d(grad, conv1.weight, stride=2, padding=1)
        return values, grad.reshape(points.shape)


def _leaky_slope(z: Tensor) -> Tensor:
    return _SLOPE + (1.0 - _SLOPE) * (z > 0).to(z.dtype)
