import json

import pytest
import torch
from conftest import make_model, synthetic_pool, write_jsonl

from influence_distillation.data.records import Sample
from influence_distillation.data.tokenization import collate, tokenize_samples
from influence_distillation.evaluation.lora import EvalConfig, finetune_lora, score_choices
from influence_distillation.method.losses import batch_losses, token_log_likelihoods


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_shared_prefix_scoring_equals_scoring_each_option_alone(kind, tokenizer):
    model = make_model(kind, len(tokenizer))
    questions = {
        "What is 3 plus 4? Pick one.": ["1 / 9", "1 / 10", "12", "The capital is Paris."],
        "Yes or no?": ["Yes", "No"],
        "Name the capital of Peru, please, in one short sentence.": ["Lima.", "The capital is Lima.", "Rome"],
    }
    option_examples = []
    for prompt, options in questions.items():
        samples = [Sample(str(i), {}, (("user", prompt), ("assistant", o)), None) for i, o in enumerate(options)]
        option_examples.append(tokenize_samples(samples, tokenizer, 512).examples)
    scored = score_choices(model, option_examples, pad_id=0, batch_size=2)
    for examples, (totals, counts) in zip(option_examples, scored):
        with torch.no_grad():
            expected_totals, expected_counts = token_log_likelihoods(model, collate(examples, 0))
        torch.testing.assert_close(totals, expected_totals.double(), rtol=1e-5, atol=1e-5)
        assert counts.tolist() == expected_counts.tolist()


def test_lora_finetune_learns_and_leaves_the_base_untouched(tokenizer):
    model = make_model("llama", len(tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = [Sample(str(i), r, (("user", r["prompt"]), ("assistant", r["completion"])), None)
               for i, r in enumerate(synthetic_pool(12))]
    examples = tokenize_samples(samples, tokenizer, 512).examples
    config = EvalConfig(train="x", test="x", pool="x", out="x", steps=30, batch_size=4, learning_rate=1e-2,
                        lora_rank=4)
    tuned = finetune_lora(model, examples, config, seed=0, pad_id=0, progress=False)
    batch = collate(examples, 0)
    with torch.no_grad():
        assert batch_losses(tuned, batch).mean() < batch_losses(model, batch).mean() - 0.25
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_evaluate_command_reports_untrained_random_and_selection(model_dir, tmp_path):
    from influence_distillation.cli import main

    pool = synthetic_pool(40)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    write_jsonl(tmp_path / "selected.jsonl", pool[:6])
    test = [{"prompt": "Name the capital of Peru.", "completion": "The capital is Lima.",
             "options": ["The capital is Lima.", "The capital is Rome."]}] * 3
    write_jsonl(tmp_path / "test.jsonl", test)
    code = main(["evaluate", "--model", str(model_dir("llama")), "--train", str(tmp_path / "selected.jsonl"),
                 "--test", str(tmp_path / "test.jsonl"), "--pool", str(tmp_path / "pool.jsonl"), "--out",
                 str(tmp_path / "eval"), "--steps", "2", "--seeds", "2", "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(summary["results"]) == {"untrained", "random", "selection"}
    assert len(summary["per_seed"]["selection"]) == 2 and summary["subset_size"] == 6
    for row in summary["results"].values():
        assert 0 <= row["accuracy"] <= 1 and row["test_loss"] > 0


def test_weighted_evaluation_reads_record_weights_and_refuses_records_without(model_dir, tmp_path, capsys):
    from influence_distillation.cli import main
    from influence_distillation.evaluation.lora import training_weights

    pool = synthetic_pool(20)
    samples = [Sample(str(i), {**r, "weight": float(i)}, (("user", r["prompt"]), ("assistant", r["completion"])),
                      None) for i, r in enumerate(pool[:4])]
    examples = [type("E", (), {"id": s.id})() for s in reversed(samples)]
    torch.testing.assert_close(training_weights(samples, examples),
                               torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64) * 4 / 6)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    write_jsonl(tmp_path / "selected.jsonl", pool[:6])  # no weights
    write_jsonl(tmp_path / "test.jsonl", pool[10:13])
    code = main(["evaluate", "--model", str(model_dir("llama")), "--train", str(tmp_path / "selected.jsonl"),
                 "--test", str(tmp_path / "test.jsonl"), "--pool", str(tmp_path / "pool.jsonl"), "--out",
                 str(tmp_path / "eval"), "--steps", "1", "--weighted", "--quiet"])
    assert code == 2 and not (tmp_path / "eval" / "eval.json").exists()
    assert "has no numeric 'weight' field" in capsys.readouterr().err
