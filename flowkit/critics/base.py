"""The one interface every trainable critic implements."""

from __future__ import annotations

import abc

from torch import Tensor

from flowkit.critics.training import Batches, CriticTrainingState
from flowkit.nn import MLP
from flowkit.potential import Potential
from flowkit.validation import check_particles

__all__ = ["Critic", "check_network_input"]


def check_network_input(net: object, z: object, name: str = "z") -> None:
    """Points a critic network can read: a floating tensor ``(B, *event)`` whose events fit
    the network's input (checked for :class:`flowkit.nn.MLP`); metadata only."""
    check_particles(z, name, finite=False)
    if isinstance(net, MLP):
        net.check_input(z, name)


class Critic(CriticTrainingState, abc.ABC):
    r"""A critic trained with Adam and warm-started across fits (Nitanda & Suzuki 2018
    [NS18], Algorithm 1, inner loop: :math:`\tau \leftarrow \tau_k`, then :math:`T_0` steps).

    Every critic has the same methods and the same names for the same things:

    * :meth:`fit` ``(particles, data, steps=None)``: train ``steps`` steps (default
      ``self.steps``) from the current state, return a frozen :class:`Potential` snapshot;
    * :meth:`snapshot` ``(particles=None, data=None)``: that frozen potential, now;
    * ``penalty`` (the kind of gradient penalty, a string of
      :data:`flowkit.critics.penalties.PENALTIES`) and ``penalty_weight`` (its
      :math:`\lambda`), ``lr``, ``betas``, ``batch_size``, ``steps``, ``seed``;
    * :meth:`train`, :meth:`state_dict`, :meth:`load_state_dict`, ``total_steps``,
      ``n_fits``, ``last_losses``.

    See Also
    --------
    flowkit.critics.WGANGPCritic
        The network critic of Algorithm 1 (WGAN-GP).
    flowkit.critics.MMDCritic
        A gradient-regularised MMD critic.
    """

    def fit(self, particles: Batches, data: Tensor, steps: int | None = None) -> Potential:
        r"""Train ``steps`` Adam steps (default ``self.steps``) and return the snapshot.

        Parameters
        ----------
        particles : Tensor or callable
            Generated samples. A tensor ``(N, *event)`` is a pool: each step draws ``b``
            of them i.i.d. with replacement (the empirical measure of the pool). A callable
            ``k0 -> (b', *event)`` is asked for the batch of step ``k0`` (fresh samples,
            as in Algorithm 1 proper).
        data : Tensor
            Data ``(M, *event)``; each step draws ``b`` i.i.d. with replacement.
        steps : int, optional
            :math:`T_0` for this call.
        """
        check_particles(data, "data")
        self.check_data(data)
        self.train(particles, data, steps)
        self.n_fits += 1
        return self.snapshot(particles.detach() if isinstance(particles, Tensor) else None,
                             data)

    @abc.abstractmethod
    def snapshot(self, particles: Tensor | None = None, data: Tensor | None = None
                 ) -> Potential:
        """A frozen copy of the current critic as a potential :math:`\\psi`.

        ``particles`` and ``data`` are what a critic whose potential depends on the samples
        (the MMD witness) evaluates against; others ignore them.
        """

    def check_data(self, data: Tensor) -> None:
        """Raise ``ValueError`` naming ``data`` if the default network cannot read it."""
        module = self._trained()
        if isinstance(module, MLP):
            module.check_input(data, "data")
