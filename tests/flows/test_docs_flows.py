"""docs/flows.md: its runnable examples print what the page says they print."""

import pytest
from docs_examples import check_page


def test_flows_page_examples_print_their_documented_output():
    pytest.importorskip("ksddescent")
    assert check_page("flows.md") >= 5, "flows.md lost its runnable examples"
