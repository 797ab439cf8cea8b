"""`influence-distill report`: a page for a tiny run of every method, a weighted second-order run and two runs
compared; the numbers on the page are recomputed here from the run's own files."""

import html
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import adam_state_file, select_args, synthetic_pool, synthetic_target, write_jsonl

from influence_distillation.cli import main
from influence_distillation.report.run_report import COMPARE_SECTIONS, RUN_SECTIONS

METHODS = ("influence", "exact", "random", "mid-ppl", "rds+", "embed-sim", "less")
SCRIPT = "<script>alert(1)</script>"


def tagged_pool(n: int) -> list[dict]:
    """The synthetic pool with a `source` field; one source name and one prompt carry markup that must stay text."""
    rows = []
    for i, record in enumerate(synthetic_pool(n)):
        source = ("math " + SCRIPT, "capitals", "colors")[i % 3]
        prompt = record["prompt"] + (f" {SCRIPT}" if i % 3 == 0 else "")
        rows.append({"id": f"row{i}", "source": source, "prompt": prompt, "completion": record["completion"]})
    return rows


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """One finished run per method (budget 7 of 36), plus a second-order weighted run, on one pool and target."""
    root = tmp_path_factory.mktemp("report")
    pool = write_jsonl(root / "pool.jsonl", tagged_pool(36))
    target = write_jsonl(root / "target.jsonl", synthetic_target(4))
    model = model_dir("llama")
    adam = ["--optimizer-state", str(adam_state_file(model, root / "optimizer.pt"))]
    made = {}
    for method in METHODS:
        made[method] = root / method
        extra = {"less": adam, "influence": ["--landmarks", "25"]}.get(method, [])  # 25: enough to hold some out
        assert main(select_args(pool, target, model, made[method], 7, "--method", method, *extra)) == 0
    made["order2"] = root / "order2"
    assert main(select_args(pool, target, model, made["order2"], 6, "--order", "2", *adam)) == 0
    return made | {"pool": pool, "target": target, "model": model, "root": root}


def report(*args) -> int:
    return main(["report", *map(str, args)])


def page_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def section_of(text: str, anchor: str) -> str:
    return text.split(f'<section id="{anchor}">')[1].split("</section>")[0]


class _Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def tables_in(fragment: str) -> list[list[list[str]]]:
    """Every table of an HTML fragment as rows of cell texts (unescaped)."""
    parser = _Rows()
    parser.feed(fragment)
    return parser.tables


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gets_every_section_with_its_own_numbers(method, runs, tmp_path):
    run = runs[method]
    out = tmp_path / "page.html"
    assert report(run, "--out", out) == 0
    text = page_of(out)
    for anchor in set(RUN_SECTIONS) - {"weights", "evaluation"}:  # those two need weights / an evaluation
        assert f'<section id="{anchor}">' in text, anchor
    assert 'id="weights"' not in text and 'id="evaluation"' not in text
    # Composition by the records' `source` field: the counts on the page are the selection's own.
    selected = [json.loads(line) for line in (run / "selected.jsonl").read_text().splitlines()]
    rows = {row[0]: row[1] for row in tables_in(section_of(text, "composition"))[0][1:]}
    assert rows == {source: str(count) for source, count in Counter(row["source"] for row in selected).items()}
    # The top pool sample of the first target sample is the argmax of its column of target_scores.npy.
    columns = np.load(run / "target_scores.npy")
    ids = pq.read_table(run / "scores.parquet").to_pydict()["id"]
    top = ids[int(np.argmax(columns[:, 0]))]
    assert tables_in(section_of(text, "targets"))[0][1][:2] == ["1", top]
    fidelity = section_of(text, "fidelity")
    if method == "influence":
        spearman = json.loads((run / "manifest.json").read_text())["propagation"]["heldout_spearman"]
        assert f"Held-out Spearman {spearman:.2f}" in fidelity
        landmarks = json.loads((run / "manifest.json").read_text())["landmarks"]
        assert f"{landmarks['verified']} verification landmarks ({landmarks['near_targets']} of them the pool " \
               "samples nearest the target samples" in html.unescape(fidelity)
    else:
        assert "Not applicable" in fidelity
    # The Markdown twin says the same and its figures exist where it links them.
    markdown = out.with_suffix(".md").read_text()
    for title in re.findall(r"<h2>(.*?)</h2>", text):
        assert f"## {html.unescape(title)}" in markdown
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links and all((tmp_path / link).is_file() for link in links)


def test_pool_text_is_escaped(runs, tmp_path):
    out = tmp_path / "page.html"
    assert report(runs["influence"], "--out", out) == 0
    text = page_of(out)
    assert "<script" not in text.lower()
    assert html.escape(SCRIPT) in text  # shown as text: in the composition table and the pulled-in samples


def test_weights_section_of_a_second_order_run(runs, tmp_path):
    out = tmp_path / "page.html"
    assert report(runs["order2"], "--out", out) == 0
    text = page_of(out)
    weights = np.asarray(pq.read_table(runs["order2"] / "weights.parquet").to_pydict()["weight"])
    assert ["method", "influence (second order, AdamW)"] in tables_in(section_of(text, "overview"))[0]
    section = section_of(text, "weights")
    assert f"{int((weights > 0).sum())} non-zero weights (sum {weights.sum():.4g})" in section
    assert "data:image/png;base64," in section


def test_evaluation_section_reads_the_runs_eval(runs, tmp_path):
    run, test = runs["influence"], write_jsonl(tmp_path / "test.jsonl", synthetic_target(3, seed=5))
    assert main(["evaluate", "--model", str(runs["model"]), "--train", str(run / "selected.jsonl"), "--test",
                 str(test), "--pool", str(runs["pool"]), "--out", str(tmp_path / "eval"), "--steps", "2",
                 "--quiet"]) == 0
    out = tmp_path / "page.html"
    assert report(run, "--out", out, "--eval", tmp_path / "eval" / "eval.json") == 0
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
    section = section_of(page_of(out), "evaluation")
    assert (f"on the selection: {summary['selection']['test_loss']:.4f}, against "
            f"{summary['random']['test_loss']:.4f} for a random subset") in section


def test_two_runs_compared(runs, tmp_path, capsys):
    a, b = runs["influence"], runs["rds+"]
    assert report(a, b, "--out", tmp_path / "compare.html") == 0
    assert f"report: {tmp_path / 'compare.html'}" in capsys.readouterr().out
    text = page_of(tmp_path / "compare.html")
    for anchor in COMPARE_SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
    chosen = [{json.loads(line)["id"] for line in (run / "selected.jsonl").read_text().splitlines()} for run in (a, b)]
    both, union = chosen[0] & chosen[1], chosen[0] | chosen[1]
    assert f"{len(both)} samples are in both selections" in text
    assert f"(Jaccard {len(both) / len(union):.2f})" in text
    assert ["method", "influence", "rds+"] in tables_in(section_of(text, "settings-difference"))[0]


def test_default_output_goes_into_the_run_and_select_prints_the_command(runs, data_files, tmp_path, capsys):
    pool, target = data_files
    out = tmp_path / "run"
    assert main(select_args(pool, target, runs["model"], out, 5, "--method", "random")) == 0
    assert f"report: influence-distill report {out}" in capsys.readouterr().out
    assert report(out) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    text = page_of(out / "report.html")
    assert "Composition by id prefix" in text  # these records have no id/source/task field


def test_a_moved_pool_leaves_a_note_not_an_error(runs, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(runs["influence"], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["pool"] = str(tmp_path / "gone.jsonl")
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert report(run, "--out", tmp_path / "page.html") == 0
    text = page_of(tmp_path / "page.html")
    assert "the pool cannot be read from here" in text and "only the selection&#x27;s composition" in text


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    (half / "manifest.json").write_text(json.dumps({"status": "running"}))
    page = ["--out", tmp_path / "x.html"]
    cases = [(half, page, "is not a finished run"), (tmp_path / "nothing", page, "is not a finished run"),
             (runs["random"], ["--group-by", "colour", *page], "--group-by: no record has a field 'colour'"),
             (runs["random"], ["--eval", tmp_path / "no.json", *page], "--eval"),
             (runs["random"], ["--out", tmp_path / "page.pdf"], "give an .html path")]
    for run, extra, message in cases:
        assert report(run, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "page.pdf").exists()


PROBE = """<script>
var worst = 0;
document.querySelectorAll('body *').forEach(function (e) {
  worst = Math.max(worst, e.getBoundingClientRect().right);
});
var found = Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; });
var out = document.createElement('pre');
out.id = 'probe';
out.textContent = JSON.stringify({width: window.innerWidth, scroll: document.documentElement.scrollWidth,
                                  right: worst, sections: found});
document.body.appendChild(out);
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
    return subprocess.run([shutil.which("chromium"), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")  # session-wide: it is decided before the costly runs are made
def need_chromium() -> None:
    """Skip, saying why and how to run it, where chromium is absent; fail instead under REQUIRE_CHROMIUM (.ci/run
    installs it and sets that), so CI never passes by skipping."""
    if shutil.which("chromium") is not None:
        return
    why = ("no `chromium` on PATH: this browser check renders the report in Debian's headless chromium; install it "
           "with `apt-get install chromium` (.ci/run does) to run it")
    if os.environ.get("REQUIRE_CHROMIUM"):
        pytest.fail(f"REQUIRE_CHROMIUM is set but {why}")
    pytest.skip(why)


@pytest.mark.parametrize("which", ["single", "compare"])
def test_report_renders_in_chromium_without_overflow_at_1280px(need_chromium, which, runs, tmp_path):
    args = [runs["influence"]] + ([runs["rds+"]] if which == "compare" else [])
    out = tmp_path / "page.html"
    assert report(*args, "--out", out) == 0
    probe = tmp_path / "probe.html"
    probe.write_text(page_of(out).replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = chromium(f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", "--dump-dom",
                      probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    measured = json.loads(html.unescape(found.group(1)))
    assert measured["width"] == 1280 and measured["scroll"] <= 1280 and measured["right"] <= 1280, measured
    expected = COMPARE_SECTIONS if which == "compare" else set(RUN_SECTIONS) - {"weights", "evaluation"}
    assert set(expected) <= set(measured["sections"])
    shot = tmp_path / "shot.png"  # and the page itself (no probe) as a picture
    chromium(f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", f"--screenshot={shot}",
             out.as_uri())
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000) and len(image.getcolors(1 << 16) or range(1 << 16)) > 16  # not blank
