"""Per-stage costs of the selection pipeline, with the alternatives each design choice was measured against.

Usage:
    .venv/bin/python benchmarks/bench_stages.py            # SmolLM2-135M shapes, random weights
    .venv/bin/python benchmarks/bench_stages.py --quick    # smaller sizes, a minute or so
    .venv/bin/python benchmarks/bench_stages.py --quick --profile   # and where one per-sample gradient goes
    .venv/bin/python benchmarks/bench_stages.py --model DIR
    python3 benchmarks/bench_stages.py --device cuda     # on a GPU (benchmarks/gpu_check.sh)

Timings depend on tensor shapes, not weight values, so by default the model is a randomly initialised Llama with
SmolLM2-135M-Instruct's exact configuration (30 blocks, d_model 576, MLP 1536, 9/3 heads, vocabulary 49152).
Every comparison is run side by side in one process; each number is the median of `--repeats` runs. Ours is always
the library's own code, through its public API: the run's JVP embedder, projectors and per-sample gradients.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch
from common import median, random_example, random_model, synchronize
from common import timed as timed_with
from torch.func import functional_call, jvp

from influence_distillation import GradientConfig, collate, truncated_backbone
from influence_distillation.method import (
    HadamardProjector,
    JvpEmbedder,
    fit_kernel_ridge,
    flat_gradient,
    gradient_space,
    only_requires_grad,
    projected_gradients,
    select_parameters,
)


def timed(fn, repeats: int) -> float:
    """The median of `repeats` timings after a warm-up."""
    return timed_with(fn, repeats, pick=median)


def butterfly_fwht(x: torch.Tensor) -> torch.Tensor:
    """Radix-2 in-torch Walsh–Hadamard transform: the textbook alternative to the Kronecker-matmul form."""
    batch, n = x.shape
    h = 1
    while h < n:
        x = x.view(batch, n // (2 * h), 2, h)
        x = torch.cat((x[:, :, :1] + x[:, :, 1:], x[:, :, :1] - x[:, :, 1:]), dim=2)
        h *= 2
    return x.reshape(batch, n) / math.sqrt(n)


def random_examples(count: int, length: int, vocab: int) -> list:
    return [random_example(vocab, length, seed) for seed in range(count)]


def embedder(backbone, tangents: int, batch: int, seed: int = 0) -> JvpEmbedder:
    """The run's JVP embedder (as `method.make_embedder` builds it: tangents drawn once, batches of similar length),
    its exact outputs kept (m·d ≤ d_e: no projection)."""
    return JvpEmbedder(backbone, tangents, 4096, seed, batch_size=batch)


def bench_jvp(model, args, rows):
    examples = random_examples(args.batch, args.length, model.config.vocab_size)
    batch = collate(examples, 0).to(args.device)
    for blocks in args.blocks:
        backbone = truncated_backbone(model, blocks)
        params = dict(backbone.named_parameters())
        generator = torch.Generator().manual_seed(0)
        tangents = [{k: torch.randn(p.shape, generator=generator).to(p) for k, p in params.items()}
                    for _ in range(args.tangents)]
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "position_ids": batch.position_ids, "use_cache": False}
        ours = embedder(backbone, args.tangents, args.batch)
        singles = [embedder(backbone, 1, args.batch, seed=j) for j in range(args.tangents)]

        def forward_only():
            with torch.no_grad():
                backbone(**inputs)

        def vmapped():
            ours(examples)

        def loop_over_tangents():  # the same computation, one tangent at a time: the primal is recomputed m times
            for single in singles:
                single(examples)

        def naive():  # one tangent at a time, tangent on the embedding matrix inside the forward pass
            with torch.no_grad():
                for tangent in tangents:
                    jvp(lambda p: functional_call(backbone, p, args=(), kwargs=inputs).last_hidden_state,
                        (params,), (tangent,))

        per = args.batch
        base = timed(forward_only, args.repeats) / per
        ours = timed(vmapped, args.repeats) / per
        loop = timed(loop_over_tangents, args.repeats) / per
        textbook = timed(naive, args.repeats) / per
        rows.append((f"JVP K={blocks} m={args.tangents} B={per} T={args.length}", "vmap over tangents (ours)",
                     ours, f"loop over tangents {loop:.3g} s ({loop / ours:.2f}x ours); naive loop with the "
                           f"embedding tangent inside {textbook:.3g} s ({textbook / ours:.2f}x); "
                           f"plain forward of K blocks {base:.3g} s"))
        if torch.device(args.device).type == "cuda":  # the GPU's default JVP batch
            wide = embedder(backbone, args.tangents, 64)
            wide_examples = random_examples(64, args.length, model.config.vocab_size)
            seconds = timed(lambda: wide(wide_examples), args.repeats) / 64
            rows.append((f"JVP K={blocks} m={args.tangents} B=64 T={args.length}", "vmap over tangents (ours)",
                         seconds, f"{ours / seconds:.2f}x faster a sample than B={per}"))


def bench_projection(model, args, rows):
    params = select_parameters(model, "mlp-down")
    size = sum(p.numel() for p in params.values())
    projector = HadamardProjector(size, args.grad_dim, seed=0)
    padded = projector.padded_dim
    # Ours through the SRHT of an input already of the padded length: signs, the Kronecker-matmul transform and the
    # subsampling, against the butterfly's transform alone (so the ratio is if anything low for ours).
    square = HadamardProjector(padded, args.grad_dim, seed=0)
    x = torch.randn(args.chunk, padded, device=args.device)
    ours = timed(lambda: square(x), args.repeats) / args.chunk
    naive = timed(lambda: butterfly_fwht(x), args.repeats) / args.chunk
    rows.append((f"WHT n=2^{padded.bit_length() - 1} (D={size:,}) chunk={args.chunk}",
                 "Kronecker matmuls (ours, in the SRHT)", ours, f"{naive / ours:.1f}x faster than radix-2 butterfly "
                                                                f"({naive:.3g} s)"))
    g = torch.randn(args.chunk, size, device=args.device)
    full = timed(lambda: projector(g), args.repeats) / args.chunk
    rows.append((f"SRHT D={size:,} -> k_p={args.grad_dim}", "signs + WHT + subsample", full, "per gradient"))
    sketch = gradient_space(model, GradientConfig(params="mlp-down", proj_dim=args.grad_dim), 0).projector
    counted = timed(lambda: sketch(g), args.repeats) / args.chunk
    rows.append((f"CountSketch D={size:,} -> k_p={args.grad_dim}", "signed buckets (the default)", counted,
                 f"per gradient; {full / counted:.1f}x faster than the SRHT"))


def bench_gradients(model, args, rows):
    params = select_parameters(model, "mlp-down")
    examples = random_examples(args.grad_samples, args.length, model.config.vocab_size)

    def run():
        with only_requires_grad(model, params):
            for example in examples:
                flat_gradient(model, params, example)

    rows.append((f"per-sample gradient, mlp-down, T={args.length}", "loop, unpadded",
                 timed(run, max(1, args.repeats // 2)) / len(examples), f"{len(params)} tensors"))
    # The pipeline's path: gradient and SRHT, one sample at a time against one batched pass (hooks) per B samples.
    projector = HadamardProjector(sum(p.numel() for p in params.values()), args.grad_dim, seed=0)
    batch = random_examples(args.grad_batch, args.length, model.config.vocab_size)
    times = {size: timed(lambda size=size: projected_gradients(model, batch, params, projector, batch_size=size,
                                                               progress=False), max(1, args.repeats // 2)) / len(batch)
             for size in (1, args.grad_batch)}
    rows.append((f"projected gradient (SRHT), mlp-down, T={args.length}", f"batched, B={args.grad_batch}",
                 times[args.grad_batch], f"one at a time {times[1]:.3g} s ({times[1] / times[args.grad_batch]:.2f}x)"))
    if args.profile:  # where one sample's gradient spends its time (on a GPU: launch-bound or kernel-bound?)
        from torch.profiler import ProfilerActivity, profile

        cuda = torch.cuda.is_available() and torch.device(args.device).type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof, only_requires_grad(model, params):
            start = time.perf_counter()
            flat_gradient(model, params, examples[0])
            synchronize()
            wall = time.perf_counter() - start
        events = prof.key_averages()
        kernels = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6
        tables = [f"wall {wall * 1e3:.1f} ms (profiled), device kernels {kernels * 1e3:.1f} ms, "
                  f"{sum(e.count for e in events)} op calls"]
        for key in (["self_device_time_total"] if cuda else []) + ["self_cpu_time_total"]:
            tables.append(f"by {key}:\n{events.table(sort_by=key, row_limit=15)}")
        args.profile_table = "\n".join(tables)


def bench_krr(args, rows):
    torch.manual_seed(0)
    points = torch.randn(args.pool, args.embedding_dim)  # the pipeline's embeddings live on the CPU
    landmarks = points[: args.landmarks]
    values = torch.randn(args.landmarks, args.targets, dtype=torch.float64)
    fit = timed(lambda: fit_kernel_ridge(landmarks, values), 1)
    krr = fit_kernel_ridge(landmarks, values)
    predict = timed(lambda: krr.predict(points), 1)
    rows.append((f"KRR fit l={args.landmarks} d_e={args.embedding_dim} t={args.targets}", "Cholesky, float64",
                 fit, "once for all targets"))
    rows.append((f"KRR predict N={args.pool}", "float32 kernel blocks", predict,
                 f"{predict / args.pool * 1e6:.1f} us/sample"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local HF causal LM (default: random SmolLM2-135M-shaped Llama)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--profile", action="store_true", help="also print a profile of one per-sample gradient")
    args = parser.parse_args()
    args.batch, args.length, args.tangents, args.blocks = 8, 128, 2, (1, 4)
    args.grad_dim, args.chunk, args.grad_samples, args.grad_batch = 32768, 4, 8, 16
    args.pool, args.landmarks, args.embedding_dim, args.targets = 50_000, 4096, 1152, 32
    if args.quick:
        args.blocks, args.grad_samples, args.grad_batch, args.pool, args.landmarks, args.repeats = (1,), 2, 4, 5000, 512, 1
    torch.set_num_threads(torch.get_num_threads())
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").eval()
    else:
        model, _ = random_model("smollm2-135m")
    model = model.to(args.device)
    rows: list[tuple[str, str, float, str]] = []
    bench_jvp(model, args, rows)
    bench_projection(model, args, rows)
    bench_gradients(model, args, rows)
    bench_krr(args, rows)
    where = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else \
        f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB\n")
    print("| stage | implementation | seconds | note |\n|---|---|---|---|")
    for stage, impl, seconds, note in rows:
        print(f"| {stage} | {impl} | {seconds:.3g} | {note} |")
    if args.profile:
        print(f"\nOne per-sample gradient (T={args.length}), by self time:\n{args.profile_table}")


if __name__ == "__main__":
    main()
