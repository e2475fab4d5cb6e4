"""Smooth two-player games ``min_x max_y U(x, y)`` on flat torch tensors.

A game is given by two losses: player ``x`` minimizes ``loss_x(x, y)`` and player ``y``
minimizes ``loss_y(x, y)``; a zero-sum game has ``loss_x = U`` and ``loss_y = -U``. Its
*vector field* (Liang & Stokes 2019 [LS19]) is

    F(z) = (grad_x loss_x(x, y), grad_y loss_y(x, y)),   z = (x, y),

which for a zero-sum game is ``(grad_x U, -grad_y U)``. Every dynamics in
:mod:`flowkit.games.dynamics` is written in terms of ``F`` (and, for consensus
optimization, of its Jacobian), so a game only has to supply ``F``. The Jacobian comes from
:mod:`torch.func`, which keeps everything composable: the rate predictions differentiate
the dynamics' update maps, and those differentiate ``F``.

The joint state is the concatenation ``z = (x, y)`` of two 1-D tensors of sizes ``dim_x``
and ``dim_y``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Game", "ZeroSumGame", "Bilinear", "Quadratic", "ProductSaddle", "GANGame"]


def _as_matrix(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (a matrix), got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


class Game(abc.ABC):
    """A smooth two-player game in which player ``x`` minimizes ``loss_x`` and player ``y``
    minimizes ``loss_y``.

    Parameters
    ----------
    dim_x, dim_y : int
        Number of scalar parameters of each player.
    dtype, device
        Where the game's tensors live; points passed in must match.

    Notes
    -----
    The vector field is ``F(z) = (grad_x loss_x, grad_y loss_y)`` ([LS19]). A point
    ``z*`` with ``F(z*) = 0`` is a stationary point; near it ``F(z) ~ J (z - z*)`` with
    ``J = jacobian(z*)``, which is what :func:`flowkit.games.predicted_rate` linearizes.
    """

    def __init__(self, dim_x: int, dim_y: int, dtype: torch.dtype, device: torch.device):
        for name, dim in (("dim_x", dim_x), ("dim_y", dim_y)):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"{name} must be a positive int, got {dim!r}")
        self.dim_x = dim_x
        self.dim_y = dim_y
        self.dtype = dtype
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        """Size of the joint state ``z = (x, y)``."""
        return self.dim_x + self.dim_y

    @property
    def equilibrium(self) -> Tensor | None:
        """A known stationary point ``z*`` (``F(z*) = 0``), or ``None`` when unknown."""
        return None

    @abc.abstractmethod
    def loss_x(self, x: Tensor, y: Tensor) -> Tensor:
        """Scalar loss minimized by player ``x``."""

    @abc.abstractmethod
    def loss_y(self, x: Tensor, y: Tensor) -> Tensor:
        """Scalar loss minimized by player ``y``."""

    def field_x(self, x: Tensor, y: Tensor) -> Tensor:
        """``grad_x loss_x(x, y)``, the first block of ``F``."""
        return torch.func.grad(self.loss_x, argnums=0)(x, y)

    def field_y(self, x: Tensor, y: Tensor) -> Tensor:
        """``grad_y loss_y(x, y)``, the second block of ``F``."""
        return torch.func.grad(self.loss_y, argnums=1)(x, y)

    def field(self, z: Tensor) -> Tensor:
        """The game vector field ``F(z) = (grad_x loss_x, grad_y loss_y)``."""
        x, y = self.split(z)
        return torch.cat([self.field_x(x, y), self.field_y(x, y)])

    def jacobian(self, z: Tensor) -> Tensor:
        """``dF/dz`` at ``z``, a ``(dim, dim)`` matrix (:func:`torch.func.jacrev`)."""
        return torch.func.jacrev(self.field)(self.check_point(z))

    def hamiltonian_grad(self, z: Tensor) -> Tensor:
        """``grad H(z) = J(z)^T F(z)`` for ``H = 1/2 ||F||^2``, the consensus term of
        Mescheder et al. (2017) ([LS19]); one vector-Jacobian product, no full
        Jacobian."""
        f, vjp = torch.func.vjp(self.field, z)
        return vjp(f)[0]

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The players' blocks ``(x, y)`` of a joint state."""
        return z[: self.dim_x], z[self.dim_x :]

    def join(self, x: Tensor, y: Tensor) -> Tensor:
        """The joint state ``z = (x, y)``."""
        return torch.cat([x, y])

    def check_point(self, z: Tensor | Sequence[float], name: str = "z") -> Tensor:
        """Validate a joint state: a 1-D tensor of size ``dim`` with the game's dtype.

        Sequences of numbers are converted to the game's dtype and device; a tensor of
        another dtype or device is refused rather than silently moved.
        """
        if not isinstance(z, Tensor):
            z = torch.as_tensor(z, dtype=self.dtype, device=self.device)
        if z.dim() != 1 or z.numel() != self.dim:
            raise ValueError(
                f"{name} must be a 1-D tensor of size dim_x + dim_y = {self.dim_x} + "
                f"{self.dim_y} = {self.dim}, got shape {tuple(z.shape)}"
            )
        if z.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {z.dtype} but the game uses {self.dtype}")
        if z.device != self.device:
            raise ValueError(f"{name} is on {z.device} but the game lives on {self.device}")
        return z


class ZeroSumGame(Game):
    """A zero-sum game ``min_x max_y U(x, y)``: ``loss_x = U`` and ``loss_y = -U``, so
    ``F(z) = (grad_x U, -grad_y U)`` (Liang & Stokes 2019, sec. 2)."""

    @abc.abstractmethod
    def value(self, x: Tensor, y: Tensor) -> Tensor:
        """The payoff ``U(x, y)``: minimized by ``x``, maximized by ``y``."""

    def loss_x(self, x: Tensor, y: Tensor) -> Tensor:
        return self.value(x, y)

    def loss_y(self, x: Tensor, y: Tensor) -> Tensor:
        return -self.value(x, y)


class Quadratic(ZeroSumGame):
    """``U(x, y) = 1/2 x^T A x + x^T C y - 1/2 y^T B y``.

    The local model of any smooth game at a stationary point ([LS19]): its
    Jacobian is ``H = [[A, C], [-C^T, B]]``. The equilibrium ``z* = 0`` is *stable* when
    ``A`` and ``B`` are positive definite; the off-diagonal block ``C`` is the interaction
    term whose size Liang & Stokes show slows simultaneous gradient ascent down.

    Parameters
    ----------
    A : Tensor, shape (m, m)
        Symmetric curvature of player ``x``.
    C : Tensor, shape (m, n)
        Interaction matrix.
    B : Tensor, shape (n, n)
        Symmetric curvature of player ``y`` (entering ``U`` with a minus sign).
    """

    def __init__(self, A: Tensor, C: Tensor, B: Tensor):
        A, C, B = _as_matrix(A, "A"), _as_matrix(C, "C"), _as_matrix(B, "B")
        m, n = C.shape
        if A.shape != (m, m):
            raise ValueError(
                f"A must be ({m}, {m}) to match C of shape ({m}, {n}) (player x has {m} "
                f"parameters), got shape {tuple(A.shape)}"
            )
        if B.shape != (n, n):
            raise ValueError(
                f"B must be ({n}, {n}) to match C of shape ({m}, {n}) (player y has {n} "
                f"parameters), got shape {tuple(B.shape)}"
            )
        for name, M in (("A", A), ("B", B)):
            if M.dtype != C.dtype or M.device != C.device:
                raise TypeError(f"{name} and C must share dtype and device")
            if not torch.allclose(M, M.mT):
                raise ValueError(f"{name} must be symmetric (it is a Hessian block)")
        super().__init__(m, n, C.dtype, C.device)
        self.A, self.C, self.B = A, C, B
        # F(z) = H z exactly; H is also the Jacobian everywhere.
        self.matrix = torch.cat([torch.cat([A, C], 1), torch.cat([-C.mT, B], 1)])

    @property
    def equilibrium(self) -> Tensor:
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * x @ (self.A @ x) + x @ (self.C @ y) - 0.5 * y @ (self.B @ y)

    # Closed forms: exact, and several times cheaper than autograd in long runs.
    def field_x(self, x: Tensor, y: Tensor) -> Tensor:
        return self.A @ x + self.C @ y

    def field_y(self, x: Tensor, y: Tensor) -> Tensor:
        return self.B @ y - self.C.mT @ x

    def field(self, z: Tensor) -> Tensor:
        return self.matrix @ z

    def jacobian(self, z: Tensor) -> Tensor:
        self.check_point(z)
        return self.matrix

    def hamiltonian_grad(self, z: Tensor) -> Tensor:
        H = self.matrix
        return H.mT @ (H @ z)


class Bilinear(Quadratic):
    """``U(x, y) = x^T C y``: the quadratic game with ``A = B = 0``.

    The "unstable" case of Liang & Stokes (2019): simultaneous gradient ascent diverges for
    every step size, while OMD, CO, PM, IU and extragradient converge at rates set by the
    singular values of ``C`` (closed form, docs/games.md).

    Parameters
    ----------
    C : Tensor, shape (m, n)
        Interaction matrix; ``z* = 0`` is the unique equilibrium when ``C`` is square and
        invertible.
    """

    def __init__(self, C: Tensor):
        C = _as_matrix(C, "C")
        m, n = C.shape
        super().__init__(C.new_zeros(m, m), C, C.new_zeros(n, n))

    @property
    def singular_values(self) -> Tensor:
        """Singular values of ``C``, padded with zeros to ``max(m, n)``: a non-square ``C``
        leaves directions of the larger player that no dynamics can move (factor 1)."""
        s = torch.linalg.svdvals(self.C)
        pad = max(self.C.shape) - s.numel()
        return torch.cat([s, s.new_zeros(pad)])

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        return x @ (self.C @ y)

    def field_x(self, x: Tensor, y: Tensor) -> Tensor:
        return self.C @ y

    def field_y(self, x: Tensor, y: Tensor) -> Tensor:
        return -(self.C.mT @ x)


class ProductSaddle(ZeroSumGame):
    """``U(x, y) = (a + x^2)(b - y^2)`` for scalars ``x, y``; with ``a = 1, b = 100`` it is
    the toy game of Naganuma & Iiduka's code ([NI23-code]).

    ``F = (2x (b - y^2), 2y (a + x^2))`` vanishes at ``(0, 0)``, where the Jacobian is
    ``diag(2b, 2a)``: a stable equilibrium with no interaction and very different
    curvatures for the two players (200 against 2 by default).
    """

    def __init__(self, a: float = 1.0, b: float = 100.0, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu"):
        for name, v in (("a", a), ("b", b)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite real number, got {v!r}")
        super().__init__(1, 1, dtype, torch.device(device))
        self.a, self.b = float(a), float(b)

    @property
    def equilibrium(self) -> Tensor:
        return torch.zeros(2, dtype=self.dtype, device=self.device)

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        return ((self.a + x**2) * (self.b - y**2)).sum()


def _log_sigmoid_value(real: Tensor, fake: Tensor) -> Tensor:
    return nn.functional.logsigmoid(real).mean() + nn.functional.logsigmoid(-fake).mean()


_GAN_VALUES = ("original", "wgan", "non-saturating")
_Entry = tuple[str, torch.Size, int]  # (parameter name, shape, number of entries)


class GANGame(Game):
    """A GAN as a two-player game on the flattened parameters of its two networks.

    Player ``x`` is the generator's parameter vector, player ``y`` the discriminator's.
    With ``D`` the discriminator's logit and ``f`` a fixed latent batch, the payoff is
    ``U = E_data[phi(D(x))] + E_f[phi(-D(G(f)))]`` (Liang & Stokes 2019, sec. 1) with

    - ``"original"``: ``phi = log sigmoid`` (Goodfellow et al. 2014), zero-sum;
    - ``"wgan"``: ``phi(t) = t``, i.e. ``U = E D(data) - E D(G(f))``, zero-sum;
    - ``"non-saturating"``: the discriminator maximizes the original ``U`` while the
      generator minimizes ``-E_f[log sigmoid(D(G(f)))]``, a general-sum game.

    The latent batch and the data are fixed, so the game is deterministic and smooth and
    its Jacobian is defined; draw new batches by building a new game.

    Parameters
    ----------
    generator, discriminator : nn.Module
        ``generator(latent)`` must have the data's shape; ``discriminator(points)`` returns
        one logit per point, shape ``(N,)`` or ``(N, 1)``. Modules whose forward pass
        mutates buffers (batch norm in training mode) are not supported by
        :mod:`torch.func`.
    data : Tensor, shape ``(M, *event)``
        Real samples.
    value : {"original", "wgan", "non-saturating"}
    latent : Tensor, shape ``(K, *latent_shape)``
        The fixed latent batch fed to the generator (keyword only).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, data: Tensor,
                 value: str = "original", *, latent: Tensor):
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
        if not isinstance(discriminator, nn.Module):
            raise TypeError(
                f"discriminator must be a torch.nn.Module, got {type(discriminator).__name__}"
            )
        if value not in _GAN_VALUES:
            raise ValueError(f"value must be one of {_GAN_VALUES}, got {value!r}")
        for name, t in (("data", data), ("latent", latent)):
            if not isinstance(t, Tensor) or t.dim() < 2 or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor of shape (N, ...)")
        self.generator, self.discriminator = generator, discriminator
        self.data, self.latent, self.value_name = data, latent, value
        self._g_spec = self._spec(generator, "generator", data.dtype)
        self._d_spec = self._spec(discriminator, "discriminator", data.dtype)
        super().__init__(sum(s[2] for s in self._g_spec), sum(s[2] for s in self._d_spec),
                         data.dtype, data.device)
        with torch.no_grad():
            fake = generator(latent)
            logits = discriminator(data)
        if fake.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"the players' shapes do not match: generator(latent) has event shape "
                f"{tuple(fake.shape[1:])} but data has event shape {tuple(data.shape[1:])}"
            )
        if logits.shape not in ((data.shape[0],), (data.shape[0], 1)):
            raise ValueError(
                f"discriminator must return one logit per point, shape (N,) or (N, 1); "
                f"got {tuple(logits.shape)} for N = {data.shape[0]}"
            )

    @staticmethod
    def _spec(module: nn.Module, name: str, dtype: torch.dtype) -> list[_Entry]:
        spec = []
        for pname, p in module.named_parameters():
            if p.dtype != dtype:
                raise TypeError(f"{name} parameter {pname!r} has dtype {p.dtype}; data has {dtype}")
            spec.append((pname, p.shape, p.numel()))
        if not spec:
            raise ValueError(f"{name} has no parameters: a player needs something to move")
        return spec

    @staticmethod
    def _unflatten(flat: Tensor, spec: list[_Entry]) -> dict[str, Tensor]:
        out, offset = {}, 0
        for pname, shape, numel in spec:
            out[pname] = flat[offset : offset + numel].view(shape)
            offset += numel
        return out

    def _logits(self, y: Tensor, points: Tensor) -> Tensor:
        params = self._unflatten(y, self._d_spec)
        return torch.func.functional_call(self.discriminator, params, (points,)).reshape(-1)

    def _fake(self, x: Tensor) -> Tensor:
        params = self._unflatten(x, self._g_spec)
        return torch.func.functional_call(self.generator, params, (self.latent,))

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        """The payoff ``U(x, y)`` (the original GAN's for ``"non-saturating"``)."""
        real, fake = self._logits(y, self.data), self._logits(y, self._fake(x))
        if self.value_name == "wgan":
            return real.mean() - fake.mean()
        return _log_sigmoid_value(real, fake)

    def loss_x(self, x: Tensor, y: Tensor) -> Tensor:
        if self.value_name == "non-saturating":
            return -nn.functional.logsigmoid(self._logits(y, self._fake(x))).mean()
        return self.value(x, y)

    def loss_y(self, x: Tensor, y: Tensor) -> Tensor:
        return -self.value(x, y)

    def initial_point(self) -> Tensor:
        """The modules' current parameters as a joint state ``z = (x, y)`` (a copy)."""
        flat = [p.detach().reshape(-1) for p in self.generator.parameters()]
        flat += [p.detach().reshape(-1) for p in self.discriminator.parameters()]
        return torch.cat(flat).clone()

    def load_point(self, z: Tensor) -> None:
        """Copy a joint state into the modules' parameters."""
        x, y = self.split(self.check_point(z))
        with torch.no_grad():
            for module, flat, spec in ((self.generator, x, self._g_spec),
                                       (self.discriminator, y, self._d_spec)):
                values = self._unflatten(flat, spec)
                for pname, p in module.named_parameters():
                    p.copy_(values[pname])

