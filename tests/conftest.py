import os

# KeOps (pulled in by POT when pykeops is installed) prints to stdout on import; keep the
# doc-output tests independent of what else is installed.
os.environ.setdefault("KEOPS_VERBOSE", "0")
# Triton reads TRITON_INTERPRET when it is first imported, which another test module may do
# before tests/test_triton.py sets it: set it before any test module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
# The tests work on small tensors, where a thread pool costs more than it gives and, on a
# shared 2-core machine, oversubscription makes timings erratic: one thread is steadier.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def n_times_value_grad():
    """``N * d value / d x`` by autograd: what ``functional_gradient`` must equal."""

    def grad(objective, x):
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(objective.value(z), z)
        return x.shape[0] * g

    return grad
