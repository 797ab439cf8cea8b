"""The benchmark harness end to end on a tiny model and synthetic data (the real-data run is in BENCHMARKS.md)."""

import csv
import json

from conftest import synthetic_pool, synthetic_target, write_jsonl
from scipy.stats import rankdata

from influence_distillation.cli import main
from influence_distillation.evaluation import benchmark


def test_benchmark_compares_every_method_on_the_same_footing(model_dir, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    (data / "targets" / "math").mkdir(parents=True)
    pool = [{"id": f"p{i}", "task": "math" if "plus" in r["prompt"] else "other", **r}
            for i, r in enumerate(synthetic_pool(48))]
    write_jsonl(data / "pool.jsonl", pool)
    write_jsonl(data / "targets" / "math" / "target.jsonl", [{**r, "task": "math"} for r in synthetic_target(4)])
    test = [{**r, "options": [r["completion"], "The capital is Rome."]} for r in synthetic_target(6, seed=9)]
    write_jsonl(data / "targets" / "math" / "test.jsonl", test)
    out = tmp_path / "bench"
    methods = "influence,exact,random,mid-ppl,rds+,embed-sim,less"
    args = ["benchmark", "--model", str(model_dir("llama")), "--data", str(data), "--out", str(out), "--quick",
            "--budget", "6", "--methods", methods, "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n| ") >= 7 and "× ours" in printed
    rows = list(csv.DictReader((out / "benchmark.csv").open()))
    assert {r["method"] for r in rows} == set(methods.split(",")) and {r["target"] for r in rows} == {"math"}
    summary = json.loads((out / "benchmark.json").read_text())
    assert summary["methods"]["influence"]["time_vs_ours"] == 1.0
    assert summary["methods"]["random"]["loss_vs_random"] == 1.0
    assert summary["methods"]["random"]["flops"] == 0.0
    assert summary["methods"]["exact"]["flops"] > summary["methods"]["influence"]["flops"]
    for method in methods.split(","):
        selected = (out / f"select-math-{method}" / "selected.jsonl").read_text().splitlines()
        assert len(selected) == 6
        assert summary["methods"][method]["selection_seconds"] is not None
    assert (out / "quality_vs_cost.png").is_file() and (out / "warmup" / "optimizer.pt").is_file()
    # What each selection holds, counted here from the files; ranks as scipy gives them.
    picked = {m: [json.loads(x) for x in (out / f"select-math-{m}" / "selected.jsonl").open()] for m in methods.split(",")}
    ours = {r["id"] for r in picked["influence"]}
    for method, records in picked.items():
        held = summary["composition"]["math"][method]
        assert held["own_task"] == sum(r["task"] == "math" for r in records) / 6
        assert held["shared"] == (None if method == "influence" else len(ours & {r["id"] for r in records}) / 6)
    losses = [r["test_loss"] for r in summary["rows"]]
    for row, rank in zip(summary["rows"], rankdata(losses)):
        assert summary["methods"][row["method"]]["mean_rank"] == rank
    assert "What each selection holds" in (out / "benchmark.md").read_text()
    # Everything is reused on a second run, and the cold timings are kept.
    assert main(args) == 0
    assert json.loads((out / "benchmark.json").read_text())["methods"]["less"]["selection_seconds"] == \
        summary["methods"]["less"]["selection_seconds"]
    # Only what changed is evaluated again: a selection whose evaluation is stale, not the other six.
    evaluated = []
    real = benchmark.evaluate_subsets
    monkeypatch.setattr(benchmark, "evaluate_subsets",
                        lambda config, subsets, *a, **k: evaluated.append(sorted(subsets)) or real(config, subsets,
                                                                                                  *a, **k))
    cache = json.loads((out / "eval-math.json").read_text())
    rds_ids = [json.loads(line)["id"] for line in (out / "select-math-rds+" / "selected.jsonl").open()]
    del cache["runs"][benchmark.artifacts.fingerprint(ids=rds_ids, seed=0, weighted=False)]
    (out / "eval-math.json").write_text(json.dumps(cache))
    assert main(args) == 0
    assert evaluated == [["rds+"]]
    assert json.loads((out / "benchmark.json").read_text())["rows"] == summary["rows"]
    # Changing ours (K) re-runs it with the landmark gradients from the cache: not a cold run, so its time is left
    # out rather than reported stale; the baselines' cold times do not depend on K and are kept.
    monkeypatch.setitem(benchmark.QUICK, "num_blocks", benchmark.QUICK["num_blocks"] + 1)
    assert main(args) == 0
    after = json.loads((out / "benchmark.json").read_text())["methods"]
    assert after["influence"]["selection_seconds"] is None
    assert after["rds+"]["selection_seconds"] == summary["methods"]["rds+"]["selection_seconds"]
    assert after["less"]["selection_seconds"] == summary["methods"]["less"]["selection_seconds"]
    assert evaluated[0] == ["rds+"] and evaluated[1:] in ([], [["influence"]])  # only a changed selection


def test_benchmark_variants_and_per_row_seeds(model_dir, tmp_path, monkeypatch):
    """Variants (the paper's propagation, AdamW, order 2 trained weighted) run next to methods; `NAME:N` sets a
    row's seeds; `NAME@S` selects with another seed and fine-tunes with the same ones; random draws a new subset per
    seed; a weighted row trains on its twin's selection with weights."""
    data = tmp_path / "data"
    (data / "targets" / "math").mkdir(parents=True)
    write_jsonl(data / "pool.jsonl", [{"id": f"p{i}", **r} for i, r in enumerate(synthetic_pool(40))])
    write_jsonl(data / "targets" / "math" / "target.jsonl", synthetic_target(4))
    write_jsonl(data / "targets" / "math" / "test.jsonl", synthetic_target(5, seed=9))
    out = tmp_path / "bench"
    calls = []
    real = benchmark.evaluate_subsets
    monkeypatch.setattr(benchmark, "evaluate_subsets", lambda config, subsets, *a, **k: calls.append(
        (sorted(subsets), config.seed, config.weighted)) or real(config, subsets, *a, **k))
    rows = ("influence,random,influence-paper:1,influence-order2:1,influence-order2-weighted:1,influence-verify2:1,"
            "influence@3:1")
    assert main(["benchmark", "--model", str(model_dir("llama")), "--data", str(data), "--out", str(out), "--quick",
                 "--budget", "5", "--methods", rows, "--seeds", "2", "--quiet"]) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    seeds = {r["method"]: r for r in summary["rows"]}
    assert seeds["influence"]["test_loss_std"] > 0 and seeds["influence-paper"]["test_loss_std"] == 0
    trained = [c for c in calls if c[0]]
    assert sorted(trained) == sorted([(["influence"], 0, False), (["influence"], 1, False), (["random"], 0, False),
                                      (["random"], 1, False), (["influence-paper"], 0, False),
                                      (["influence-order2"], 0, False), (["influence-order2-weighted"], 0, True),
                                      (["influence-verify2"], 0, False), (["influence@3"], 0, False)])
    redrawn = json.loads((out / "select-math-influence-draw3" / "manifest.json").read_text())
    first = json.loads((out / "select-math-influence" / "manifest.json").read_text())
    assert redrawn["config"]["seed"] == 3 and first["config"]["seed"] == 0
    assert redrawn["config"]["landmarks"] == first["config"]["landmarks"]
    random_sets = [{json.loads(x)["id"] for x in (out / f"select-math-random{s}" / "selected.jsonl").open()}
                   for s in ("", "-s1")]
    assert random_sets[0] != random_sets[1]
    assert not (out / "select-math-influence-order2-weighted").exists()
    manifest = json.loads((out / "select-math-influence-order2" / "manifest.json").read_text())
    assert manifest["influence"]["order"] == 2 and manifest["influence"]["variant"] == "adamw"
    paper = json.loads((out / "select-math-influence-paper" / "manifest.json").read_text())["config"]
    assert paper["embedding"]["pooling"] == "last" and paper["propagation"]["tune"] is False
    assert paper["landmarks"]["verify"] == 0 and manifest["landmarks"]["verified"] == 0
    twice = json.loads((out / "select-math-influence-verify2" / "manifest.json").read_text())
    assert twice["config"]["landmarks"]["verify"] == 10 and twice["landmarks"]["verified"] == 10  # 2 × the budget
    with_weights = [json.loads(x) for x in (out / "select-math-influence-order2" / "selected.jsonl").open()]
    assert all("weight" in record for record in with_weights)


def test_rows_that_select_alike_are_fine_tuned_once(model_dir, tmp_path, monkeypatch):
    """A variant whose settings change nothing on this data (as the answer floor on a target of short answers)
    selects the same samples; each seed's fine-tune is then run once and shared by both rows."""
    data = tmp_path / "data"
    (data / "targets" / "math").mkdir(parents=True)
    write_jsonl(data / "pool.jsonl", [{"id": f"p{i}", **r} for i, r in enumerate(synthetic_pool(40))])
    write_jsonl(data / "targets" / "math" / "target.jsonl", synthetic_target(4))
    write_jsonl(data / "targets" / "math" / "test.jsonl", synthetic_target(5, seed=9))
    monkeypatch.setitem(benchmark.VARIANTS, "influence-twin", benchmark.Variant("influence"))
    calls = []
    real = benchmark.evaluate_subsets
    monkeypatch.setattr(benchmark, "evaluate_subsets", lambda config, subsets, *a, **k: calls.append(
        (sorted(subsets), config.seed)) or real(config, subsets, *a, **k))
    out = tmp_path / "bench"
    assert main(["benchmark", "--model", str(model_dir("llama")), "--data", str(data), "--out", str(out), "--quick",
                 "--budget", "5", "--methods", "influence,influence-twin", "--seeds", "2", "--quiet"]) == 0
    picked = [[json.loads(x)["id"] for x in (out / f"select-math-{row}" / "selected.jsonl").open()]
              for row in ("influence", "influence-twin")]
    assert picked[0] == picked[1]
    assert [c for c in calls if c[0]] == [(["influence"], 0), (["influence"], 1)]
    rows = {r["method"]: r for r in json.loads((out / "benchmark.json").read_text())["rows"]}
    assert rows["influence-twin"]["test_loss"] == rows["influence"]["test_loss"]


def test_a_second_target_keeps_the_first_targets_cold_time(model_dir, tmp_path, caplog):
    """A cold time measures the pool-wide stages; a second target reuses them and computes only its own verification
    gradients, which must not make the first target's time look stale (it did: dropped, with a warning that the
    settings had changed)."""
    data = tmp_path / "data"
    for number, name in enumerate(("math", "other")):
        (data / "targets" / name).mkdir(parents=True)
        write_jsonl(data / "targets" / name / "target.jsonl", synthetic_target(4, seed=number))
        write_jsonl(data / "targets" / name / "test.jsonl", synthetic_target(5, seed=9))
    write_jsonl(data / "pool.jsonl", [{"id": f"p{i}", **r} for i, r in enumerate(synthetic_pool(40))])
    out = tmp_path / "bench"
    assert main(["benchmark", "--model", str(model_dir("llama")), "--data", str(data), "--out", str(out), "--quick",
                 "--budget", "5", "--methods", "influence", "--select-only", "--quiet"]) == 0
    other = json.loads((out / "select-other-influence" / "manifest.json").read_text())["cache"]
    assert "embeddings" in other["reused"] and any(s.startswith("verified_gradients") for s in other["stages"])
    timings = json.loads((out / "timings.json").read_text())
    assert timings["influence"]["target"] == "math" and timings["influence"]["seconds"] > 0
    assert "settings changed" not in caplog.text


def test_benchmark_rows_are_checked_before_any_work(tmp_path, capsys):
    for rows, message in (("influence@x", "selection seed"), ("nope@1", "unknown 'nope'"), ("influence:0", "seed count")):
        assert main(["benchmark", "--out", str(tmp_path / "b"), "--methods", rows]) != 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_ledger_continues_the_benchmark_from_a_fresh_checkout(model_dir, tmp_path, monkeypatch):
    """What a ledger holds is enough to rebuild the tables elsewhere without selecting or fine-tuning again, holds
    no pool text, and is not reused for other settings."""
    data = tmp_path / "data"
    (data / "targets" / "math").mkdir(parents=True)
    pool = [{"id": f"p{i}", **r} for i, r in enumerate(synthetic_pool(40))]
    write_jsonl(data / "pool.jsonl", pool)
    write_jsonl(data / "targets" / "math" / "target.jsonl", synthetic_target(4))
    write_jsonl(data / "targets" / "math" / "test.jsonl", synthetic_target(5, seed=9))
    ledger = tmp_path / "ledger"
    work = {"selections": 0, "fine-tunes": 0}
    real_select, real_evaluate = benchmark.run_selection, benchmark.evaluate_subsets
    monkeypatch.setattr(benchmark, "run_selection", lambda *a, **k: work.update(selections=work["selections"] + 1)
                        or real_select(*a, **k))
    monkeypatch.setattr(benchmark, "evaluate_subsets", lambda *a, **k: work.update(
        {"fine-tunes": work["fine-tunes"] + 1}) or real_evaluate(*a, **k))

    def run(out: str, budget: int = 5, *extra: str) -> dict:
        work.update(selections=0, **{"fine-tunes": 0})
        assert main(["benchmark", "--model", str(model_dir("llama")), "--data", str(data), "--out",
                     str(tmp_path / out), "--quick", "--budget", str(budget), "--methods", "influence,random:2,less",
                     "--ledger", str(ledger), "--quiet", *extra]) == 0
        path = tmp_path / out / "benchmark.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    assert run("scout", 5, "--select-only") == {}  # selections only: what each holds, no fine-tune
    assert work == {"selections": 4, "fine-tunes": 0}  # random once per fine-tuning seed
    assert "What each selection holds" in (tmp_path / "scout" / "composition.md").read_text()
    first = run("first")
    assert work == {"selections": 0, "fine-tunes": 5}  # the scout's selections; the untrained model, 1 + 2 + 1
    recorded = "".join(p.read_text() for p in ledger.iterdir())
    assert not any(record["prompt"] in recorded for record in pool)  # ids, not data
    second = run("second")  # another folder: no stage cache, no local evaluations
    assert work == {"selections": 0, "fine-tunes": 0}
    assert second["rows"] == first["rows"] and second["methods"] == first["methods"]
    assert second["composition"] == first["composition"]
    for name in ("influence", "random", "random-s1", "less"):
        for file in ("selected.jsonl", "dataset_info.json"):  # a restored run folder holds what the run wrote
            assert (tmp_path / "second" / f"select-math-{name}" / file).read_text() == \
                (tmp_path / "scout" / f"select-math-{name}" / file).read_text()
    run("third", budget=6)  # other settings: nothing recorded applies
    assert work["selections"] == 4 and work["fine-tunes"] == 4  # the untrained model's scores do not depend on it


def test_a_ledger_key_ignores_speed_options_and_later_options_at_their_defaults(tmp_path):
    """So that a recorded selection survives an upgrade that adds an option (at its default, the run is the same)
    and a change of batch size, but not a change of what the run computes."""
    from influence_distillation.config import SelectConfig
    from influence_distillation.evaluation.ledger import Ledger

    pool, target = write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(6)), write_jsonl(
        tmp_path / "target.jsonl", synthetic_target(2))
    ledger = Ledger(tmp_path / "ledger", "tiny")

    def key(**changes) -> str:
        config = SelectConfig(pool=str(pool), target=str(target), out=str(tmp_path / "out"))
        for path, value in changes.items():
            section, name = path.split("__")
            setattr(getattr(config, section), name, value)
        return ledger.selection_key(config, None)

    assert key(embedding__batch_size=4) == key(embedding__batch_size=16) == key()
    assert key(landmarks__verify_space="minilm") != key() != key(landmarks__verify=3)
