"""A randomly initialised copy of a model's architecture, with its tokenizer: for timing where the weights cannot go.

Timings depend on tensor shapes, not on weight values, so a GPU machine that cannot hold or fetch SmolLM2's weights
times the same work on this copy (benchmarks/gpu_check.sh). Selections made with it mean nothing.

    python3 benchmarks/random_model.py --like ~/.cache/influence-distillation/smollm2-135m-instruct --out DIR
    # a larger layout with the same tokenizer (SmolLM2-1.7B's shapes, 1.7B parameters), saved in bfloat16:
    python3 benchmarks/random_model.py --like ... --out DIR --dtype bfloat16 \
        --set hidden_size=2048 intermediate_size=8192 num_hidden_layers=24 num_attention_heads=32 num_key_value_heads=32
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
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=INT",
                        help="config fields to change, e.g. num_hidden_layers=24 (another layout, same tokenizer)")
    parser.add_argument("--device", default="cpu", help="where to initialise it (cuda: seconds for a large layout)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the saved weights (bfloat16 halves the file of a large layout)")
    args = parser.parse_args()
    like, out = Path(args.like), Path(args.out)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(like)
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(config, key) or not value.isdigit():
            parser.error(f"--set {item}: expected KEY=INT with KEY a field of {like / 'config.json'}")
        setattr(config, key, int(value))
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copy(like / name, out / name)
    print(f"random {type(model).__name__} with {sum(p.numel() for p in model.parameters()):,} parameters in {out}")


if __name__ == "__main__":
    main()
