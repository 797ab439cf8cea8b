"""A large pool of real text that any machine with the package installed has: Python functions and their docstrings.

For timing at scale where BIG-bench 1.0.0 cannot be had (the package index here stopped serving it on 2026-12-05).
Cost depends on how many samples there are and how long they are, not on what they say, so this pool times the
same stages; its selections are not a quality measurement. Each record asks for the docstring of one function or class of the
standard library or of torch (both fixed by the install: the same pool on every machine), and the target is 32
functions of one held-out package (`torch.distributions`), which never appear in the pool. Lengths are capped like
the demo pool's, and records come in a seeded random order, so `pool-N.jsonl` are nested prefixes as in bench_scale:

    .venv/bin/python benchmarks/docstring_pool.py --out runs/scale-doc --sizes 2500,10000,20000
    .venv/bin/python benchmarks/bench_scale.py --out runs/scale-doc --sizes 20000 --methods default,rds+

The target folder is `targets/math` (the name bench_scale read before it defaulted to ShareGPT's `humaneval`); it is
the data's only target, so bench_scale takes it without `--target`.
"""

from __future__ import annotations

import argparse
import ast
import random
import sysconfig
from pathlib import Path

import torch
from common import write_jsonl

MAX_CHARS = 1200  # about 300 tokens a record, as the BIG-bench demo pool's cap was
TARGET_PACKAGE = "torch/distributions"
TARGET_SIZE = 32


def records_of(path: Path, root: Path) -> list[dict]:
    """One prompt/completion record per documented function or method of a source file."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    records = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            signature = f"def {node.name}({ast.unparse(node.args)})"
        elif isinstance(node, ast.ClassDef):
            signature = f"class {node.name}({', '.join(ast.unparse(base) for base in node.bases)})"
        else:
            continue
        doc = ast.get_docstring(node)
        if not doc or len(doc) < 20 or len(signature) > MAX_CHARS // 3:
            continue
        prompt = f"Write the docstring of this definition from the Python module `{module}`.\n\n{signature}:"
        completion = doc.strip()[:MAX_CHARS - len(prompt)]
        records.append({"id": f"{module}.{node.name}#{node.lineno}", "prompt": prompt, "completion": completion,
                        "task": ".".join(module.split(".")[:2])})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default="2500,10000,20000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    torch_root = Path(torch.__file__).parent.parent
    pool, target = [], []
    for root, files in ((stdlib, sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts
                                        and "test" not in p.parts and "tests" not in p.parts)),
                        (torch_root, sorted((torch_root / "torch").rglob("*.py")))):
        for path in files:
            rows = records_of(path, root)
            (target if TARGET_PACKAGE in path.as_posix() else pool).extend(rows)
    rng = random.Random(args.seed)
    seen, unique = set(), []
    for record in pool:  # one record per prompt text: overloads and copies say the same thing
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            unique.append(record)
    rng.shuffle(unique)
    rng.shuffle(target)
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(unique) < max(sizes):
        raise SystemExit(f"only {len(unique)} documented definitions, fewer than --sizes asks for ({max(sizes)})")
    data = Path(args.out) / "data"
    write_jsonl(data / "pool.jsonl", unique[:max(sizes)])
    write_jsonl(data / "targets" / "math" / "target.jsonl", target[:TARGET_SIZE])
    for size in sizes:
        write_jsonl(data / f"pool-{size}.jsonl", unique[:size])
    print(f"{len(unique)} documented definitions; wrote pools of {args.sizes} and a {TARGET_SIZE}-sample target to {data}")


if __name__ == "__main__":
    main()
