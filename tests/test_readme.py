"""The README's Python examples run as written (on a tiny model saved where they expect one)."""

import re
from pathlib import Path

from conftest import (
    make_model,
    make_tokenizer,
    synthetic_pool,
    synthetic_target,
    write_jsonl,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
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
