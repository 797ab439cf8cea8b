"""Propagation and selection at a million samples, streamed from disk.

Usage:
    .venv/bin/python benchmarks/bench_propagation_scale.py [--rows 1000000] [--dim 1024] [--landmarks 4096]
        [--targets 8] [--budget 10000] [--dir runs/scale]

Writes N synthetic embeddings (seeded Gaussian mixture, float32) to DIR/embeddings.npy once, then times, in this
process: the KRR fit on the landmarks, the chunked prediction of all N × t scores (embeddings read chunk by chunk
with `NpyRows`, scores written to a `.npy` memmap), and round-robin and top-k selection read back from that memmap.
Prints the time of each step and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from influence_distillation.artifacts import NpyRows
from influence_distillation.method.propagation import fit_kernel_ridge
from influence_distillation.method.selection import round_robin, top_k


def write_embeddings(path: Path, rows: int, dim: int, chunk: int = 1 << 15) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(64, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, chunk):
        count = min(chunk, rows - start)
        out[start : start + count] = centers[rng.integers(64, size=count)] + rng.normal(
            scale=0.5, size=(count, dim)).astype(np.float32)
        out.flush()
    del out


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--landmarks", type=int, default=4096)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--dir", default="runs/scale")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"embeddings-{args.rows}x{args.dim}.npy"
    if not path.is_file():
        started = time.perf_counter()
        write_embeddings(path, args.rows, args.dim)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.1f} GiB) in {time.perf_counter() - started:.0f} s "
              "(not timed below)")
    points = NpyRows(path)
    rng = np.random.default_rng(1)
    landmark_rows = np.sort(rng.choice(args.rows, size=args.landmarks, replace=False))
    times = {}

    started = time.perf_counter()
    landmarks = torch.from_numpy(np.stack([points[i : i + 1][0] for i in landmark_rows]))
    values = torch.from_numpy(rng.normal(size=(args.landmarks, args.targets)))
    krr = fit_kernel_ridge(landmarks, values)
    times["KRR fit (median bandwidth, Cholesky)"] = time.perf_counter() - started

    started = time.perf_counter()
    scores = np.lib.format.open_memmap(folder / "scores.npy", mode="w+", dtype=np.float64,
                                       shape=(args.rows, args.targets))
    krr.predict(points, chunk_size=args.chunk, out=scores)
    scores.flush()
    del scores
    times["predict N × t scores (streamed)"] = time.perf_counter() - started

    on_disk = np.load(folder / "scores.npy", mmap_mode="r")
    started = time.perf_counter()
    chosen = round_robin(on_disk, args.budget, seed=0)
    times["round-robin selection"] = time.perf_counter() - started
    started = time.perf_counter()
    top_k(on_disk, args.budget)
    times["top-k selection"] = time.perf_counter() - started
    assert len(set(chosen.tolist())) == args.budget

    print(f"\nN = {args.rows:,}, d_e = {args.dim}, landmarks = {args.landmarks}, targets = {args.targets}, "
          f"budget = {args.budget}, torch threads = {torch.get_num_threads()}\n")
    print("| step | seconds |\n|---|---|")
    for step, seconds in times.items():
        print(f"| {step} | {seconds:.1f} |")
    print(f"| **total** | {sum(times.values()):.1f} |")
    print(f"\npeak RSS of the process: {peak_gib():.2f} GiB")


if __name__ == "__main__":
    main()
