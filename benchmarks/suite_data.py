"""Shared by the stage benchmarks: the demo model and the benchmark suite's pool, tokenized."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples


def suite_arguments(doc: str | None, samples: int) -> argparse.ArgumentParser:
    """The options every stage benchmark takes: the suite's data, how many pool samples, length and threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/suite/data", help="the suite's data (influence-distill benchmark)")
    parser.add_argument("--samples", type=int, default=samples, help="pool samples to time")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def load_suite(args: argparse.Namespace, path: str = "pool.jsonl", count: int | None = None):
    """(model, tokenizer, examples): the first `count` (default --samples) tokenized records of `path` under --data,
    with torch set to --threads."""
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(ModelConfig(path="smollm2-135m"))
    return model, tokenizer, tokenize_examples(args, tokenizer, path, count)


def tokenize_examples(args: argparse.Namespace, tokenizer, path: str, count: int | None = None):
    samples = load_samples(Path(args.data) / path)
    return tokenize_samples(samples, tokenizer, args.max_length, progress=False).examples[: count or args.samples]
