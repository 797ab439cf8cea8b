import json

import pytest
from conftest import write_jsonl

from influence_distillation.data.records import load_samples, trained_turns
from influence_distillation.errors import DataError


def test_all_record_formats_become_turns_or_text(tmp_path):
    cases = {
        "messages": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Hello"}]},
        "prompt": {"prompt": "Hi", "completion": "Hello"},
        "instruction": {"instruction": "Say hello", "input": "to Bob", "output": "Hello Bob"},
        "instruction-no-input": {"instruction": "Say hello", "input": "", "output": "Hello"},
        "text": {"text": "Just text."},
    }
    turns = {}
    for name, record in cases.items():
        (sample,) = load_samples(write_jsonl(tmp_path / f"{name}.jsonl", [record]))
        assert sample.record == record and sample.id == "0"
        turns[name] = sample.messages if sample.messages is not None else sample.text
    assert turns["messages"][-1] == ("assistant", "Hello")
    assert turns["prompt"] == (("user", "Hi"), ("assistant", "Hello"))
    assert turns["instruction"] == (("user", "Say hello\n\nto Bob"), ("assistant", "Hello Bob"))
    assert turns["instruction-no-input"] == (("user", "Say hello"), ("assistant", "Hello"))
    assert turns["text"] == "Just text."


def test_sharegpt_conversations_and_content_parts_read_as_chat_turns(tmp_path):
    sharegpt = {"id": "QWJhYvA_0", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
        {"from": "user", "value": "Again?"}, {"from": "chatgpt", "value": "Yes."}, {"from": "tool", "value": "{}"}]}
    (sample,) = load_samples(write_jsonl(tmp_path / "sharegpt.jsonl", [sharegpt]))
    assert sample.id == "QWJhYvA_0" and sample.record == sharegpt and sample.excluded is None
    assert sample.messages == (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Again?"),
                               ("assistant", "Yes."), ("tool", "{}"))
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Look:"}, "plain", {"text": "x"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Seen."}]}]}
    (sample,) = load_samples(write_jsonl(tmp_path / "parts.jsonl", [parts]))
    assert sample.messages == (("user", "Look:\nplain\nx"), ("assistant", "Seen.")) and sample.excluded is None


@pytest.mark.parametrize("record, reason", [
    ({"messages": []}, "no assistant turn after a user turn"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn after a user turn"),
    ({"messages": [{"role": "assistant", "content": "Hello"}]}, "no assistant turn after a user turn"),
    ({"conversations": [{"from": "gpt", "value": "(cont.)"}, {"from": "human", "value": "ok"}]},
     "no assistant turn after a user turn"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "},
                   {"role": "user", "content": "?"}, {"role": "assistant", "content": "Hello"}]}, "empty assistant turn"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]}, "empty assistant turn"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "A cat."}]}, "non-text content part (image_url)"),
    ({"prompt": "p", "completion": "  "}, "empty completion"),
    ({"instruction": "Say it", "output": ""}, "empty output"),
    ({"text": "\n"}, "empty text"),
])
def test_records_that_read_but_cannot_be_trained_on_carry_their_reason(tmp_path, record, reason):
    (sample,) = load_samples(write_jsonl(tmp_path / "pool.jsonl", [record]))
    assert sample.excluded == reason and sample.record == record


def test_an_opening_assistant_turn_is_context(tmp_path):
    record = {"conversations": [{"from": "gpt", "value": "...and so on."}, {"from": "human", "value": "Go on"},
                                {"from": "gpt", "value": "Next."}]}
    (sample,) = load_samples(write_jsonl(tmp_path / "pool.jsonl", [record]))
    assert sample.excluded is None and trained_turns(sample.messages) == [2]


def test_ids_come_from_the_id_field_or_the_row(tmp_path):
    rows = [{"id": "a", "text": "x"}, {"id": 7, "text": "y"}]
    assert [s.id for s in load_samples(write_jsonl(tmp_path / "ids.jsonl", rows))] == ["a", "7"]
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert [s.id for s in load_samples(path)] == ["0", "1"]


def test_parquet_and_saved_dataset_folders(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert [s.messages[1][1] for s in load_samples(tmp_path / "p.parquet")] == ["a0", "a1", "a2"]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert [s.messages[0][1] for s in load_samples(tmp_path / "saved")] == ["q0", "q1", "q2"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="several splits"):
        load_samples(tmp_path / "dict")


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "ok"}', '{"text": "broken"'], r"bad\.jsonl:2: invalid JSON"),
        (['{"question": "x", "answer": "y"}'], r"bad\.jsonl:1: unknown record format \(fields: answer, question\)"),
        (['{"text": "a"}', '{"prompt": "p", "completion": "c"}'], r":2: record is in 'prompt-completion' format"),
        (['{"prompt": "p", "completion": 3}'], r":1: field 'completion' must be a string"),
        (['{"messages": "hello"}'], r":1: field 'messages' must be a list"),
        (['{"messages": [{"role": "user", "content": 1}]}'], r"messages\[0\]\.content must be a string or a list"),
        (['{"messages": [{"role": "user", "content": [{"text": 3}]}]}'], r"messages\[0\]\.content\[0\] is a text"),
        (['{"messages": [{"role": "user", "content": [7]}]}'], r"messages\[0\]\.content\[0\] must be a string or"),
        (['{"conversations": [{"value": "hi"}]}'], r":1: conversations\[0\] must be an object with a string 'from'"),
        (['{"conversations": [{"from": "gpt", "value": 5}]}'], r"conversations\[0\]\.value must be a string"),
        (['{"id": 1, "text": "a"}', '{"id": "1", "text": "b"}'], r":2: duplicate id '1' \(first seen at .*:1\)"),
        (['{"id": 1, "text": "a"}', '{"text": "b"}'], r":2: some records have an 'id' field"),
        (['[1, 2]'], r":1: expected a JSON object"),
        ([], r"holds no records"),
    ],
)
def test_bad_records_name_the_file_line_and_field(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=message):
        load_samples(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="target file not found"):
        load_samples(tmp_path / "nope.jsonl", "target")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        load_samples(tmp_path / "binary.jsonl")
    (tmp_path / "bad.parquet").write_text(json.dumps({"text": "not parquet"}))
    with pytest.raises(DataError, match="cannot read parquet"):
        load_samples(tmp_path / "bad.parquet")


def test_samples_stream_one_record_at_a_time(tmp_path):
    from influence_distillation.data.records import iter_samples

    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{not json\n')
    stream = iter_samples(path)
    assert [next(stream).id, next(stream).id] == ["0", "1"]  # read before the bad line is reached
    with pytest.raises(DataError, match=r"pool.jsonl:3: invalid JSON"):
        next(stream)


def test_a_pool_that_changes_during_the_run_is_refused_before_any_output(tmp_path, model_dir, data_files,
                                                                        monkeypatch):
    import json

    from conftest import select_args

    from influence_distillation.cli import main

    pool, target = data_files
    out = tmp_path / "run"
    assert main(select_args(pool, target, model_dir("llama"), out, 5)) == 0
    before = (out / "manifest.json").read_text()
    selected = {json.loads(line)["prompt"] for line in (out / "selected.jsonl").read_text().splitlines()}
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    edited = tmp_path / "edited.jsonl"  # scored as the pool was; the selected rows are deleted before the write
    edited.write_text(pool.read_text())
    from influence_distillation.run import pipeline

    real = pipeline.selected_records

    def edit_then_read(*args):  # rows without ids: the remaining rows now carry the deleted rows' ids
        edited.write_text("".join(json.dumps(row) + "\n" for row in rows if row["prompt"] not in selected))
        return real(*args)

    monkeypatch.setattr(pipeline, "selected_records", edit_then_read)
    assert main(select_args(edited, target, model_dir("llama"), out, 5, "--overwrite")) == 2
    assert (out / "manifest.json").read_text() == before


def test_duplicate_ids_are_found_by_hash_and_confirmed_by_value(tmp_path, monkeypatch):
    from influence_distillation.data import records

    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "text": "a b"}) + "\n" for i in range(5)))
    monkeypatch.setattr(records, "_id_hash", lambda sample_id: 7)  # every id collides: none is a duplicate
    assert [s.id for s in load_samples(path)] == [f"s{i}" for i in range(5)]
    path.write_text(path.read_text() + json.dumps({"id": "s3", "text": "c"}) + "\n")
    with pytest.raises(DataError, match=r"pool.jsonl:6: duplicate id 's3' \(first seen at .*pool.jsonl:4\)"):
        load_samples(path)
