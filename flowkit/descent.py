r"""The generic engine of Algorithm 3: functional gradient descent on particles.

Nitanda & Suzuki (2018), Algorithm 3:

.. math::
    \phi_{k+1} = \phi_k - \eta_k \nabla_\phi \mathcal L(\phi_k)
               = (\mathrm{id} - \eta_k \nabla\psi_k) \circ \phi_k,
    \qquad \psi_k = \frac{\delta\mathcal L}{\delta\mu}(\phi_k \sharp \mu_g),

i.e. every step stacks one gradient layer. On particles ``x_i = phi_k(z_i)`` the step is
``x_i <- x_i - eta_k grad psi_k(x_i)``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowkit import checkpoints as ckpt
from flowkit import distributed
from flowkit.checkpoints import CheckpointError
from flowkit.layers import GradientLayer, GradientLayerStack, VelocityLayer
from flowkit.monitors import Monitor
from flowkit.objective import (
    FunctionalObjective,
    accepts_weights,
    call_weighted,
    gives_potential,
)
from flowkit.potential import Potential
from flowkit.validation import (
    check_choice,
    check_int,
    check_nonnegative,
    check_number,
    check_step_size,
    check_weights,
    rng_state,
    set_rng_state,
)

__all__ = ["FunctionalGradientDescent", "FlowResult", "FlowState", "FlowDivergedError",
           "CheckpointError"]


class FlowDivergedError(RuntimeError):
    """The flow diverged at step ``step``; ``rule`` names the test that fired.

    ``rule`` is ``"non-finite"`` (a particle became NaN or infinite) or ``"growth"`` (the
    particles' scale ``max |x|`` grew past ``max_growth`` times the reference scale).
    """

    def __init__(self, step: int, message: str, rule: str = "non-finite"):
        super().__init__(message)
        self.step = step
        self.rule = rule


@dataclass
class FlowState:
    """What monitors and callbacks see at a step.

    ``particles`` are the particles *at* step ``step`` (before its update), ``grad`` the
    functional gradient (the velocity) there (``None`` at the final step, where none was
    needed), ``potential`` the first variation (``None`` for velocity-field flows),
    ``elapsed`` the seconds since the run started, ``weights`` the particles' weights
    (``None``: uniform).
    """

    step: int
    particles: Tensor
    grad: Tensor | None
    potential: Potential | None
    objective: FunctionalObjective
    step_size: float | None
    elapsed: float
    weights: Tensor | None = None


@dataclass(repr=False)
class FlowResult:
    r"""Outcome of a run of :class:`FunctionalGradientDescent`.

    Attributes
    ----------
    particles : Tensor
        Final particles ``phi_T(z)``.
    history : dict[str, list]
        Monitor values at the monitored steps; ``history["step"]`` lists those steps.
    trace : dict[str, list[float]]
        Per-step quantities: ``grad_norm2`` (mean of ``||grad psi_k(x_i)||^2``, the squared
        :math:`L^2(\mu)` norm of the functional gradient), ``step_size``, and ``value``
        (the objective at the particles of each step) when ``record_value=True``.
    layers : GradientLayerStack or None
        The stack ``G_T o ... o G_1`` (Algorithm 2); ``None`` if ``keep_layers=False``.
    n_steps : int
        Steps taken.
    stop_reason : str
        ``"n_steps"`` or ``"tolerance"``, or the step rule's reason when it stopped the run
        (``"line_search"`` for :class:`~flowkit.flows.optimizers.Armijo`, ``"converged"``
        for :class:`~flowkit.flows.optimizers.LBFGS`).
    wall_time : float
        Seconds, including monitors.
    weights : Tensor or None
        Final weights of the particles (``None``: uniform and never updated).
    """

    particles: Tensor
    history: dict[str, list[Any]]
    trace: dict[str, list[float]]
    layers: GradientLayerStack | None
    n_steps: int
    stop_reason: str
    wall_time: float
    weights: Tensor | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the metrics (no tensors)."""
        return {"n_steps": self.n_steps, "stop_reason": self.stop_reason,
                "wall_time": self.wall_time, "history": self.history, "trace": self.trace}

    def __repr__(self) -> str:
        # a summary: the particles alone would print thousands of characters
        x = self.particles
        layers = "None" if self.layers is None else f"<{len(self.layers)} layers>"
        return (f"FlowResult(n_steps={self.n_steps}, stop_reason={self.stop_reason!r}, "
                f"particles=<Tensor {tuple(x.shape)} {x.dtype} on {x.device}>, "
                f"layers={layers}, history={sorted(self.history)}, "
                f"trace={sorted(self.trace)}, wall_time={self.wall_time:.3g}s)")




class FunctionalGradientDescent:
    r"""Algorithm 3 of Nitanda & Suzuki (2018) on any :class:`FunctionalObjective`.

    Parameters
    ----------
    objective : FunctionalObjective
        Gives the first variation ``psi_k`` at each step.
    step_size : float or callable
        ``eta > 0``, or a schedule ``k -> eta_k`` (``k`` counts from 0).
    monitors : sequence of monitors
        Callables ``state -> {name: value}`` (see :mod:`flowkit.monitors`), evaluated at
        step 0, every ``monitor_every`` steps, and at the final step.
    monitor_every : int
        Monitoring period in steps.
    callbacks : sequence of callables
        Called as ``callback(state)`` after every step with the *new* particles.
    tol : float, optional
        Stop once the squared functional-gradient norm ``mean ||grad psi||^2 <= tol``
        (one device synchronisation per step when set).
    keep_layers : bool
        Keep every layer in a :class:`GradientLayerStack` (memory O(T * potential)).
    progress : bool
        Show a tqdm progress bar.
    check_every : int, optional
        Steps between divergence checks; the error still names the first bad step.
        Default 1 on CPU, 16 on accelerators (each check synchronises). Particles are
        always checked before they leave the step loop: before every monitor, callback
        and checkpoint, so none of them ever sees a diverged state.
    record_value : bool
        Record the objective's value at the particles of every step in
        ``result.trace["value"]`` (one ``objective.value`` per step, read back in batches).
    max_growth : float or None
        The divergence rule for flows that stay finite. With ``R`` the reference scale,
        the larger of ``max |x0|`` and ``objective.reference_scale(x0)`` (the target's
        scale where the objective has one; 1 if both are 0), the run stops with
        :class:`FlowDivergedError` (``rule="growth"``) at the first step ``k`` with
        ``max |x_k| > max_growth * R``. ``None`` turns the rule off (non-finite particles
        always stop the run).
    on_growth : {"raise", "warn"}
        ``"warn"`` issues one ``RuntimeWarning`` instead of raising, for flows whose
        theory allows unbounded growth.
    noise_seed : int
        Seed of the per-layer noise seeds, for objectives with a ``temperature``
        (Langevin-type layers); the layers' seeds are drawn from it in order.
    step_rule : StepRule, optional
        How the step is taken beyond Algorithm 3's ``x - eta g``: a rule of
        :mod:`flowkit.flows.optimizers` (:class:`~flowkit.flows.optimizers.Armijo`
        backtracking, whose accepted step is the layer's ``eta``;
        :class:`~flowkit.flows.optimizers.Momentum`; :class:`~flowkit.flows.optimizers.LBFGS`).
        ``step_size`` must then be a constant (Armijo's first trial, the momentum step,
        L-BFGS's ``lr``); the rule's state is checkpointed. Rules that are not per-sample
        maps (momentum, L-BFGS) refuse ``keep_layers=True``; no rule takes a noisy
        (``temperature``) objective. Theorem 1's certificate
        (:func:`flowkit.theory.theorem1_certificate`) holds for the fixed step only, never
        for a run with a step rule.

    Examples
    --------
    >>> import torch, flowkit as fk
    >>> y = fk.datasets.eight_gaussians(200, seed=0)
    >>> flow = fk.FunctionalGradientDescent(fk.objectives.MMD(y), step_size=1.0,
    ...                                     progress=False)
    >>> result = flow.run(0.5 * torch.randn(200, 2), n_steps=10)
    >>> result.particles.shape, len(result.layers)
    (torch.Size([200, 2]), 10)
    """

    def __init__(self, objective: FunctionalObjective, step_size: float | Callable[[int], float],
                 *, monitors: Sequence[Monitor] = (), monitor_every: int = 10,
                 callbacks: Sequence[Callable[[FlowState], None]] = (), tol: float | None = None,
                 keep_layers: bool = True, progress: bool = True, check_every: int | None = None,
                 record_value: bool = False, max_growth: float | None = 1e3,
                 on_growth: str = "raise", noise_seed: int = 0, step_rule: Any = None):
        if not isinstance(objective, FunctionalObjective):
            raise TypeError(
                f"objective must be a flowkit.FunctionalObjective, got {type(objective).__name__}"
            )
        if not gives_potential(objective) and \
                type(objective).velocity is FunctionalObjective.velocity:
            raise TypeError(f"objective {type(objective).__name__} must override "
                            "first_variation(x) (a potential) or velocity(x) (a field)")
        self.noise_seed = check_int(noise_seed, "noise_seed", 0)
        self.objective = objective
        self.schedule = check_step_size(step_size)
        self.step_size = step_size
        self.monitor_every = check_int(monitor_every, "monitor_every")
        if tol is not None:
            check_nonnegative(tol, "tol")
        if check_every is not None:
            check_int(check_every, "check_every")
        if max_growth is not None:
            check_number(max_growth, "max_growth", minimum=1.0, strict_minimum=True)
        self.on_growth = check_choice(on_growth, "on_growth", ("raise", "warn"))
        self.monitors = list(monitors)
        self.callbacks = list(callbacks)
        self.tol = tol
        self.keep_layers = bool(keep_layers)
        self.progress = progress
        self.check_every = check_every
        self.record_value = bool(record_value)
        self.max_growth = max_growth
        self.step_rule = self._check_step_rule(step_rule)

    # ------------------------------------------------------------------ public API
    def run(self, x0: Tensor, n_steps: int, *, weights: Tensor | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
            overwrite_checkpoint: bool = False) -> FlowResult:
        """Run ``n_steps`` steps from particles ``x0`` (not modified).

        ``weights`` ``(N,)`` (non-negative, summing to 1) weight the particles,
        ``mu = sum_i w_i delta_{x_i}``; ``None`` is uniform. Non-uniform weights
        need an objective whose methods take ``weights`` (see
        :class:`~flowkit.objective.FunctionalObjective`); the objective's
        ``update_weights`` may move them at every step.

        With ``checkpoint`` set, the full state is written there every
        ``checkpoint_every`` steps and at the end; :meth:`resume` continues from it. The
        layers go to a sidecar directory ``<checkpoint>.layers/``, one append-only file
        per checkpoint holding the layers added since the previous one. An existing
        checkpoint file is never replaced unless ``overwrite_checkpoint``. The location,
        ``checkpoint_every`` and whether the objective's state and layers can be saved are
        all checked before the first step. In a run sharded over processes (see
        :mod:`flowkit.distributed`) ``checkpoint`` is a folder: one file per rank and a
        manifest, and the trace, monitors and divergence checks are global.
        """
        self.objective.validate(x0)
        n_steps = _check_n_steps(n_steps)
        w = self._initial_weights(x0, weights)
        writer = self._writer(checkpoint, checkpoint_every, overwrite_checkpoint)
        x0 = x0.detach().clone()
        noise = torch.Generator().manual_seed(self.noise_seed)
        state = {"step": 0, "n_steps": n_steps, "particles": x0, "weights": w,
                 "history": {"step": []}, "trace": self._new_trace(),
                 "layers": GradientLayerStack() if self.keep_layers else None,
                 "elapsed": 0.0, "stop_reason": None, "scale_ref": self._reference_scale(x0),
                 "noise_rng": noise.get_state(),
                 "config_start": ckpt.config_digest(self.objective) if writer else None}
        if self.step_rule is not None:
            self.step_rule.reset()
        self.objective.on_run_start(resumed=False)
        return self._loop(state, writer)

    def resume(self, path: str | os.PathLike, n_steps: int | None = None, *,
               checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
               overwrite_checkpoint: bool = False,
               trusted_classes: Sequence[Any] = ()) -> FlowResult:
        """Continue a run from its checkpoint, up to ``n_steps`` in total (default: as saved).

        The engine must be built with the same objective (class and configuration) and
        step size as the original run; any difference raises :class:`CheckpointError`
        naming it. On CPU the particles then match an uninterrupted run bit for bit.

        Parameters
        ----------
        path : str or Path
            The checkpoint to read. It is never written to unless it is also given as
            ``checkpoint`` with ``overwrite_checkpoint=True``.
        n_steps : int, optional
            Total steps (those already in the checkpoint included); fewer than the
            checkpoint holds is an error.
        checkpoint, checkpoint_every, overwrite_checkpoint
            Where the continuation writes its own checkpoints, as in :meth:`run`
            (default: nowhere).
        trusted_classes : sequence of classes or functions
            Your own classes the file may hold (e.g. a custom potential). The file is read
            with ``torch.load(weights_only=True)`` and only flowkit's own classes plus
            these are rebuilt: name a class here only if you trust the file.
        """
        path = self._seam.resume_file(path)
        blob = ckpt.read_main(path, trusted_classes)
        meta = blob["meta"]
        self._check_meta(meta, path)
        payload = ckpt.read_payload(blob, path, trusted_classes)
        state = payload["state"]
        self._seam.check_resumed(path, state["step"])
        if n_steps is not None:
            n_steps = _check_n_steps(n_steps)
            if n_steps < state["step"]:
                raise ValueError(
                    f"n_steps={n_steps} is fewer than the {state['step']} steps checkpoint "
                    f"{path} already holds; n_steps counts all steps, so pass at least "
                    f"{state['step']} (or use the checkpoint's particles directly)")
            state["n_steps"] = n_steps
        self._check_schedule(state["trace"]["step_size"], path)
        if ("value" in state["trace"]) != self.record_value:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was run with record_value={not self.record_value}; "
                f"build the engine with record_value={not self.record_value} to resume it")
        has_layers = blob["layers"] is not None
        if self.keep_layers and not has_layers:
            raise ckpt.CheckpointError(
                f"checkpoint {path} holds no layers (its run had keep_layers=False); build "
                "the engine with keep_layers=False to resume it")
        state["layers"] = (GradientLayerStack(ckpt.read_layers(path, blob, trusted_classes))
                           if self.keep_layers else None)
        fresh = ckpt.config_digest(self.objective)
        self.objective.load_state_dict(
            _unshare_layers(payload["objective"], state["layers"], path))
        # An attribute differs only if it differs both before the objective's state is
        # restored (against the original run's start) and after (against the checkpoint):
        # run state restored by load_state_dict (a step counter) and diagnostics it does
        # not restore (solver iteration counts) are not configuration.
        differences = _differences(meta["config"], ckpt.config_digest(self.objective),
                                   state.get("config_start") or meta["config"], fresh)
        if differences:
            raise ckpt.CheckpointError(
                f"checkpoint {path} belongs to a {meta['objective']} configured differently: "
                f"{differences}; build the objective as in the original run")
        self.objective.validate(state["particles"])
        segments = blob["layers"]["segments"] if has_layers and self.keep_layers else []
        writer = self._writer(checkpoint, checkpoint_every, overwrite_checkpoint,
                              segments=segments, same_as=path)
        if writer is not None and segments:
            ckpt.copy_segments(path, writer.path, segments)
        self._restore_step_rule(state.get("step_rule"), path)
        set_rng_state(payload["rng"], state["particles"].device)
        self.objective.on_run_start(resumed=True)
        return self._loop(state, writer)

    # ------------------------------------------------------------------ internals
    def _check_step_rule(self, rule: Any) -> Any:
        if rule is None:
            return None
        from flowkit.flows.optimizers import StepRule

        if not isinstance(rule, StepRule):
            raise TypeError(f"step_rule must be a flowkit.flows.optimizers.StepRule (Armijo, "
                            f"Momentum, LBFGS), got {type(rule).__name__}")
        name = type(rule).__name__
        if self.keep_layers and not rule.keeps_layers:
            raise ValueError(
                f"keep_layers=True cannot be used with step_rule={name}: its update is not a "
                f"per-sample map of the current particles ({rule.no_layers_reason}), so no "
                "layer stack replays it; pass keep_layers=False")
        if callable(self.step_size):
            raise ValueError(f"step_size must be a constant with step_rule={name} (the rule "
                             "chooses the steps), not a schedule")
        if rule.needs_value and type(self.objective).value is FunctionalObjective.value:
            raise TypeError(f"step_rule={name} needs the objective's value, and "
                            f"{type(self.objective).__name__} defines none")
        if self.objective.temperature is not None:
            raise ValueError(f"step_rule={name} cannot take a noisy objective (temperature "
                             "set): the rules assume a deterministic step")
        return rule

    def _restore_step_rule(self, saved: dict[str, Any] | None, path: Path) -> None:
        rule = self.step_rule
        then = None if saved is None else saved["rule"]
        now = None if rule is None else repr(rule)
        if then != now:
            raise ckpt.CheckpointError(f"checkpoint {path} was run with step_rule={then}, "
                                       f"this engine has step_rule={now}")
        if rule is not None:
            rule.reset()
            rule.load_state_dict(saved["state"])
    @property
    def _seam(self) -> Any:
        # the one place a run sharded over processes differs: flowkit.distributed's hooks
        return distributed.engine_seam(self.objective)

    def _updates_weights(self) -> bool:
        return type(self.objective).update_weights is not FunctionalObjective.update_weights

    def _initial_weights(self, x0: Tensor, weights: Tensor | None) -> Tensor | None:
        """The weights the loop carries: ``None`` while they are uniform and fixed."""
        n = x0.shape[0]
        if weights is not None:
            weights = check_weights(weights, n, "weights", like=x0).detach().clone()
            if not self._updates_weights() and bool((weights == weights[0]).all()):
                return None  # uniform: objectives without weights keep working
        elif self._updates_weights():
            weights = torch.full((n,), 1.0 / n, device=x0.device, dtype=x0.dtype)
        if weights is not None:
            method = (self.objective.first_variation if gives_potential(self.objective)
                      else self.objective.velocity)
            if not accepts_weights(method):
                call_weighted(method, x0, weights)  # raises the TypeError that explains it
        return weights

    def _new_trace(self) -> dict[str, list[float]]:
        trace: dict[str, list[float]] = {"grad_norm2": [], "step_size": []}
        if self.record_value:
            trace["value"] = []
        return trace

    def _reference_scale(self, x0: Tensor) -> float:
        ref = self.objective.reference_scale(x0)
        scale = max(float(x0.abs().amax()) if x0.numel() else 0.0, float(ref or 0.0))
        scale = float(self._seam.max(torch.tensor(scale, dtype=torch.float64)))
        return scale if scale > 0 else 1.0

    def _writer(self, checkpoint: Any, every: int, overwrite: bool,
                segments: Sequence[list[Any]] = (), same_as: Path | None = None
                ) -> _Checkpointer | None:
        every = check_int(every, "checkpoint_every")
        if checkpoint is None:
            return None
        path = self._seam.checkpoint_file(checkpoint)
        if self._seam.any(path.exists()) and not overwrite:
            hint = ("pass overwrite_checkpoint=True to continue writing to the file you "
                    "resume from" if same_as is not None and path.resolve() == same_as.resolve()
                    else "resume from it with flow.resume(...) or pass overwrite_checkpoint=True")
            raise FileExistsError(f"checkpoint {path} exists; {hint}")
        return _Checkpointer(self, path, every, list(segments))

    def _meta(self, x: Tensor) -> dict[str, Any]:
        import flowkit

        obj = self.objective
        if callable(self.step_size):
            step = {"kind": "schedule", "name": ckpt.describe(self.step_size, 0)}
        else:
            step = {"kind": "constant", "value": float(self.step_size)}
        return {"objective": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "config": ckpt.config_digest(obj), "step_size": step,
                "particles": {"shape": list(x.shape), "dtype": str(x.dtype)},
                "keep_layers": self.keep_layers, "flowkit": flowkit.__version__}

    def _check_meta(self, meta: dict[str, Any], path: Path) -> None:
        import flowkit

        obj = self.objective
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if meta["objective"] != name:
            raise ckpt.CheckpointError(f"checkpoint {path} belongs to objective "
                                       f"{meta['objective']}, but this engine runs {name}")
        saved = meta["step_size"]
        if callable(self.step_size) != (saved["kind"] == "schedule"):
            now = "a schedule" if callable(self.step_size) else f"{self.step_size}"
            then = saved.get("name") if saved["kind"] == "schedule" else saved["value"]
            raise ckpt.CheckpointError(f"checkpoint {path} was run with step_size {then}, "
                                       f"this engine has step_size {now}")
        if saved["kind"] == "constant" and saved["value"] != float(self.step_size):
            raise ckpt.CheckpointError(f"checkpoint {path} was run with step_size "
                                       f"{saved['value']}, this engine has {self.step_size}")
        if meta["flowkit"] != flowkit.__version__:
            warnings.warn(f"checkpoint {path} was written by flowkit {meta['flowkit']}, this "
                          f"is {flowkit.__version__}", RuntimeWarning, stacklevel=3)

    def _check_schedule(self, taken: list[float], path: Path) -> None:
        if not callable(self.step_size):
            return
        for k, eta in enumerate(taken):
            now = float(self.schedule(k))
            if now != eta:
                raise ckpt.CheckpointError(
                    f"checkpoint {path} took step_size {eta} at step {k}, this engine's "
                    f"schedule gives {now}; resume with the original schedule")

    def _loop(self, state: dict[str, Any], writer: _Checkpointer | None) -> FlowResult:
        from tqdm.auto import tqdm

        x: Tensor = state["particles"]
        w: Tensor | None = state.get("weights")
        history, trace, layers = state["history"], state["trace"], state["layers"]
        objective = self.objective
        potential_flow = gives_potential(objective)
        updates_weights = self._updates_weights()
        noise = torch.Generator()
        noise.set_state(state["noise_rng"])
        start, n_steps = state["step"], state["n_steps"]
        check_every = self.check_every or (1 if x.device.type == "cpu" else 16)
        guard = _Guard(self, state["scale_ref"])
        t0 = time.perf_counter() - state["elapsed"]
        pending: dict[str, list[Tensor]] = {name: [] for name in trace if name != "step_size"}
        seam = self._seam
        bar = tqdm(total=n_steps, initial=start, disable=not seam.progress(self.progress),
                   desc="flow", leave=False)

        def flush() -> None:
            guard.check()
            for name, scalars in pending.items():
                trace[name] += _to_floats(scalars)
                scalars.clear()

        k = start
        try:
            while k < n_steps:
                eta = float(self.schedule(k))
                if not eta > 0:
                    raise ValueError(f"step_size schedule gave eta={eta} at step {k}; need > 0")
                psi: Potential | None
                if potential_flow:
                    psi = call_weighted(objective.first_variation, x, w)
                    g = psi.grad(x)
                else:
                    psi, field = None, call_weighted(objective.velocity, x, w)
                    g = field(x)
                sq = g.pow(2).flatten(1).sum(1)  # the L2(mu) norm, with the particles' weights
                pending["grad_norm2"].append(seam.grad_norm2(sq, w))
                if self.record_value:
                    with torch.no_grad():
                        value = call_weighted(objective.value, x, w)
                        pending["value"].append(value.detach().reshape(()))
                if k % self.monitor_every == 0:
                    guard.check()
                    self._monitor(history, FlowState(k, x, g, psi, objective, eta,
                                                     time.perf_counter() - t0, w), bar)
                if self.tol is not None and float(pending["grad_norm2"][-1]) <= self.tol:
                    state["stop_reason"] = "tolerance"
                    break
                moved = None
                if self.step_rule is not None:
                    taken = self.step_rule.step(objective, x, w, g, eta)
                    if taken is None:
                        state["stop_reason"] = self.step_rule.stop_reason
                        break
                    moved, eta = taken
                noisy = {}
                if objective.temperature is not None:
                    seed = int(torch.randint(0, 2**62, (1,), generator=noise))
                    noisy = {"temperature": objective.temperature, "seed": seed}
                layer = (GradientLayer(psi, eta, **noisy) if psi is not None
                         else VelocityLayer(field, eta, **noisy))
                if writer is not None and not writer.probed:
                    writer.probe(layer if layers is not None else None)
                trace["step_size"].append(eta)  # only steps actually taken
                if moved is None:
                    moved = x - eta * g
                    xi = seam.noise(layer, x)
                    if xi is not None:
                        moved = moved + xi
                if updates_weights:
                    w = objective.update_weights(x, w, psi, eta)
                x = moved
                objective.after_step(layer)
                if layers is not None:
                    layers.append(layer)
                k += 1
                guard.record(k, x, w if updates_weights else None)
                if guard.pending >= check_every or k == n_steps:
                    guard.check()
                if self.callbacks:
                    guard.check()
                    for cb in self.callbacks:
                        cb(FlowState(k, x, None, None, objective, eta,
                                     time.perf_counter() - t0, w))
                bar.update(1)
                if writer is not None and (k % writer.every == 0 or k == n_steps):
                    flush()
                    state.update(step=k, particles=x, weights=w, noise_rng=noise.get_state(),
                                 elapsed=time.perf_counter() - t0)
                    if self.step_rule is not None:
                        state["step_rule"] = {"rule": repr(self.step_rule),
                                              "state": self.step_rule.state_dict()}
                    writer.save(state)
        finally:
            bar.close()
        flush()
        if not history["step"] or history["step"][-1] != k:
            self._monitor(history, FlowState(k, x, None, None, objective, None,
                                             time.perf_counter() - t0, w), None)
        return FlowResult(particles=x, history=history, trace=trace, layers=layers, n_steps=k,
                          stop_reason=state["stop_reason"] or "n_steps",
                          wall_time=time.perf_counter() - t0, weights=w)

    def _monitor(self, history: dict[str, list], st: FlowState, bar: Any) -> None:
        values: dict[str, Any] = {}
        for monitor in self.monitors:
            values.update(monitor(st))
        n_before = len(history["step"])
        history["step"].append(st.step)
        for name, value in values.items():
            # a monitor that appears late is padded so every list aligns with "step"
            history.setdefault(name, [None] * n_before).append(value)
        if bar is not None and values:
            bar.set_postfix({k: v for k, v in values.items() if isinstance(v, float)},
                            refresh=False)


class _Guard:
    """The divergence rules, on device scalars ``max |x_k|`` read back in batches."""

    def __init__(self, engine: FunctionalGradientDescent, scale_ref: float):
        self.engine, self.scale_ref = engine, scale_ref
        self.scales: list[Tensor] = []
        self.last_step = 0
        self.warned = False

    @property
    def pending(self) -> int:
        return len(self.scales)

    def record(self, step: int, x: Tensor, weights: Tensor | None = None) -> None:
        # one reduction serves both rules: NaN and inf propagate through amax (and through
        # 0 * sum(w), which brings non-finite weights into the same scalar)
        scale = x.detach().abs().amax()
        if weights is not None:
            scale = scale + 0.0 * weights.detach().sum()
        self.scales.append(scale)
        self.last_step = step

    def check(self) -> None:
        if not self.scales:
            return
        values = self.engine._seam.max(torch.stack(self.scales)).tolist()
        self.scales = []
        first = self.last_step - len(values) + 1
        limit = self.engine.max_growth
        for i, scale in enumerate(values):
            step = first + i
            if not math.isfinite(scale):
                raise FlowDivergedError(
                    step,
                    f"the flow diverged: particles (or weights) became non-finite (NaN or "
                    f"inf) at step {step}. Lower the step size (Theorem 1 needs eta <= 1/L) "
                    "or check the objective.", rule="non-finite")
            if limit is not None and scale > limit * self.scale_ref and not self.warned:
                message = (
                    f"the flow diverged at step {step}: max |x| = {scale:.3g} exceeds "
                    f"max_growth = {limit:g} times the reference scale {self.scale_ref:.3g} "
                    "(rule 'growth'). Lower the step size (Theorem 1 needs eta <= 1/L); pass "
                    "max_growth=None to turn the rule off or on_growth='warn' where growth "
                    "is expected.")
                if self.engine.on_growth == "raise":
                    raise FlowDivergedError(step, message, rule="growth")
                warnings.warn(message, RuntimeWarning, stacklevel=4)
                self.warned = True


class _Checkpointer:
    """Writes a run's checkpoints: new layers appended to the sidecar, then the main file."""

    def __init__(self, engine: FunctionalGradientDescent, path: Path, every: int,
                 segments: list[list[Any]]):
        self.engine, self.path, self.every = engine, path, every
        self.segments = segments  # [first, last, sha256] of each layer file written
        self.probed = False

    def probe(self, layer: GradientLayer | None) -> None:
        """Before the first step: can the objective's state and the layers be saved?"""
        objective = self.engine.objective
        ckpt.check_picklable(objective.state_dict(),
                             f"the state of {type(objective).__name__} (state_dict())")
        if layer is not None:
            inner = getattr(layer, "potential", None) or layer.field
            ckpt.check_picklable(layer, f"the layers (keep_layers=True), which hold a "
                                        f"{type(inner).__name__}")
        self.probed = True

    def save(self, state: dict[str, Any]) -> None:
        layers = state["layers"]
        info = None
        if layers is not None:
            done = self.segments[-1][1] if self.segments else 0
            if len(layers) > done:  # one file for the layers since the last checkpoint
                directory = ckpt.layers_dir(self.path)
                directory.mkdir(exist_ok=True)
                data = ckpt.to_bytes(list(layers.layers)[done:])
                ckpt.write_bytes(ckpt.segment_file(directory, done + 1, len(layers)), data)
                self.segments.append([done + 1, len(layers), ckpt.sha256(data)])
            info = {"n": len(layers), "segments": [list(s) for s in self.segments]}
        objective, x = self.engine.objective, state["particles"]
        payload = ckpt.to_bytes({"state": {**state, "layers": None},
                                 "objective": _share_layers(objective.state_dict(), layers),
                                 "rng": rng_state(x.device)})
        main = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "meta": self.engine._meta(x),
                "payload": payload, "sha256": ckpt.sha256(payload), "layers": info}
        ckpt.write_bytes(self.path, ckpt.to_bytes(main))
        self.engine._seam.saved(self.path, x, state["step"])


_SHARED = "flowkit.shared_layers"


def _share_layers(state: dict[str, Any], layers: GradientLayerStack | None) -> dict[str, Any]:
    """Replace a list of the engine's own layers in an objective's state by a reference.

    Algorithm 1 in ``mode="paper"`` keeps the same layer objects as the engine's stack;
    saving them again in every checkpoint would cost O(T) per checkpoint. They are stored
    once, in the layer segments, and :func:`_unshare_layers` puts them back.
    """
    if layers is None or not len(layers):
        return state
    out = dict(state)
    for key, value in state.items():
        if (isinstance(value, (list, tuple)) and value and len(value) <= len(layers)
                and all(a is b for a, b in zip(value, layers.layers))):
            out[key] = {_SHARED: len(value)}
    return out


def _unshare_layers(state: dict[str, Any], layers: GradientLayerStack | None,
                    path: Path) -> dict[str, Any]:
    out = dict(state)
    for key, value in state.items():
        if isinstance(value, dict) and set(value) == {_SHARED}:
            if layers is None or len(layers) < value[_SHARED]:
                raise ckpt.CheckpointError(
                    f"checkpoint {path}: the objective's state shares {value[_SHARED]} layers "
                    "with the engine's stack; resume with keep_layers=True")
            out[key] = list(layers.layers)[:value[_SHARED]]
    return out


def _differences(saved: dict[str, str], now: dict[str, str], start: dict[str, str],
                 fresh: dict[str, str]) -> str:
    parts = []
    for name in sorted(set(saved) | set(now)):
        a, b = saved.get(name, "(absent)"), now.get(name, "(absent)")
        if a != b and start.get(name, "(absent)") != fresh.get(name, "(absent)"):
            parts.append(f"{name} was {_short(a)}, is {_short(b)}")
    return "; ".join(parts)


def _short(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _check_n_steps(n_steps: int) -> int:
    return check_int(n_steps, "n_steps", 0)


def _to_floats(scalars: list[Tensor]) -> list[float]:
    return torch.stack(scalars).tolist() if scalars else []
