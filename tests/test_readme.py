"""The README's examples run as written: its Python blocks, and every command of its shell blocks, on a tiny model
saved where they expect one and synthetic data under the names they use."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, make_model, make_tokenizer, synthetic_pool, synthetic_target, write_jsonl

from influence_distillation.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def shell_commands() -> list[str]:
    """Every command of the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _workspace(tmp_path: Path) -> None:
    """The files the README's commands name: a model folder, a pool, targets and test records."""
    tokenizer = make_tokenizer()
    for folder in ("my-model", "models/my-causal-lm"):
        make_model("llama", len(tokenizer)).save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(1200))
    write_jsonl(tmp_path / "target.jsonl", synthetic_target(6))
    write_jsonl(tmp_path / "test.jsonl", synthetic_target(12, seed=7))


def test_every_shell_command_of_the_readme_is_known_here():
    """A new command in the README must be run by one of these tests (or be a set-up step checked below)."""
    kinds = {shlex.split(command)[0] for command in shell_commands()}
    assert kinds == {"pip", "make", "influence-distill", "torchrun"}, kinds
    makefile = (ROOT / "Makefile").read_text()
    for command in shell_commands():
        words = shlex.split(command)
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.M), command
        elif words[0] == "pip" and words[2].startswith("torch"):
            assert f"TORCH ?= {words[2]}" in makefile  # the README's pin is the one `make` installs


def test_readme_influence_distill_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path)
    ran = 0
    for command in shell_commands():
        words = shlex.split(command)
        if words[0] != "influence-distill" or words[1] == "evaluate":
            continue
        assert main([*words[1:], *(["--quiet"] if words[1] != "report" else [])]) == 0, command
        ran += 1
    assert ran >= 6
    printed = capsys.readouterr().out
    assert "| rds+ |" in printed and "| less |" in printed  # the dry run's peers
    assert (tmp_path / "compare.html").is_file() and (tmp_path / "runs/first/report.html").is_file()
    manifest = json.loads((tmp_path / "runs/first/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["landmarks"]["first"] == 60  # 5% of 1,200


@pytest.mark.slow
def test_readme_evaluate_and_torchrun_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path)
    commands = [shlex.split(command) for command in shell_commands()]
    first = next(w for w in commands if w[:2] == ["influence-distill", "select"] and "runs/first" in w
                 and "--dry-run" not in w)
    assert main([*first[1:], "--quiet"]) == 0  # what `evaluate` reads
    evaluate = [w for w in commands if w[:2] == ["influence-distill", "evaluate"]]
    distributed = [w for w in commands if w[0] == "torchrun"]
    assert evaluate and distributed
    for words in evaluate:
        assert main([*words[1:], "--quiet"]) == 0, words
        assert (tmp_path / "runs/first/eval/eval.json").is_file()
    for words in distributed:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", *words[1:], "--quiet"],
                                capture_output=True, text=True, env=ENV, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads((tmp_path / "runs/big/manifest.json").read_text())["status"] == "complete"


def python_blocks() -> dict[str, str]:
    """The README's ```python blocks by what they show: the library's API, and training on a selection."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    named = {"run": [b for b in blocks if "run_selection(" in b], "stages": [b for b in blocks if "propagate(" in b],
             "sft": [b for b in blocks if "SFTTrainer(" in b]}
    assert all(len(found) == 1 for found in named.values()) and len(blocks) == len(named), named
    return {name: found[0] for name, found in named.items()}


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = [python_blocks()["run"], python_blocks()["stages"]]
    monkeypatch.chdir(tmp_path)
    tokenizer = make_tokenizer()
    make_model("llama", len(tokenizer)).save_pretrained("models/my-causal-lm")
    tokenizer.save_pretrained("models/my-causal-lm")
    write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(400))
    write_jsonl(tmp_path / "target.jsonl", synthetic_target(6))
    namespace: dict = {}
    exec(compile(blocks[0], "README block 1", "exec"), namespace)
    assert len(namespace["best"]) == 5 and (tmp_path / "runs/first/manifest.json").is_file()
    exec(compile(blocks[1], "README block 2", "exec"), namespace)
    assert namespace["scores"].shape == (400, 6) and len(set(namespace["chosen"].tolist())) == 100


SELECTIONS = {  # a selected.jsonl in each format SFTTrainer reads as it is, as `select` writes it
    "prompt-completion": lambda r: r,
    "messages": lambda r: {"messages": [{"role": "user", "content": r["prompt"]},
                                        {"role": "assistant", "content": r["completion"]}]},
    "text": lambda r: {"text": f"{r['prompt']} {r['completion']}"},
}


@pytest.mark.parametrize("fmt", sorted(SELECTIONS))
def test_readme_trains_on_a_selection_with_trl(fmt, tmp_path, monkeypatch):
    """The README's SFTTrainer block, as written, on a tiny model and a 20-record selection: two epochs of three
    steps, the model saved; the loss on the completion of prompt/completion records, else on every token."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    tokenizer = make_tokenizer()
    make_model("llama", len(tokenizer)).save_pretrained("my-model")
    tokenizer.save_pretrained("my-model")
    (tmp_path / "runs/first").mkdir(parents=True)
    write_jsonl(tmp_path / "runs/first/selected.jsonl", [{**SELECTIONS[fmt](r), "id": f"p{i}", "score": 1.0 / (i + 1)}
                                                         for i, r in enumerate(synthetic_pool(20))])
    namespace: dict = {}
    exec(compile(python_blocks()["sft"], "README block sft", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 6 and all(torch.isfinite(torch.tensor(row["loss"]))
                                                  for row in trainer.state.log_history if "loss" in row)
    before, after = load_file(tmp_path / "my-model/model.safetensors"), load_file(
        tmp_path / "runs/first/sft/model.safetensors")
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    for row in trainer.train_dataset:  # what the README says of the loss: the completion's, else every token's
        masked = [label == -100 for label in row["labels"]]
        assert not masked[-1] and any(masked) == (fmt == "prompt-completion")
