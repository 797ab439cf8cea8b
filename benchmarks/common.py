"""What the benchmark scripts share: the stage benchmarks' data and options, random models and samples, timing, the
matmul roofline and analytic forward FLOPs, JSON files. Through the public API only, as every script here
(tests/test_benchmarks_room.py checks). The package is imported inside the functions that need it, so a script that
only writes files (bench_scale.py) also runs under an older checkout's `PYTHONPATH`, to time it against this one."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

IGNORE_INDEX = -100  # Hugging Face's label for "no loss here", as the library's

# Public configurations of the paper's models and of the demo's (random weights: timings depend on shapes only).
LAYOUTS = {
    "qwen2.5-1.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                         tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=32768)),
    "llama-2-7b": ("LlamaConfig", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                       tie_word_embeddings=False, max_position_embeddings=4096)),
    "smollm2-135m": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         tie_word_embeddings=True, rope_theta=100000.0,
                                         max_position_embeddings=8192)),
}


# The stage benchmarks' data: a pool (and targets) as `influence-distill select` reads them.

def suite_arguments(doc: str | None, samples: int) -> argparse.ArgumentParser:
    """The options every stage benchmark takes: the data, how many pool samples, length and threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/scale-sharegpt/data",
                        help="a folder with pool.jsonl and targets/NAME/target.jsonl: sharegpt_pool.py's (default; "
                        "ShareGPT at real instruction lengths) or the suite's (runs/suite/data, influence-distill "
                        "benchmark)")
    parser.add_argument("--samples", type=int, default=samples, help="pool samples to time (the first kept ones)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def load_suite(args: argparse.Namespace, path: str = "pool.jsonl", count: int | None = None):
    """(model, tokenizer, examples): SmolLM2-135M-Instruct and the first `count` (default --samples) kept tokenized
    records of `path` under --data, with torch set to --threads."""
    from influence_distillation import ModelConfig, load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(ModelConfig(path="smollm2-135m"))
    return model, tokenizer, tokenize_examples(args, tokenizer, path, count)


def tokenize_examples(args: argparse.Namespace, tokenizer, path: str, count: int | None = None) -> list:
    """The first `count` (default --samples) records of `path` under --data that can be trained on, tokenized (only
    as many as that takes: ShareGPT's whole set is 17,671 long conversations)."""
    from influence_distillation import load_samples, tokenize_samples

    samples, wanted, examples = load_samples(Path(args.data) / path), count or args.samples, []
    for start in range(0, len(samples), 256):
        examples += tokenize_samples(samples[start: start + 256], tokenizer, args.max_length, progress=False).examples
        if len(examples) >= wanted:
            break
    return examples[:wanted]


def by_length(examples: list, batch_size: int) -> list[list]:
    """Batches of similar length (stable order), as the pipeline forms them."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i]), i))
    return [[examples[i] for i in order[start: start + batch_size]] for start in range(0, len(order), batch_size)]


# Random models and samples.

def random_model(name: str, layers: int | None = None, device: str = "cpu"):
    """(model, depth): a random-weight float32 model of a `LAYOUTS` layout cut to `layers` decoder blocks (None: all),
    eager attention, eval mode; `depth` is the layout's own block count."""
    import transformers

    config_class, values = LAYOUTS[name]
    config = getattr(transformers, config_class)(**{**values, **({"num_hidden_layers": layers} if layers else {})},
                                                 attn_implementation="eager")
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval(), values["num_hidden_layers"]


def random_example(vocab: int, tokens: int, seed: int):
    """An `Example` of `tokens` random ids (none of the first three, which tokenizers keep for special tokens), the
    second half a completion with labels."""
    from influence_distillation import Example

    ids = torch.randint(3, vocab, (tokens,), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[: tokens // 2] = IGNORE_INDEX
    return Example(f"s{seed}", ids, labels, False)


# Timing and the roofline.

def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(work, repeats: int = 3, pick=min, warmup: bool = True) -> float:
    """Seconds of `work()`: `pick` (min, or statistics.median) of `repeats` timings after one untimed call; on a GPU
    each timing waits for the device."""
    if warmup:
        work()
    times = []
    for _ in range(max(1, repeats)):
        synchronize()
        start = time.perf_counter()
        work()
        synchronize()
        times.append(time.perf_counter() - start)
    return pick(times)


median = statistics.median


def matmul_peak(seconds: float = 3.0) -> float:
    """FLOP/s of a large float32 matmul on this machine (the roofline the stages are compared against)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - start)


def forward_flops(model, blocks: int, examples: list, trimmed: bool = False) -> float:
    """Analytic FLOPs of one forward pass of `model`'s first `blocks` decoder blocks over `examples`: 2 per weight per
    token plus 4·T·d per token per block for attention scores and values (embedding lookup, norms and head
    excluded). `trimmed`: the last block at the last token only, but for its keys and values (`model.last_token`)."""
    from influence_distillation.method import Layout

    layout = Layout.of(model)
    weights = layout.block_weights(blocks)
    hidden = model.config.hidden_size
    full = sum(2 * weights * len(e) + 4 * len(e) ** 2 * hidden * blocks / 2 for e in examples)
    every_position = layout.every_position[blocks - 1]
    if not trimmed or every_position is None:
        return full
    skipped = layout.blocks[blocks - 1] - every_position
    return full - sum(2 * skipped * (len(e) - 1) + 4 * len(e) ** 2 * hidden / 2 - 4 * len(e) * hidden
                      for e in examples)


# Files.

def write_json(path: Path, value) -> None:
    """Whole or not at all: a resumed benchmark never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2, default=float) + "\n")
    os.replace(partial, path)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)
