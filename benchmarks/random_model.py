"""A randomly initialised copy of a model's architecture, with its tokenizer: for timing where the weights cannot go.

Timings depend on tensor shapes, not on weight values, so a GPU machine that cannot hold or fetch SmolLM2's weights
times the same work on this copy (benchmarks/gpu_check.sh). Selections made with it mean nothing.

    python3 benchmarks/random_model.py --like ~/.cache/influence-distillation/smollm2-135m-instruct --out DIR
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", required=True, help="folder with config.json and the tokenizer files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    like, out = Path(args.like), Path(args.out)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like))
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copy(like / name, out / name)
    print(f"random {type(model).__name__} with {sum(p.numel() for p in model.parameters()):,} parameters in {out}")


if __name__ == "__main__":
    main()
