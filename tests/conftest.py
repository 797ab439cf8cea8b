"""Tiny models, a tiny tokenizer and synthetic data, all built here: the tests never download anything."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))
transformers.utils.logging.disable_progress_bar()  # fixtures' save_pretrained must not print into a test's stderr

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

COUNTRIES = ["France", "Spain", "Italy", "Peru", "Chile", "Japan", "Kenya", "Egypt", "Norway", "Canada"]
CAPITALS = ["Paris", "Madrid", "Rome", "Lima", "Santiago", "Tokyo", "Nairobi", "Cairo", "Oslo", "Ottawa"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]


def math_record(rng: random.Random) -> dict:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return {"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}


def capital_record(rng: random.Random) -> dict:
    i = rng.randrange(len(COUNTRIES))
    return {"prompt": f"Name the capital of {COUNTRIES[i]}.", "completion": f"The capital is {CAPITALS[i]}."}


def color_record(rng: random.Random) -> dict:
    c = rng.choice(COLORS)
    return {"prompt": f"Write a short sentence about the color {c}.", "completion": f"The sky looked {c} today."}


def synthetic_pool(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    makers = [math_record, capital_record, color_record]
    return [makers[i % 3](rng) for i in range(n)]


def synthetic_target(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [math_record(rng) for _ in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def make_tokenizer(chat_template: bool = True, extra: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained in memory on the synthetic corpus (vocabulary ≈ 400), and `extra` texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = []
    for record in synthetic_pool(300) + synthetic_target(50):
        corpus += [record["prompt"], record["completion"]]
    corpus += ["user assistant system User Assistant", "Hello there. How are you?", *extra]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(kind: str, vocab_size: int, seed: int = 0, layers: int = 3):
    """A tiny random causal LM of the given architecture family, eager attention, eval mode."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size, "attn_implementation": "eager", "bos_token_id": 0, "eos_token_id": 0,
              "pad_token_id": 0}
    if kind == "llama":
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, **common)
        model = LlamaForCausalLM(config)
    elif kind == "qwen2":
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, **common)
        model = Qwen2ForCausalLM(config)
    elif kind == "qwen3":  # RMSNorm on each query and key head
        config = Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=8, **common)
        model = Qwen3ForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=256, **common)
        model = GPT2LMHeadModel(config)
    elif kind == "neox":
        config = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                               max_position_embeddings=256, **common)
        model = GPTNeoXForCausalLM(config)
    else:
        raise ValueError(kind)
    return model.eval()


def adam_state_file(model_path, path: Path) -> Path:
    """An AdamW state after one step on random gradients for the model saved at `model_path` (for --method less and
    the Adam variant without a warm-up run)."""
    from transformers import AutoModelForCausalLM

    warm = AutoModelForCausalLM.from_pretrained(model_path)
    optimizer = torch.optim.AdamW(warm.named_parameters(), lr=1e-3)
    for p in warm.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    torch.save(optimizer.state_dict(), path)
    return path


DEVICES = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every available device: a test that takes it runs on the CPU and on each GPU (benchmarks/gpu_check.sh)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Save a tiny model + tokenizer per architecture once per session; returns a path factory."""
    made: dict[str, Path] = {}

    def get(kind: str = "llama", chat_template: bool = True) -> Path:
        key = f"{kind}-{chat_template}"
        if key not in made:
            tok = make_tokenizer(chat_template)
            path = tmp_path_factory.mktemp(key)
            make_model(kind, len(tok)).save_pretrained(path)
            tok.save_pretrained(path)
            made[key] = path
        return made[key]

    return get


@pytest.fixture
def data_files(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(36))
    target = write_jsonl(tmp_path / "target.jsonl", synthetic_target(4))
    return pool, target


# Shared by the command-line tests: a fast `select` invocation, its selection, and torchrun.
FAST = ["--landmarks", "12", "--num-blocks", "2", "--grad-dim", "256", "--quiet"]


def select_args(pool, target, model, out, budget=8, *extra):
    return ["select", "--pool", str(pool), "--target", str(target), "--model", str(model), "--out", str(out),
            "--budget", str(budget), *FAST, *extra]


def read_selected(out):
    return [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(ranks, args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "influence_distillation", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


def assert_same_selection(a: str, b: str) -> None:
    """Same samples in the same order; scores equal up to float32 rounding (ranks compute their shards with their
    own thread counts, and float sums depend on them), which the kernel ridge solve amplifies: a run resumed by two
    ranks under CI's one-thread AVX2 pass differed from a fresh one by 2.1e-5 relative (2026-12-05), so 1e-4; a
    wrong or missing shard moves scores by far more, and the order check stays exact. The synthetic pools repeat
    texts under different ids, and rounding may order two copies of one text either way: copies count as the same
    sample."""
    rows_a, rows_b = ([json.loads(line) for line in text.splitlines()] for text in (a, b))
    assert [{k: v for k, v in r.items() if k not in ("score", "id")} for r in rows_a] == \
        [{k: v for k, v in r.items() if k not in ("score", "id")} for r in rows_b]
    np.testing.assert_allclose([r["score"] for r in rows_a], [r["score"] for r in rows_b], rtol=1e-4, atol=1e-7)
