"""The dataset_info.json entry written beside selected.jsonl: for every record format, LLaMA-Factory's documented
keys only, fields that the records hold, and read the way LLaMA-Factory documents it, the same turns this package
scored."""

import json

import pytest
from conftest import write_jsonl

from influence_distillation.data.export import DATASET_NAME, llama_factory_info
from influence_distillation.data.records import load_samples

# LLaMA-Factory's data/README.md: the keys an entry may hold.
COLUMNS = {"alpaca": {"prompt", "query", "response", "history", "system", "tools"},
           "sharegpt": {"messages", "system", "tools"}}
TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}

RECORDS = {
    "messages": [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4"}]},
                 {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                               {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}],
    "conversations": [{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
                      {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                         {"from": "gpt", "value": "Hello"}]}],
    "conversations-user-assistant": [
        {"conversations": [{"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"}]},
        {"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}]}],
    "prompt-completion": [{"prompt": "2+2?", "completion": "4"}, {"prompt": "Hi", "completion": "Hello"}],
    "instruction-output": [{"instruction": "Add.", "input": "2+2", "output": "4"},
                           {"instruction": "Greet.", "output": "Hello"}],
    "instruction-output-no-input": [{"instruction": "Add 2 and 2.", "output": "4"}],
    "text": [{"text": "The sky is blue."}, {"text": "Grass is green."}],
}


def read_as_llama_factory(entry: dict, record: dict) -> list[tuple[str, str]]:
    """(role, text) turns as LLaMA-Factory's data/README.md describes reading `record` through `entry`."""
    columns = entry["columns"]
    if entry["formatting"] == "sharegpt":
        tags = entry["tags"]
        roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
        return [(roles[turn[tags["role_tag"]]], turn[tags["content_tag"]]) for turn in record[columns["messages"]]]
    prompt = "\n".join(record[columns[key]] for key in ("prompt", "query") if record.get(columns.get(key)))
    return [("user", prompt), ("assistant", record[columns["response"]])] if "response" in columns else [
        ("text", prompt)]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_the_entry_names_fields_the_selection_holds_and_reads_back_the_scored_turns(name, tmp_path):
    records = [{**record, "id": f"r{i}", "score": 0.5 - i} for i, record in enumerate(RECORDS[name])]
    write_jsonl(tmp_path / "selected.jsonl", records)
    info = llama_factory_info(records, "selected.jsonl")
    assert list(info) == [DATASET_NAME]
    entry = info[DATASET_NAME]
    assert entry["file_name"] == "selected.jsonl" and (tmp_path / entry["file_name"]).is_file()
    assert set(entry) <= {"file_name", "formatting", "columns", "tags"}
    assert set(entry["columns"]) <= COLUMNS[entry["formatting"]] and set(entry.get("tags", {})) <= TAGS
    for column in entry["columns"].values():
        assert any(column in record for record in records), column
    if entry["formatting"] == "sharegpt":
        turns = [turn for record in records for turn in record[entry["columns"]["messages"]]]
        assert all(entry["tags"]["role_tag"] in turn and entry["tags"]["content_tag"] in turn for turn in turns)
        spoken = {turn[entry["tags"]["role_tag"]] for turn in turns}
        assert {entry["tags"]["user_tag"], entry["tags"]["assistant_tag"]} <= spoken
    samples = load_samples(tmp_path / "selected.jsonl", "selection")
    for record, sample in zip(records, samples):
        read = read_as_llama_factory(entry, record)
        if sample.text is not None:
            assert read == [("text", sample.text)]
            continue
        ours = list(sample.messages)
        assert [role for role, _ in read] == [role for role, _ in ours] and read[-1] == ours[-1]
        assert all(theirs.replace("\n", "") == mine.replace("\n", "") for (_, theirs), (_, mine) in zip(read, ours))


def test_the_entry_follows_the_spelling_of_sharegpt_speakers():
    records = [{"conversations": [{"from": "Human", "value": "a"}, {"from": "GPT", "value": "b"}]}] * 2 + [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]
    tags = llama_factory_info(records, "selected.jsonl")[DATASET_NAME]["tags"]
    assert (tags["user_tag"], tags["assistant_tag"], tags["system_tag"]) == ("Human", "GPT", "system")


def test_an_empty_selection_has_no_entry():
    assert llama_factory_info([], "selected.jsonl") == {}
    json.dumps(llama_factory_info(RECORDS["text"], "selected.jsonl"))  # plain JSON
