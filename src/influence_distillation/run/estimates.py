"""Predicted time, peak memory and disk of a selection run, per stage, for Influence Distillation and its peers.

Pure arithmetic, no timing: `Rates` (seconds per unit of each stage's own work, timed on this machine by
`preflight.calibrate`, or on a paper-size layout by `benchmarks/bench_paper_setting.py`) times a `Workload` (how much
work the run does: the pool's and the targets' tokens, how many landmark gradients) gives each stage's `Estimate`.
Each stage says whether it grows with the pool (embeddings, RDS+'s forward, LESS's gradients, tokenisation,
propagation) or is a fixed cost (model loading, target gradients, and the landmark gradients, whose count stops
growing at the default rule's cap), so a reader sees what a ten times larger pool would cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from influence_distillation.method import Tokens

GIB = 1 << 30
PER_SAMPLE_BYTES = 57  # kept per pool sample: the packed index (33 bytes) and the row cache (24)


@dataclass
class Estimate:
    stage: str
    seconds: float
    memory: float  # peak bytes while the stage runs (model included)
    disk: float  # bytes it writes
    grows: bool = False  # with the pool; else a fixed cost


@dataclass
class Rates:
    """Seconds per unit of work, each measured on the stage's own code as the run batches it."""

    load: float  # loading the model
    tokenize_token: float  # reading and tokenising the pool, per token
    embed_token: float  # our embedding pass (JVP by default), per token
    gradient_sample: float  # a gradient's part that does not depend on its length: the projection
    gradient_token: float  # forward + backward to the gradient parameters, per token
    less_sample: float  # LESS's per-sample part: its Adam update direction and the projection
    forward_token: float  # RDS+'s no-grad forward of the whole model, per token
    flops_per_second: float  # float32 matrix products: propagation and scoring


@dataclass
class Workload:
    """What a run processes: the pool and the target samples, and the landmark gradients Influence Distillation
    takes (first landmarks plus verification landmarks; assumed of the pool's mean length)."""

    pool: Tokens
    targets: Tokens
    landmarks: int
    verify: int = 0
    budget: int = 0
    verify_rounds: int = 1


@dataclass
class Sizes:
    """The shapes memory and disk depend on (bytes unless said otherwise)."""

    model: float  # the whole model's weights
    bytes_per: int  # per parameter
    hidden: int
    layers: int
    longest: int  # tokens of the pool's longest sample
    coordinates: int  # gradient parameters
    padded: int  # the projection's working length (the Hadamard transform pads to a power of two)
    projected: int  # k_p
    embedding: int  # d_e
    embedding_working: float  # the embedding pass's own working memory (its kept blocks, tangents, a batch)


def _gradient_seconds(rates: Rates, tokens: Tokens, per_sample: float | None = None) -> float:
    return (rates.gradient_sample if per_sample is None else per_sample) * tokens.samples \
        + rates.gradient_token * tokens.tokens


def _gradient_memory(sizes: Sizes) -> float:
    return sizes.model + sizes.coordinates * 4 * 2 + sizes.padded * 4 * 3 \
        + sizes.longest * sizes.hidden * sizes.layers * 48 * sizes.bytes_per


def _setup(work: Workload, rates: Rates, sizes: Sizes) -> list[Estimate]:
    return [Estimate("load model", rates.load, sizes.model, 0.0),
            Estimate("tokenize", rates.tokenize_token * work.pool.tokens, sizes.model + work.pool.samples
                     * PER_SAMPLE_BYTES, work.pool.tokens * 8, grows=True)]


def _write(work: Workload, sizes: Sizes, columns: int) -> Estimate:
    return Estimate("write outputs", 1.0 + 2e-5 * work.pool.samples, sizes.model + work.pool.samples * PER_SAMPLE_BYTES,
                    work.pool.samples * (columns * 4 + 64))


def influence(work: Workload, rates: Rates, sizes: Sizes, exact: bool = False, order: int = 1) -> list[Estimate]:
    """Influence Distillation as `select` runs it (exact mode: a gradient of every pool sample instead)."""
    pool, targets = work.pool, work.targets
    landmarks = pool if exact else pool.scaled(work.landmarks + work.verify)
    gradient_memory = _gradient_memory(sizes)
    stages = _setup(work, rates, sizes)
    if not exact:
        stages.append(Estimate("embeddings", rates.embed_token * (pool.tokens + (targets.tokens if work.verify else 0)),
                               sizes.model + sizes.embedding_working + pool.samples * PER_SAMPLE_BYTES,
                               pool.samples * sizes.embedding * 4, grows=True))
    stages.append(Estimate("target gradients", _gradient_seconds(rates, targets), gradient_memory, 0.0))
    stages.append(Estimate("landmark gradients" if not exact else "pool gradients",
                           _gradient_seconds(rates, landmarks), gradient_memory + landmarks.samples * sizes.projected * 4,
                           landmarks.samples * sizes.projected * 4, grows=exact))
    if order == 2:
        stages.append(Estimate("Hessian-vector products", 2 * rates.gradient_token * targets.tokens * landmarks.samples,
                               gradient_memory + 8 * sizes.coordinates * 4 * 3, 0.0))
    if not exact:  # one propagation per verification round and the final one; each a kernel against the landmarks
        count, width = landmarks.samples, sizes.embedding
        passes = 1 + (work.verify_rounds if work.verify else 0)
        flops = passes * (2 * pool.samples * count * width + count**3 / 3 + 2 * count**2 * width) \
            + 2 * pool.samples * targets.samples * width
        stages.append(Estimate("propagation", flops / rates.flops_per_second, sizes.model + count**2 * 16
                               + 4096 * count * 8 + pool.samples * PER_SAMPLE_BYTES,
                               pool.samples * targets.samples * 8, grows=True))
    stages.append(_write(work, sizes, targets.samples))
    return stages


def rds(work: Workload, rates: Rates, sizes: Sizes) -> list[Estimate]:
    """RDS+: a no-grad forward of the whole model over every pool and target sample, then cosines."""
    forward = rates.forward_token * (work.pool.tokens + work.targets.tokens)
    scoring = 2 * work.pool.samples * work.targets.samples * sizes.hidden / rates.flops_per_second
    return [*_setup(work, rates, sizes),
            Estimate("forward passes", forward + scoring, sizes.model + 16 * sizes.longest * sizes.hidden * 8
                     * sizes.bytes_per, work.pool.samples * sizes.hidden * 4, grows=True),
            _write(work, sizes, work.targets.samples)]


def less(work: Workload, rates: Rates, sizes: Sizes) -> list[Estimate]:
    """LESS: the Adam update direction of every pool sample's gradient (from a warm-up's state, whose cost is left
    out as in the paper), projected, and its cosine with each target gradient."""
    scoring = 2 * work.pool.samples * work.targets.samples * sizes.projected / rates.flops_per_second
    return [*_setup(work, rates, sizes),
            Estimate("target gradients", _gradient_seconds(rates, work.targets), _gradient_memory(sizes), 0.0),
            Estimate("pool gradients", _gradient_seconds(rates, work.pool, rates.less_sample) + scoring,
                     _gradient_memory(sizes) + sizes.coordinates * 4 * 2, work.pool.samples * sizes.projected * 4,
                     grows=True),
            _write(work, sizes, 1)]


def mid_ppl(work: Workload, rates: Rates, sizes: Sizes) -> list[Estimate]:
    return [*_setup(work, rates, sizes),
            Estimate("forward passes", rates.forward_token * work.pool.tokens, sizes.model + 16 * sizes.longest
                     * sizes.hidden * 8 * sizes.bytes_per, work.pool.samples * 4, grows=True),
            _write(work, sizes, 1)]


def for_method(method: str, work: Workload, rates: Rates, sizes: Sizes, order: int = 1) -> list[Estimate]:
    """The stages of `select --method METHOD` (random and embed-sim: loading and writing only)."""
    if method in ("influence", "exact"):
        return influence(work, rates, sizes, exact=method == "exact", order=order)
    predict = {"rds+": rds, "less": less, "mid-ppl": mid_ppl}.get(method)
    return predict(work, rates, sizes) if predict else [*_setup(work, rates, sizes), _write(work, sizes, 1)]


def total(estimates: list[Estimate]) -> float:
    return sum(e.seconds for e in estimates)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_estimates(estimates: list[Estimate]) -> str:
    lines = ["| stage | time | grows with the pool | peak memory | disk |", "|---|---|---|---|---|"]
    for e in estimates:
        lines.append(f"| {e.stage} | {duration(e.seconds)} | {'yes' if e.grows else 'no'} | {e.memory / GIB:.2f} GiB "
                     f"| {e.disk / 2**20:.0f} MiB |")
    lines.append(f"| **total** | {duration(total(estimates))} | | {max(e.memory for e in estimates) / GIB:.2f} GiB | "
                 f"{sum(e.disk for e in estimates) / 2**20:.0f} MiB |")
    return "\n".join(lines)


def format_comparison(rows: dict[str, tuple[list[Estimate], float]], pool: int, reference: str) -> str:
    """One line per method: time, per pool sample and fixed, memory, disk, FLOPs, and time relative to
    `reference`'s."""
    base = total(rows[reference][0])
    lines = [f"| method | time | per pool sample | fixed | × {reference} | peak memory | disk | FLOPs |",
             "|---|---|---|---|---|---|---|---|"]
    for method, (estimates, flops) in rows.items():
        grows = sum(e.seconds for e in estimates if e.grows)
        fixed = total(estimates) - grows
        lines.append(f"| {method} | {duration(total(estimates))} | {1000 * grows / max(1, pool):.0f} ms | "
                     f"{duration(fixed)} | {total(estimates) / base:.2f} | "
                     f"{max(e.memory for e in estimates) / GIB:.2f} GiB | "
                     f"{sum(e.disk for e in estimates) / 2**20:.0f} MiB | {_flops(flops)} |")
    return "\n".join(lines)


def _flops(value: float) -> str:
    exponent = int(math.log10(value)) // 3 * 3 if value >= 1 else 0
    prefix = {0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E", 21: "Z"}.get(exponent, f"e{exponent}")
    return f"{value / 10**exponent:.3g} {prefix}FLOP"
