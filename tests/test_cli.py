"""End-to-end runs through the command line on tiny models and synthetic JSONL fixtures."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import make_model, select_args

from influence_distillation.cli import Ranged, build_parser, main, number
from influence_distillation.config import SelectConfig
from influence_distillation.errors import ConfigError
from influence_distillation.options import from_dict


@pytest.mark.parametrize("kind, chat_template", [("llama", True), ("gpt2", False), ("qwen2", True)])
def test_select_writes_every_output(kind, chat_template, model_dir, data_files, tmp_path):
    pool, target = data_files
    out = tmp_path / "run"
    assert main(select_args(pool, target, model_dir(kind, chat_template), out, 8)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    # 12 random landmarks, then as many verification landmarks as the budget (the default --verify -1).
    assert manifest["counts"]["pool"]["kept"] == 36 and manifest["counts"]["landmarks"] == 20
    assert manifest["landmarks"] == {"first": 12, "verified": 8, "near_targets": 4, "strategy": "random"}
    assert manifest["config"]["selection"]["budget"] == 8
    on_gpu = torch.cuda.is_available()  # the default --device auto; the batch sizes follow it
    assert manifest["batch_sizes"] == {"gradients": 16 if on_gpu else 1, "embeddings": 64 if on_gpu else 8}
    assert manifest["config"]["gradients"]["batch_size"] is None  # as asked: a replay resolves it on its device
    assert set(manifest["stages"]) >= {"embeddings", "landmark_gradients", "verification", "target_gradients",
                                       "propagation"}
    peaks = list(manifest["peak_memory_gib"].values())  # the process's peak so far, at the end of each stage
    assert set(manifest["peak_memory_gib"]) == set(manifest["stages"]) and 0 < peaks[0] and peaks == sorted(peaks)
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    pool_records = [json.loads(line) for line in pool.read_text().splitlines()]
    assert len(selected) == 8 and len({row["id"] for row in selected}) == 8
    for row in selected:
        original = pool_records[int(row["id"])]
        assert {k: row[k] for k in original} == original and isinstance(row["score"], float)
    info = json.loads((out / "dataset_info.json").read_text())  # LLaMA-Factory reads the selection as it is
    assert info == {"selected": {"file_name": "selected.jsonl", "formatting": "alpaca",
                                 "columns": {"prompt": "prompt", "response": "completion"}}}
    assert "dataset_info.json" in manifest["outputs"]
    scores = pq.read_table(out / "scores.parquet").to_pydict()
    assert scores["id"] == [str(i) for i in range(36)]
    assert sum(scores["selected"]) == 8 and sum(scores["landmark"]) == 20
    ranked = sorted((r, i) for r, i in zip(scores["rank"], scores["id"]) if r >= 0)
    assert [i for _, i in ranked] == [row["id"] for row in selected]
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (36, manifest["dimensions"]["embedding"]) and np.isfinite(embeddings).all()
    assert np.load(out / "target_scores.npy").shape == (36, 4)


def test_a_sharegpt_pool_with_untrainable_records_runs_to_the_end(model_dir, tmp_path):
    """ShareGPT as users hold it: assistant-first conversations (trained from the first user turn on), an empty
    assistant turn, an empty conversation, an image part and a human-only record are listed in excluded.jsonl with
    their reasons, and the rest is selected from."""
    from conftest import synthetic_pool, synthetic_target, write_jsonl

    def conversation(record, opening=None):
        turns = [{"from": "human", "value": record["prompt"]}, {"from": "gpt", "value": record["completion"]}]
        return [{"from": "gpt", "value": opening}, *turns] if opening else turns

    pool = [{"id": f"c{i}", "conversations": conversation(r, "(continued)" if i % 4 == 0 else None)}
            for i, r in enumerate(synthetic_pool(32))]
    broken = {"empty-turn": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}],
              "empty": [], "human-only": [{"from": "human", "value": "Anyone?"}],
              "image": [{"from": "human", "value": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                        {"from": "gpt", "value": "A cat."}]}
    pool[5:5] = [{"id": name, "conversations": turns} for name, turns in broken.items()]
    pool += [{"id": f"c{i}", "conversations": []} for i in range(32)]  # empty copies under used ids, as in ShareGPT
    target = [{"messages": [{"role": "user", "content": [{"type": "text", "text": r["prompt"]}]},
                            {"role": "assistant", "content": r["completion"]}]} for r in synthetic_target(4)]
    out = tmp_path / "run"
    assert main(select_args(write_jsonl(tmp_path / "pool.jsonl", pool), write_jsonl(tmp_path / "target.jsonl", target),
                            model_dir("llama"), out, 6)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["pool"]["kept"] == 32
    excluded = {row["id"]: row["reason"] for row in map(json.loads, (out / "excluded.jsonl").read_text().splitlines())}
    assert excluded == {"empty-turn": "empty assistant turn", "empty": "no assistant turn after a user turn",
                        "human-only": "no assistant turn after a user turn",
                        "image": "non-text content part (image_url)",
                        **{f"c{i}": "no assistant turn after a user turn" for i in range(32)}}
    assert manifest["counts"]["pool"]["excluded_by_reason"] == {"empty assistant turn": 1,
                                                                "no assistant turn after a user turn": 34,
                                                                "non-text content part (image_url)": 1}
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 6 and not {row["id"] for row in selected} & set(broken)
    entry = json.loads((out / "dataset_info.json").read_text())["selected"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "conversations"}
    assert (entry["tags"]["user_tag"], entry["tags"]["assistant_tag"]) == ("human", "gpt")
    assert all(row["conversations"] == pool[int(row["id"][1:]) + 4 * (int(row["id"][1:]) >= 5)]["conversations"]
               for row in selected)  # the trainable copy, not the empty one under the same id
    # Two copies that can both be trained on under one id stay an error.
    pool[-1] = pool[0]
    assert main(select_args(write_jsonl(tmp_path / "dup.jsonl", pool), tmp_path / "target.jsonl", model_dir("llama"),
                            tmp_path / "dup", 6)) == 2


def test_same_seed_gives_byte_identical_selection_and_manifest_replays(model_dir, data_files, tmp_path):
    pool, target = data_files
    model = model_dir("llama")
    assert main(select_args(pool, target, model, tmp_path / "a", 10)) == 0
    assert main(select_args(pool, target, model, tmp_path / "b", 10)) == 0
    first = (tmp_path / "a" / "selected.jsonl").read_bytes()
    assert first == (tmp_path / "b" / "selected.jsonl").read_bytes()
    assert main(["select", "--config", str(tmp_path / "a" / "manifest.json"), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    assert (tmp_path / "c" / "selected.jsonl").read_bytes() == first
    # Re-running the same configuration into its own directory is allowed and reproduces it.
    assert main(select_args(pool, target, model, tmp_path / "a", 10)) == 0
    assert (tmp_path / "a" / "selected.jsonl").read_bytes() == first


@pytest.mark.parametrize("variant", [(), ("--order", "2", "--selection", "weights"),
                                     ("--grad-batch-size", "4", "--grad-projection", "kronecker"),
                                     ("--embedding-method", "gradient"), ("--method", "rds+")],
                         ids=["default", "order2", "kronecker", "gradient-embedding", "rds"])
def test_every_device_selects_what_the_cpu_selects(variant, device, model_dir, data_files, tmp_path):
    pool, target = data_files
    runs = {}
    for where in dict.fromkeys([str(device), "cpu"]):
        out = tmp_path / where.replace(":", "-")
        assert main(select_args(pool, target, model_dir("llama"), out, 8, "--device", where, *variant)) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["environment"]["device"] == where
        assert ("gpu_peak_memory_gib" in manifest) == (where != "cpu")
        runs[where] = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    ours, cpu = runs[str(device)], runs["cpu"]
    assert [row["id"] for row in ours] == [row["id"] for row in cpu]
    np.testing.assert_allclose([row["score"] for row in ours], [row["score"] for row in cpu], rtol=1e-3, atol=1e-6)


def test_config_file_values_and_flag_overrides(model_dir, data_files, tmp_path):
    pool, target = data_files
    config = {"pool": str(pool), "target": str(target), "model": {"path": str(model_dir("llama"))},
              "selection": {"budget": 5, "strategy": "top-k"}, "landmarks": {"count": 0.5},
              "embedding": {"num_blocks": 1}, "gradients": {"proj_dim": 128}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["select", "--config", str(tmp_path / "config.yaml"), "--out", str(out), "--budget", "6",
                 "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["selection"] == {"budget": 6, "strategy": "top-k", "answer_floor": 0.25}
    assert manifest["landmarks"]["first"] == 18 and manifest["config"]["embedding"]["num_blocks"] == 1
    assert manifest["counts"]["landmarks"] == 18 + 6  # verification: as many as the budget
    scores = pq.read_table(out / "scores.parquet").to_pydict()
    chosen = [s for s, flag in zip(scores["score"], scores["selected"]) if flag]
    assert min(chosen) >= max(s for s, flag in zip(scores["score"], scores["selected"]) if not flag)


def test_adam_preconditioning_end_to_end(model_dir, data_files, tmp_path):
    pool, target = data_files
    path = model_dir("llama")
    model = make_model("llama", 400)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    optimizer = torch.optim.AdamW(model.named_parameters(), lr=1e-3)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    # The state describes the saved model's parameters; the model itself is reloaded unchanged from `path`.
    assert main(select_args(pool, target, path, tmp_path / "plain", 6)) == 0
    assert main(select_args(pool, target, path, tmp_path / "adam", 6, "--optimizer-state",
                            str(tmp_path / "optimizer.pt"))) == 0
    manifest = json.loads((tmp_path / "adam" / "manifest.json").read_text())
    assert manifest["influence"]["variant"] == "adamw"
    plain = np.load(tmp_path / "plain" / "target_scores.npy")
    adam = np.load(tmp_path / "adam" / "target_scores.npy")
    assert not np.allclose(plain, adam)


def test_paper_starts_from_the_papers_settings_and_flags_still_override(model_dir, data_files, tmp_path):
    from influence_distillation.cli import build_parser, config_from_args
    from influence_distillation.config import PAPER

    pool, target = data_files
    common = ["select", "--pool", str(pool), "--target", str(target), "--model", "m", "--out", "o", "--budget", "5"]
    default = config_from_args(build_parser().parse_args(common))
    paper = config_from_args(build_parser().parse_args([*common, "--paper"]))
    assert (default.embedding.num_blocks, default.landmarks.count, default.gradients.projection) == (2, -1, "countsketch")
    for section, fields in PAPER.items():
        for name, value in fields.items():
            assert getattr(getattr(paper, section), name) == value, (section, name)
    assert (paper.embedding.num_blocks, paper.embedding.num_tangents, paper.landmarks.count, paper.landmarks.verify,
            paper.gradients.projection) == (4, 2, 4096, 0, "srht")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"landmarks": {"verify": 7}}))
    mixed = config_from_args(build_parser().parse_args([*common, "--paper", "--config", str(tmp_path / "c.yaml"),
                                                        "--num-blocks", "3"]))
    assert (mixed.embedding.num_blocks, mixed.embedding.num_tangents) == (3, 2)  # the flag, then --paper
    assert (mixed.landmarks.verify, mixed.landmarks.count) == (7, 4096)  # the file, then --paper


@pytest.mark.parametrize("value", ["0", "-0.5", "-2"])
def test_landmarks_other_than_a_count_a_fraction_or_the_rule_are_refused(value, model_dir, data_files, tmp_path,
                                                                        capsys):
    pool, target = data_files
    try:  # below -1 argparse refuses it; 0 and negative fractions the config check
        code = main(["select", "--pool", str(pool), "--target", str(target), "--model", str(model_dir("llama")),
                     "--out", str(tmp_path / "o"), "--budget", "4", "--landmarks", value, "--quiet"])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--landmarks" in err and not (tmp_path / "o" / "manifest.json").exists(), err


def test_output_directory_guards(model_dir, data_files, tmp_path, capsys):
    pool, target = data_files
    model = model_dir("llama")
    out = tmp_path / "run"
    assert main(select_args(pool, target, model, out, 5)) == 0
    assert main(select_args(pool, target, model, out, 7)) == 2
    assert "holds a run with a different configuration" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["config"]["selection"]["budget"] == 5
    assert main(select_args(pool, target, model, out, 7, "--overwrite")) == 0
    assert len((out / "selected.jsonl").read_text().splitlines()) == 7
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main(select_args(pool, target, model, foreign, 5)) == 2
    assert "is not an influence-distill run" in capsys.readouterr().err


BAD_INPUTS = {
    "missing pool": (lambda d: {"pool": d / "nope.jsonl"}, "pool file not found"),
    "malformed line": (lambda d: {"pool": write_bad(d, '{"prompt": "a", "completion": "b"}\n{"prompt": \n')},
                       r"bad\.jsonl:2: invalid JSON"),
    "unknown format": (lambda d: {"pool": write_bad(d, '{"question": "a"}\n')}, "unknown record format"),
    "empty target": (lambda d: {"target": write_bad(d, "")}, "target file .* holds no records"),
    "budget above pool": (lambda d: {"budget": 37}, "--budget 37 exceeds the 36 selectable pool samples"),
    "not a model": (lambda d: {"model": d}, "not a Hugging Face model directory"),
    "empty pool file": (lambda d: {"pool": write_bad(d, "\n\n")}, "pool file .* holds no records"),
    "unreadable pool (a folder that is no dataset)": (lambda d: {"pool": d}, "not a datasets.save_to_disk folder"),
    "binary pool": (lambda d: {"pool": write_bytes(d, b"\x89PNG\r\n\x1a\n\x00\xff")}, "not UTF-8"),
    "mixed record formats": (lambda d: {"pool": write_bad(d, '{"text": "a b c"}\n{"prompt": "p", '
                                                          '"completion": "c"}\n')}, r":2: record is in"),
    "wrong field type": (lambda d: {"pool": write_bad(d, '{"prompt": ["p"], "completion": "c"}\n')},
                         "field 'prompt' must be a string"),
    "empty completion": (lambda d: {"target": write_bad(d, '{"prompt": "p", "completion": ""}\n')},
                         r"none of its 1 samples has a trainable token .*\(empty completion: 1\)"),
    "duplicate ids": (lambda d: {"pool": write_bad(d, '{"id": 1, "text": "a b"}\n{"id": 1, "text": "c d"}\n')},
                      "duplicate id '1'"),
    "target with no trainable token": (lambda d: {"target": write_bad(
        d, '{"prompt": "' + "word " * 400 + '", "completion": "c"}\n'), "extra": ["--max-length", "64"]},
        "target .* none of its 1 samples has a trainable token within --max-length 64"),
    "every pool sample truncated away": (lambda d: {"pool": write_bad(d, "".join(
        '{"prompt": "' + "word " * 300 + f'{i}", "completion": "c"}}\n' for i in range(3))),
        "extra": ["--max-length", "64"]}, "pool .* none of its 3 samples has a trainable token"),
    "no chat template and no fallback": (lambda d: {"model": "gpt2-no-template", "extra": ["--no-template-fallback"]},
                                         "tokenizer has no chat template"),
    "optimizer state of another model": (lambda d: {"extra": ["--optimizer-state", str(foreign_state(d))]},
                                         "does not match the model"),
    "invalid parameter regex": (lambda d: {"extra": ["--grad-params", "mlp[("]}, "invalid regular expression"),
    "verification share above one": (lambda d: {"extra": ["--verify-neighbours", "1.5"]},
                                     "--verify-neighbours is a share of the verification landmarks, from 0 to 1"),
    "config file with an unknown key": (lambda d: {"extra": ["--config", str(write_config(d))]},
                                        "unknown key 'num_block'; did you mean 'num_blocks'"),
}


def write_config(directory):
    path = directory / "config.yaml"
    path.write_text("embedding:\n  num_block: 2\n")
    return path


def write_bytes(directory, data):
    path = directory / "bad.jsonl"
    path.write_bytes(data)
    return path


def foreign_state(directory):
    import torch

    layer = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer.weight.grad, layer.bias.grad = torch.ones(3, 3), torch.ones(3)
    optimizer.step()
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    return directory / "optimizer.pt"


def write_bad(directory, text):
    path = directory / "bad.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_give_one_line_errors_and_no_finished_output(case, model_dir, data_files, tmp_path, capsys):
    pool, target = data_files
    values = {"pool": pool, "target": target, "model": model_dir("llama"), "budget": 5, "extra": []}
    change, message = BAD_INPUTS[case]
    values.update(change(tmp_path))
    if values["model"] == "gpt2-no-template":
        values["model"] = model_dir("gpt2", chat_template=False)
    out = tmp_path / "run"
    code = main(select_args(values["pool"], values["target"], values["model"], out, values["budget"],
                            *values["extra"]))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("influence-distill: error: ")
    import re

    assert re.search(message, err), err
    assert not (out / "manifest.json").exists()


def test_disk_full_while_writing_a_shard(model_dir, data_files, tmp_path, capsys, monkeypatch):
    import errno

    from influence_distillation.run import shards

    pool, target = data_files
    written = []

    def full_after_two(path, array):  # two shards fit; the row cache's copies are not counted
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        if path.name.startswith("shard-"):
            written.append(path)
        real_write(path, array)

    real_write = shards.write_npy
    monkeypatch.setattr(shards, "write_npy", full_after_two)
    out = tmp_path / "run"
    code = main(select_args(pool, target, model_dir("llama"), out, 5, "--shard-rows", "5"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "the disk is full" in err and "2 finished shards" in err
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / "stages").glob("*/shard-*.npy")) == ["shard-000000.npy", "shard-000001.npy"]
    assert not list((out / "stages").glob("*/.*.tmp"))
    monkeypatch.setattr(shards, "write_npy", real_write)  # space freed: the re-run completes from shard 2
    assert main(select_args(pool, target, model_dir("llama"), out, 5, "--shard-rows", "5")) == 0


def test_console_script_exit_code_and_non_causal_model(tmp_path, data_files):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    pool, target = data_files
    result = subprocess.run(
        [sys.executable, "-m", "influence_distillation", *select_args(pool, target, tmp_path / "bert",
                                                                     tmp_path / "run", 5)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"influence-distill: error: --model {tmp_path / 'bert'}: architectures ['BertModel'] do not include a "
        "causal LM (…ForCausalLM or …LMHeadModel)"
    ]
    assert "Traceback" not in result.stderr


def test_dry_run_estimates_every_stage_and_refuses_what_cannot_fit(model_dir, data_files, tmp_path, capsys,
                                                                  monkeypatch):
    from influence_distillation.run import preflight

    pool, target = data_files
    out = tmp_path / "run"
    assert main(select_args(pool, target, model_dir("llama"), out, 5, "--dry-run")) == 0
    printed = capsys.readouterr().out
    for stage in ("embeddings", "target gradients", "landmark gradients", "propagation", "**total**"):
        assert f"| {stage} |" in printed
    assert "the run fits this machine" in printed and not out.exists()
    assert main(select_args(pool, target, model_dir("llama"), out, 5, "--dry-run", "--embedding-method", "gradient")) == 0
    assert "| embeddings |" in capsys.readouterr().out
    monkeypatch.setattr(preflight, "available_memory", lambda: 1e6)
    assert main(select_args(pool, target, model_dir("llama"), out, 5, "--dry-run")) == 2
    assert "exceeds the 0.0 GiB available" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["select", "warmup", "evaluate", "demo", "benchmark"])
def test_every_help_page_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: influence-distill " + command in capsys.readouterr().out


def _number_options() -> list[tuple[str, argparse.Action]]:
    """Every (command, action) that takes a number, read from the parser itself, so that an option added later is
    walked too."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [(name, action) for name, sub in commands.choices.items() for action in sub._actions
            if action.option_strings and (isinstance(action.type, Ranged) or action.type in (int, float, number))]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_number_option_of_any_command_accepts_nan_or_infinity(value, capsys):
    options = [(command, action.option_strings[0]) for command, action in _number_options()
               if action.type.kind is float]
    assert ("select", "--ridge") in options and ("select", "--learning-rate") in options
    for command, flag in options:
        with pytest.raises(SystemExit) as exit_info:
            main([command, f"{flag}={value}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2, (command, flag)
        assert f"argument {flag}" in err[-1] and "finite number" in err[-1], (command, flag, err)


def test_a_config_file_with_nan_is_refused_by_field(model_dir, data_files, tmp_path, capsys):
    pool, target = data_files
    config = tmp_path / "run.yaml"
    config.write_text("propagation:\n  ridge: .nan\n")
    code = main(["select", "--config", str(config), "--pool", str(pool), "--target", str(target),
                 "--model", str(model_dir("llama")), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the fixture's model-writing progress
    assert code == 2 and err.startswith("influence-distill: error:") and "propagation.ridge: must be a finite" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_every_number_option_of_every_command_is_range_checked_at_parse_time(capsys):
    options = _number_options()
    assert len(options) > 30 and all(isinstance(action.type, Ranged) for _, action in options), \
        [action.option_strings for _, action in options if not isinstance(action.type, Ranged)]
    for command, action in options:
        flag, minimum, kind = action.option_strings[0], action.type.metadata.get("minimum"), action.type.kind
        if minimum is None:  # the default range: positive
            invalid, smallest = [0, -5], 1
        else:
            invalid, smallest = [minimum - (1 if kind is int else 0.5)], minimum
        for value in invalid:
            with pytest.raises(SystemExit) as exit_info:
                main([command, f"{flag}={value}"])
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert exit_info.value.code == 2 and f"argument {flag}" in err and "must be" in err, (command, flag, err)
        assert action.type(str(smallest)) == smallest  # the smallest valid value parses


def test_configs_built_in_python_and_config_files_get_the_same_range_checks(tmp_path):
    config = SelectConfig(pool="p", target="t", out="o")
    config.selection.budget, config.model.path = 3, "m"
    config.propagation.ridge = 0.0
    with pytest.raises(ConfigError, match="PropagationConfig.ridge must be greater than 0, got 0.0"):
        config.validate()
    with pytest.raises(ConfigError, match=r"config.landmarks.verify: must be at least -1, got -2"):
        from_dict(SelectConfig, {"landmarks": {"verify": -2}})
    assert from_dict(SelectConfig, {"landmarks": {"verify": -1}}).landmarks.verify == -1
