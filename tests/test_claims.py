"""The ledger of claims (flowkit.claims) and `flowkit verify`: every claim is documented,
sourced and has its asserted verdict; every check rejects its deliberately wrong oracle;
docs/verify.md is the registry's table."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
from docs_examples import examples

from flowkit.claims import REGISTRY, Outcome, claims, run_claims
from flowkit.claims.report import DOCS_HEADER
from flowkit.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs"
# the claims that run whole flows; everything else is checked, mutated too, in the unit test
HEAVY = {"aksg19-monotone-decrease", "mn21-kernelized-descent", "aksg19-no-global-convergence",
         "aksg19-noise-injection-helps", "ns18-theorem1-mmd", "ns18-alg2-determinism",
         "ns18-alg3-stack", "szekely-energy-scipy", "ls19-altgda-cycles", "ls19-omd-threshold",
         "ls19-iu-bilinear-rate"}


def test_the_ledger_has_at_least_30_sourced_claims():
    all_claims = claims()
    assert len(all_claims) >= 30
    assert len({c.id for c in all_claims}) == len(all_claims)
    keys = set(re.findall(r"\*\*\[([A-Za-z0-9]+)\]\*\*", (DOCS / "references.md").read_text()))
    for c in all_claims:
        assert c.reference in keys, (c.id, c.reference)
        assert f"[{c.reference}]" in c.source, c.id
        assert c.statement.endswith(".") and c.instance and c.oracle and c.tolerance, c.id
        assert c.expected in ("holds", "fails")
    papers = {c.id.split("-")[0] for c in all_claims}
    assert {"ns18", "aksg19", "mn21", "ls19", "ni23"} <= papers
    assert sum(c.expected == "fails" for c in all_claims) >= 4  # counterexamples included


@pytest.mark.parametrize("mutate", [False, True])
def test_light_claims_keep_their_verdicts_and_reject_wrong_oracles(mutate):
    selected = [c for c in claims() if c.id not in HEAVY]
    assert len(selected) >= 25
    results = run_claims(selected, seed=0, mutate=mutate)
    bad = [(r.claim.id, r.outcome) for r in results if not r.ok]
    assert not bad


def test_a_check_that_raises_is_inconclusive_not_a_crash(monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")

    claim = dataclasses.replace(REGISTRY["ns18-layer-map"], check=broken)
    (result,) = run_claims([claim])
    assert result.outcome.verdict == "inconclusive" and "boom" in result.outcome.detail
    assert not result.ok


def test_unknown_ids_are_named():
    with pytest.raises(ValueError, match="no-such-claim"):
        claims(["ns18-layer-map", "no-such-claim"])


def _docs_rows():
    text = (DOCS / "verify.md").read_text()
    table = text[text.index(DOCS_HEADER):]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\| `([^`]+)` \| (.*?) \| (.*?) \| (holds|fails) \| \*\*(\w+)\*\* \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4), m.group(5))
    return rows


def _unescape(cell):
    return cell.replace("\\|", "|")


def test_docs_page_lists_every_claim_with_its_asserted_verdict():
    rows = _docs_rows()
    assert list(rows) == [c.id for c in claims()]
    for c in claims():
        source, statement, asserted, verdict = rows[c.id]
        assert (_unescape(source), _unescape(statement)) == (c.source, c.statement), c.id
        assert asserted == c.expected and verdict == c.expected, c.id
    assert "[verify.md](verify.md)" in (DOCS / "index.md").read_text()


def test_claims_keep_the_table_order_whichever_module_is_imported_first():
    import subprocess
    import sys

    code = ("import flowkit.claims.cg, flowkit.claims.games\n"
            "from flowkit.claims import claims\n"
            "print(','.join(c.id for c in claims()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.split(",") == [c.id for c in claims()]


def test_verify_command_lists_runs_and_writes_a_run_folder(tmp_path, capsys):
    assert main(["verify", "--list"]) == 0
    assert "ns18-theorem1-quadratic" in capsys.readouterr().out
    ids = "ns18-layer-map,ni23-code-fr-beta"
    assert main(["verify", "--only", ids, "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 claims" in out and "0 claims off their asserted verdict" in out
    (run,) = tmp_path.iterdir()
    data = json.loads((run / "claims.json").read_text())
    assert [r["verdict"] for r in data["results"]] == ["holds", "fails"]
    assert "| `ni23-code-fr-beta` |" in (run / "claims.md").read_text()
    assert main(["verify", "--only", ids, "--json", "--no-save", "--mutate",
                 "--no-progress"]) == 0
    mutated = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in mutated["results"]] == ["fails", "holds"]


def test_verify_exits_non_zero_when_a_claim_leaves_its_verdict(monkeypatch, capsys):
    claim = REGISTRY["ns18-layer-map"]
    monkeypatch.setitem(REGISTRY, claim.id, dataclasses.replace(
        claim, check=lambda ctx: Outcome("fails", {"x": 1.0}, "made up")))
    assert main(["verify", "--only", claim.id, "--no-save", "--no-progress"]) == 1
    assert "1 claims off their asserted verdict: ns18-layer-map" in capsys.readouterr().out


@pytest.mark.slow
def test_full_verify_holds_every_asserted_verdict_and_matches_the_docs(tmp_path, capsys):
    assert main(["verify", "--out", str(tmp_path), "--no-progress"]) == 0
    (run,) = tmp_path.iterdir()
    data = json.loads((run / "claims.json").read_text())
    rows = _docs_rows()
    assert {r["id"]: r["verdict"] for r in data["results"]} == {
        k: v[3] for k, v in rows.items()}


def test_the_pages_python_example_prints_its_output(capsys):
    code, output = examples("verify.md")[0]
    exec(compile(code, "verify.md", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out == output
