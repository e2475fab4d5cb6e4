r"""Sample-quality metrics for small images, with a digits classifier trained by us.

No network weights can be downloaded, so the "Inception" network of the image metrics is a
small CNN trained on a fixed train split of scikit-learn's 8 x 8 digits
(:func:`digits_classifier`; trained once, then loaded from a cache keyed by the hash of its
data, architecture and training settings). On top of it:

* the Inception score (Salimans et al. 2016 [SalimansEtAl16], sec. 4) :math:`\exp\,\mathbb E_x
  \operatorname{KL}(p(y|x)\,\|\,p(y))`, between 1 and the number of classes
  (:func:`inception_score`);
* the Frechet distance of Heusel et al. 2017 [HeuselEtAl17], eq. (6), between Gaussians
  fitted to the classifier's penultimate features, :math:`\|\mu_1-\mu_2\|^2 +
  \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2})`
  (:func:`frechet_distance`, "FD" here, as the features are not Inception's);
* the exact W2 distance in pixel space through POT [FlamaryEtAl21]
  (:func:`flowkit.monitors.wasserstein`).

:class:`DigitsMetrics` evaluates all three against the held-out split and knows the
real-vs-real level of each (the train split scored as if it were a generator), so a table
can say what "good" is at this sample size.

The cache lives in ``$FLOWKIT_CACHE``, else ``$XDG_CACHE_HOME/flowkit``, else
``~/.cache/flowkit``; it holds tensors only and is read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowkit.validation import check_int, check_particles, check_seed

__all__ = [
    "DigitsSplit",
    "digits_split",
    "DigitsClassifier",
    "ClassifierConfig",
    "train_classifier",
    "digits_classifier",
    "cache_dir",
    "inception_score",
    "frechet_distance",
    "DigitsMetrics",
]

N_TRAIN = 1000  # the rest of the 1797 digits (797) is the held-out split
SPLIT_SEED = 0
_CACHE_FORMAT = 1  # bump when the meaning of a cached file changes


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed split of the 1797 digits: images in [-1, 1], ``(n, 1, 8, 8)``, and labels."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def digits_split(n_train: int = N_TRAIN, seed: int = SPLIT_SEED) -> DigitsSplit:
    """A seeded random split of scikit-learn's digits into train and held-out images.

    The default (``n_train=1000``, ``seed=0``) is the split every digits experiment and the
    cached classifier use; the held-out 797 images are the reference of all metrics.
    """
    import flowkit as fk

    check_int(n_train, "n_train", 1, 1796)
    check_seed(seed)
    from sklearn.datasets import load_digits

    images = fk.datasets.digits()
    labels = torch.as_tensor(load_digits().target, dtype=torch.long)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    return DigitsSplit(images[tr], labels[tr], images[te], labels[te])


# --------------------------------------------------------------------------- classifier


class DigitsClassifier(nn.Module):
    """A small CNN for ``(B, 1, 8, 8)`` images in [-1, 1]: two 3x3 convolutions, a 2x2 max
    pool, a ``features``-wide penultimate layer (the FD features) and the class logits."""

    def __init__(self, n_classes: int = 10, width: int = 32, features: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.hidden = nn.Linear(2 * width * 16, features)
        self.head = nn.Linear(features, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, features)``."""
        return F.relu(self.hidden(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training of the metric classifier (all part of its cache key)."""

    width: int = 32
    features: int = 64
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 1  # random translations by up to this many pixels (augmentation)
    seed: int = 0


def _shifted(x: Tensor, g: torch.Generator, shift: int) -> Tensor:
    # one random translation per batch (padding with the background value -1)
    if shift == 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)
    return padded[..., shift + dy:shift + dy + 8, shift + dx:shift + dx + 8]


def train_classifier(images: Tensor, labels: Tensor, config: ClassifierConfig = ClassifierConfig()
                     ) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` with Adam; deterministic given ``config.seed``.

    All randomness (initial weights, minibatch order, augmentation) comes from one
    generator seeded with ``config.seed``, and the training runs in float32 on the CPU.
    """
    check_particles(images, "images")
    if images.shape[1:] != (1, 8, 8):
        raise ValueError(f"images must have shape (N, 1, 8, 8), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        net = DigitsClassifier(int(labels.max()) + 1, config.width, config.features)
    x, y = images.detach().to("cpu", torch.float32), labels.to("cpu")
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    net.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(x), generator=g).split(config.batch_size):
            loss = F.cross_entropy(net(_shifted(x[idx], g, config.shift)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


def cache_dir() -> Path:
    """``$FLOWKIT_CACHE``, else ``$XDG_CACHE_HOME/flowkit``, else ``~/.cache/flowkit``."""
    if os.environ.get("FLOWKIT_CACHE"):
        return Path(os.environ["FLOWKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowkit"


def _content_hash(split: DigitsSplit, config: ClassifierConfig) -> str:
    h = hashlib.sha256()
    for t in (split.train_images, split.train_labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({**asdict(config), "format": _CACHE_FORMAT,
                         "torch": torch.__version__.split("+")[0]}, sort_keys=True).encode())
    return h.hexdigest()[:20]


def digits_classifier(config: ClassifierConfig = ClassifierConfig(), *, cache: bool = True,
                      split: DigitsSplit | None = None) -> tuple[DigitsClassifier, float]:
    """The metric classifier and its held-out accuracy, trained once and then cached.

    Parameters
    ----------
    config : ClassifierConfig
        Architecture and training settings.
    cache : bool
        Read and write :func:`cache_dir`. The file name is a hash of the training images,
        labels, ``config`` and the torch version, so any change retrains.
    split : DigitsSplit, optional
        Default :func:`digits_split()`.

    Returns
    -------
    (DigitsClassifier, float)
        The network (eval mode, frozen) and its accuracy on ``split``'s held-out images.
    """
    split = digits_split() if split is None else split
    path = cache_dir() / f"digits_classifier-{_content_hash(split, config)}.pt"
    net = None
    if cache and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = DigitsClassifier(int(split.train_labels.max()) + 1, config.width, config.features)
        net.load_state_dict(state)
        net.eval().requires_grad_(False)
    if net is None:
        net = train_classifier(split.train_images, split.train_labels, config)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save(net.state_dict(), tmp)
            os.replace(tmp, path)  # concurrent runs never read a half-written file
    with torch.no_grad():
        pred = net(split.test_images.float()).argmax(1)
    return net, float((pred == split.test_labels).double().mean())


# --------------------------------------------------------------------------- metrics


def inception_score(probs: Tensor) -> float:
    r""":math:`\exp\,\mathbb E_x \operatorname{KL}(p(y|x)\,\|\,p(y))` from class probabilities.

    ``probs`` is ``(N, K)`` (rows summing to 1); :math:`p(y)` is their mean. The score is 1
    when every sample gets the same distribution and ``K`` for confident predictions
    spread evenly over the ``K`` classes. Computed in float64; ``0 log 0 = 0``.
    """
    check_particles(probs, "probs")
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (N, K), got {tuple(probs.shape)}")
    p = probs.detach().double()
    if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-5):
        raise ValueError("probs must hold probability rows (non-negative, summing to 1)")
    py = p.mean(0, keepdim=True)
    kl = torch.xlogy(p, p) - torch.xlogy(p, py.expand_as(p))
    return float(torch.exp(kl.sum(1).mean()))


def _sqrt_psd(a: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(x: Tensor, y: Tensor) -> float:
    r"""Frechet distance between Gaussians fitted to two feature samples ``(N, d)``, ``(M, d)``.

    .. math:: \|\mu_x-\mu_y\|^2 + \operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y
        - 2\operatorname{tr}\big(\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2}\big)^{1/2}

    (the squared W2 distance of the two Gaussians; Heusel et al. 2017 [HeuselEtAl17],
    eq. (6)), with unbiased
    covariances, in float64; the matrix square roots by symmetric eigendecompositions, so
    the result is real and, up to round-off, >= 0.
    """
    check_particles(x, "x")
    check_particles(y, "y")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, d) and (M, d) feature matrices, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("x and y need at least 2 rows each for a covariance")
    x, y = x.detach().double(), y.detach().double()
    mx, my = x.mean(0), y.mean(0)
    sx, sy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    root = _sqrt_psd(sx)
    cross = torch.linalg.eigvalsh(root @ sy @ root).clamp(min=0).sqrt().sum()
    value = (mx - my).square().sum() + sx.trace() + sy.trace() - 2 * cross
    return float(value.clamp(min=0))


class DigitsMetrics:
    """IS, FD and pixel W2 of image samples against the held-out digits.

    Parameters
    ----------
    classifier : DigitsClassifier, optional
        Default: :func:`digits_classifier` (trained once, then cached).
    split : DigitsSplit, optional
        Default: :func:`digits_split()`. Its held-out images are the reference of FD and W2.

    Attributes
    ----------
    accuracy : float
        The classifier's held-out accuracy (``nan`` when a classifier was passed in).

    Examples
    --------
    >>> from flowkit.metrics import DigitsMetrics
    >>> m = DigitsMetrics()                                   # doctest: +SKIP
    >>> m(samples)                                            # doctest: +SKIP
    {'IS': ..., 'FD': ..., 'W2': ...}
    """

    def __init__(self, classifier: DigitsClassifier | None = None,
                 split: DigitsSplit | None = None):
        self.split = digits_split() if split is None else split
        if classifier is None:
            classifier, self.accuracy = digits_classifier(split=self.split)
        else:
            if not isinstance(classifier, DigitsClassifier):
                raise TypeError(f"classifier must be a DigitsClassifier, got "
                                f"{type(classifier).__name__}")
            self.accuracy = float("nan")
        self.classifier = classifier.eval()
        self.reference = self.split.test_images
        with torch.no_grad():
            self._ref_features = self.classifier.features(self.reference.float())

    def _check(self, images: Tensor, name: str) -> Tensor:
        check_particles(images, name)
        if images.shape[1:] != (1, 8, 8):
            raise ValueError(f"{name} must have shape (N, 1, 8, 8), got {tuple(images.shape)}")
        return images.detach().to("cpu", torch.float32)

    def __call__(self, images: Tensor, *, w2: bool = True) -> dict[str, float]:
        """``{"IS", "FD", "W2"}`` of ``images`` ``(N, 1, 8, 8)`` in [-1, 1] (use N >= 1000)."""
        from flowkit.monitors import wasserstein

        x = self._check(images, "images")
        with torch.no_grad():
            feats = self.classifier.features(x)
            probs = self.classifier.head(feats).softmax(1)
        out = {"IS": inception_score(probs), "FD": frechet_distance(feats, self._ref_features)}
        if w2:
            out["W2"] = wasserstein(x, self.reference, 2, exact_max=max(len(x),
                                                                       len(self.reference))).value
        return out

    def real_vs_real(self) -> dict[str, Any]:
        """The three metrics of the train split (1000 real digits) against the held-out one."""
        return {**self(self.split.train_images), "n": len(self.split.train_images),
                "reference_n": len(self.reference)}
