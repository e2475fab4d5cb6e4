"""flowkit.metrics: the digits classifier, Inception score, Frechet distance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

pytest.importorskip("sklearn")

from flowkit import metrics  # noqa: E402
from flowkit.metrics import (  # noqa: E402
    ClassifierConfig,
    DigitsMetrics,
    digits_classifier,
    digits_split,
    frechet_distance,
    inception_score,
    train_classifier,
)

TINY = ClassifierConfig(width=4, features=8, epochs=1)


def test_split_is_fixed_and_disjoint():
    a, b = digits_split(), digits_split()
    assert a.train_images.shape == (1000, 1, 8, 8) and a.test_images.shape == (797, 1, 8, 8)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels,
                                                                        b.test_labels)
    assert len(a.train_labels) + len(a.test_labels) == 1797
    assert not torch.equal(digits_split(seed=1).train_images, a.train_images)


def test_classifier_training_is_deterministic():
    s = digits_split()
    one = train_classifier(s.train_images, s.train_labels, TINY).state_dict()
    two = train_classifier(s.train_images, s.train_labels, TINY).state_dict()
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_classifier_accuracy_floor():
    # the default classifier (cached after its first training) on the held-out 797 digits
    _, accuracy = digits_classifier()
    assert accuracy >= 0.97


def test_cache_is_keyed_by_content_and_loads_weights_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    net, acc = digits_classifier(TINY)
    (path,) = tmp_path.iterdir()
    # a pure tensor file: loadable without running code
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    def no_training(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(metrics, "train_classifier", no_training)
    again, acc2 = digits_classifier(TINY)
    assert acc2 == acc
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values()))
    with pytest.raises(AssertionError, match="cache"):  # other settings, other key
        digits_classifier(ClassifierConfig(width=4, features=8, epochs=2))


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert metrics.cache_dir() == tmp_path / "flowkit"
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "x"))
    assert metrics.cache_dir() == tmp_path / "x"


def test_inception_score_extremes():
    k = 10
    perfect = torch.eye(k).repeat(30, 1)  # confident, evenly spread over the classes
    assert inception_score(perfect) == pytest.approx(k, rel=1e-12)
    constant = torch.softmax(torch.randn(1, k), 1).repeat(50, 1)
    assert inception_score(constant) == pytest.approx(1.0, rel=1e-12)
    one_class = torch.eye(k)[torch.zeros(40, dtype=torch.long)]
    assert inception_score(one_class) == pytest.approx(1.0, rel=1e-12)
    random = torch.softmax(3 * torch.randn(200, k), 1)
    assert 1.0 < inception_score(random) < k


def test_inception_score_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probs"):
        inception_score(torch.rand(5, 3))
    with pytest.raises(ValueError, match="probs"):
        inception_score(torch.ones(5))


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g,
                                                                            dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    # same covariance: only the mean term remains
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()),
                                                           rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 5, generator=g, dtype=torch.float64) + 1.0
    sx, sy = np.cov(x.numpy().T), np.cov(y.numpy().T)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    expected = (np.sum((x.numpy().mean(0) - y.numpy().mean(0)) ** 2)
                + np.trace(sx) + np.trace(sy) - 2 * np.trace(covmean))
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="x and y"):
        frechet_distance(x, y[:, :3])


def test_digits_metrics_real_vs_real_and_bad_input():
    m = DigitsMetrics()
    real = m.real_vs_real()
    assert real["IS"] > 9.0 and real["FD"] < 10.0 and real["W2"] > 0
    noise = m(torch.rand(1000, 1, 8, 8) * 2 - 1, w2=False)
    assert noise["FD"] > 20 * real["FD"] and noise["IS"] < real["IS"]
    with pytest.raises(ValueError, match="images"):
        m(torch.rand(10, 64))
