"""The docs' runnable examples run, and print what the docs say they print."""

import re
from pathlib import Path

import pytest
from docs_examples import check_page, examples

DOCS = Path(__file__).resolve().parent.parent / "docs"
# pages whose examples are cheap enough for the test suite
PAGES = ["custom_objective.md", "quickstart.md", "algorithm1.md"]


@pytest.mark.parametrize("page", PAGES)
def test_doc_examples_print_their_documented_output(page):
    assert check_page(page) >= 1, f"{page} lost its runnable examples"


def test_custom_objective_matches_the_closed_form_mmd_gradient():
    import torch

    import flowkit as fk

    code, _ = examples("custom_objective.md")[0]
    ns: dict = {"__name__": "__doc_example__"}
    exec(compile(code.split("data = ")[0], "custom_objective.md", "exec"), ns)
    y = torch.randn(20, 2, dtype=torch.float64)
    x = torch.randn(15, 2, dtype=torch.float64)
    mine = ns["HalfMMD"](y).functional_gradient(x)
    closed = fk.objectives.MMD(y, fk.kernels.Gaussian(1.0)).functional_gradient(x)
    torch.testing.assert_close(mine, closed / 2)


def test_readme_example_runs_and_its_comments_are_true():
    import torch

    readme = (DOCS.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), ns)
    assert [round(w, 3) for w in ns["result"].history["W2"]] == [0.865, 0.114, 0.087, 0.074,
                                                                 0.068]
    assert ns["result"].particles.shape == (500, 2) and ns["fresh"].shape == (1000, 2)
    margin = ns["fk"].theory.injectivity_margin(ns["layer"])
    assert abs(margin - 0.2) < 1e-9
    assert isinstance(ns["psi"], torch.nn.Module)
