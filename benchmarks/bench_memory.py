"""Peak memory of a whole `select` against pool size: does RSS stay flat as the pool grows?

A tiny random Llama (2 blocks, hidden 64) with SmolLM2's tokenizer, and pools of N short synthetic samples (a
sentence of arithmetic, capitals or colours each); a fixed landmark count and budget, so only the pool grows. Every
size is one cold `influence-distill select` process with its own stage cache: peak RSS of the whole process (from
`/usr/bin/time`) and the manifest's peak per stage. Usage:

    .venv/bin/python benchmarks/bench_memory.py --out runs/memory [--sizes 10000,100000,1000000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

SETTINGS = ["--landmarks", "200", "--budget", "100", "--num-blocks", "2", "--grad-dim", "1024",
            "--quiet"]


def make_model(folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from influence_distillation.model.loading import SMOLLM2, resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(SMOLLM2))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def record(rng: random.Random) -> dict:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        return {"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}
    if kind == 1:
        country = rng.choice(["France", "Peru", "Japan", "Kenya", "Norway", "Canada", "Chile", "Egypt"])
        return {"prompt": f"Name the capital of {country}.", "completion": "It is a city in " + country + "."}
    colour = rng.choice(["red", "blue", "green", "yellow", "purple"])
    return {"prompt": f"Write a sentence about the colour {colour}.", "completion": f"The sky looked {colour}."}


def make_pool(path: Path, size: int, seed: int) -> Path:
    if not path.is_file():
        rng = random.Random(seed)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as handle:
            for _ in range(size):
                handle.write(json.dumps(record(rng)) + "\n")
        tmp.rename(path)
    return path


def measure(out: Path, model: Path, size: int, threads: int) -> dict:
    folder = out / f"n{size}"
    if (folder / "time.txt").is_file() and (folder / "run" / "manifest.json").is_file():
        return _result(folder, size)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = make_pool(out / f"pool-{size}.jsonl", size, seed=0)
    target = make_pool(out / "target.jsonl", 16, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = ["/usr/bin/time", "-f", "%e %M", "-o", str(folder / "time.txt"), sys.executable, "-m",
               "influence_distillation", "select", "--pool", str(pool), "--target", str(target), "--model",
               str(model), "--out", str(folder / "run"), "--cache-dir", str(folder / "cache"), *SETTINGS]
    subprocess.run(command, check=True, env=env)
    shutil.rmtree(folder / "cache", ignore_errors=True)  # shards: as large as the outputs, not needed after
    return _result(folder, size)


def _result(folder: Path, size: int) -> dict:
    seconds, kib = (folder / "time.txt").read_text().split()[-2:]
    manifest = json.loads((folder / "run" / "manifest.json").read_text())
    return {"size": size, "seconds": float(seconds), "peak_gib": int(kib) / 2**20,
            "stages": manifest["stages"], "stage_peak_gib": manifest["peak_memory_gib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/memory")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = make_model(out / "model")
    results = [measure(out, model, int(size), args.threads) for size in args.sizes.split(",")]
    (out / "memory.json").write_text(json.dumps(results, indent=2))
    stages = list(dict.fromkeys(name for r in results for name in r["stages"]))
    print("| pool | wall s | peak RSS GiB | " + " | ".join(f"{s} (GiB)" for s in stages) + " |")
    print("|---|---|---|" + "---|" * len(stages))
    for r in results:
        print(f"| {r['size']:,} | {r['seconds']:.0f} | {r['peak_gib']:.2f} | "
              + " | ".join(f"{r['stage_peak_gib'].get(s, float('nan')):.2f}" for s in stages) + " |")
    low = min(r["peak_gib"] for r in results)
    print(f"largest peak / smallest: {max(r['peak_gib'] for r in results) / low:.2f} (bar: within 1.15)")


if __name__ == "__main__":
    main()
