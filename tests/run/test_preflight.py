"""`select --dry-run`'s predictions, for this run and its peers, against what the same runs measure."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import adam_state_file, make_tokenizer, synthetic_pool, synthetic_target, write_jsonl

from influence_distillation.cli import main
from influence_distillation.config import SelectConfig
from influence_distillation.method.flops import Tokens
from influence_distillation.run import estimates
from influence_distillation.run.estimates import Rates, Sizes, Workload
from influence_distillation.run.preflight import dry_run

RATES = Rates(load=2.0, tokenize_token=1e-5, embed_token=1e-3, gradient_sample=0.5, gradient_token=0.01,
              less_sample=0.7, forward_token=4e-3, flops_per_second=1e11)
SIZES = Sizes(model=1e9, bytes_per=4, hidden=512, layers=12, longest=300, coordinates=10**7, padded=2**24,
              projected=4096, embedding=512, embedding_working=1e8)


def test_each_method_costs_its_rates_times_its_work():
    """The arithmetic, against hand-written sums: what grows with the pool and what does not."""
    work = Workload(Tokens(10_000, 1_500_000, 400_000), Tokens(32, 3_200, 640), landmarks=128, verify=128,
                    budget=500)
    ours = {e.stage: e for e in estimates.for_method("influence", work, RATES, SIZES)}
    assert ours["embeddings"].seconds == pytest.approx(1e-3 * (1_500_000 + 3_200))  # + the target samples' queries
    landmark_tokens = 1_500_000 * 256 / 10_000
    assert ours["landmark gradients"].seconds == pytest.approx(0.5 * 256 + 0.01 * landmark_tokens)
    assert ours["target gradients"].seconds == pytest.approx(0.5 * 32 + 0.01 * 3_200)
    assert ours["embeddings"].grows and not ours["landmark gradients"].grows and not ours["load model"].grows
    rds = {e.stage: e for e in estimates.for_method("rds+", work, RATES, SIZES)}
    scoring = 2 * 10_000 * 32 * 512 / 1e11
    assert rds["forward passes"].seconds == pytest.approx(4e-3 * (1_500_000 + 3_200) + scoring)
    less = {e.stage: e for e in estimates.for_method("less", work, RATES, SIZES)}
    assert less["pool gradients"].seconds == pytest.approx(0.7 * 10_000 + 0.01 * 1_500_000
                                                           + 2 * 10_000 * 32 * 4096 / 1e11)
    assert less["pool gradients"].disk == 10_000 * 4096 * 4
    # Ten times the pool: only the stages that grow do.
    bigger = Workload(Tokens(100_000, 15_000_000, 4_000_000), work.targets, 128, 128, 500)
    grown = {e.stage: e for e in estimates.for_method("influence", bigger, RATES, SIZES)}
    assert grown["landmark gradients"].seconds == pytest.approx(ours["landmark gradients"].seconds)
    assert grown["embeddings"].seconds == pytest.approx(1e-3 * (15_000_000 + 3_200))
    exact = {e.stage: e for e in estimates.for_method("exact", work, RATES, SIZES)}
    assert "embeddings" not in exact and exact["pool gradients"].seconds == pytest.approx(
        0.5 * 10_000 + 0.01 * 1_500_000)


def load_pool(path, model):
    from influence_distillation import ModelConfig, load_model, load_samples, tokenize_samples

    _, tokenizer = load_model(ModelConfig(path=str(model)))
    return tokenize_samples(load_samples(path), tokenizer, 512, progress=False).examples


@pytest.fixture(scope="module")
def timing_setup(tmp_path_factory):
    """A small random Llama with enough arithmetic per call that stage times are not all Python overhead, a pool of
    240 samples and an AdamW state for LESS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("timing")
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager", bos_token_id=0,
                         eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    pool = write_jsonl(folder / "pool.jsonl", synthetic_pool(240))
    target = write_jsonl(folder / "target.jsonl", synthetic_target(24))
    return folder, pool, target, adam_state_file(folder / "model", folder / "adam.pt")


@pytest.mark.slow
def test_dry_run_predicts_each_methods_stage_times_within_a_factor_of_what_they_take(timing_setup):
    """Every method's heavy stages, predicted by one dry run, against cold runs of `select --method` on the same
    pool (a tiny model: timings of milliseconds, so the bound is loose; docs/BENCHMARKS.md holds the real ones)."""
    folder, pool, target, adam = timing_setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: another job on the machine then slows calibration and runs alike
    try:
        _compare_with_runs(folder, pool, target, adam)
    finally:
        torch.set_num_threads(threads)


def _compare_with_runs(folder, pool, target, adam):
    config = SelectConfig(pool=str(pool), target=str(target), out=str(folder / "dry"))
    config.model.path, config.selection.budget, config.gradients.proj_dim = str(folder / "model"), 12, 1024
    plan = dry_run(config)
    predicted = {method.split(" ")[0]: {e.stage: e.seconds for e in stages}
                 for method, (stages, _) in plan.methods.items()}
    assert set(predicted) == {"influence", "rds+", "less"}
    measured = {}
    for method in ("influence", "rds+", "less"):
        out = folder / method
        extra = ["--optimizer-state", str(adam)] if method == "less" else []
        assert main(["select", "--pool", str(pool), "--target", str(target), "--model", str(folder / "model"),
                     "--budget", "12", "--grad-dim", "1024", "--method", method, "--out", str(out), "--quiet",
                     *extra]) == 0
        measured[method] = json.loads((out / "manifest.json").read_text())["stages"]
    first = json.loads((folder / "influence" / "manifest.json").read_text())["landmarks"]["first"]
    pool_tokens = Tokens.of(load_pool(pool, folder / "model"))
    first_landmarks = first * plan.rates.gradient_sample + plan.rates.gradient_token * pool_tokens.scaled(first).tokens
    pairs = {
        "embeddings": (predicted["influence"]["embeddings"], measured["influence"]["embeddings"]),
        "landmark gradients": (first_landmarks, measured["influence"]["landmark_gradients"]),
        "target gradients": (predicted["influence"]["target gradients"], measured["influence"]["target_gradients"]),
        "RDS+ forward": (predicted["rds+"]["forward passes"], measured["rds+"]["scores"]),
        "LESS gradients": (predicted["less"]["pool gradients"] + predicted["less"]["target gradients"],
                           measured["less"]["scores"]),
    }
    for stage, (guess, took) in pairs.items():
        assert took / 2.5 <= guess <= took * 2.5, (stage, float(guess), took)
