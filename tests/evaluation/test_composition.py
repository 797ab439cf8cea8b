"""What a selection holds, on records whose counts are known by construction."""

from influence_distillation.evaluation.composition import describe, family, format_composition, shared, target_task

MULTIRC = "natural_instructions/subtask054_multirc_write_correct_answer"


def test_family_groups_views_of_one_dataset():
    assert family(MULTIRC) == family("natural_instructions/subtask058_multirc_question_answering") == "multirc"
    assert family("natural_instructions/subtask002_quoref_answer_generation") == "quoref"
    assert family("elementary_math_qa/question_only") == "elementary_math_qa"
    assert family("strategyqa") == "strategyqa"


def test_describe_counts_own_task_family_tasks_and_lengths():
    records = ([{"id": f"a{i}", "task": MULTIRC, "prompt": "ab", "completion": "c"} for i in range(3)]
               + [{"id": "b", "task": "natural_instructions/subtask058_multirc_question_answering", "prompt": "abcd",
                   "completion": "e"}]
               + [{"id": "c", "task": "strategyqa", "messages": [{"role": "user", "content": "xyz"},
                                                                 {"role": "assistant", "content": "w"}]},
                  {"id": "d", "text": "hello"}])
    held = describe(records, MULTIRC, top=2)
    assert held["size"] == 6 and held["tasks"] == 4  # three named tasks and one record without a task
    assert held["own_task"] == 3 / 6 and held["own_family"] == 4 / 6
    assert held["mean_chars"] == (3 * 3 + 5 + 4 + 5) / 6
    assert held["top_tasks"] == [(MULTIRC, 3), ("natural_instructions/subtask058_multirc_question_answering", 1)]
    assert describe(records, None)["own_task"] is None
    assert target_task([{"task": "x"}, {"task": MULTIRC}, {"task": MULTIRC}]) == MULTIRC
    assert target_task([{"prompt": "no task"}]) is None


def test_shared_is_the_fraction_of_the_smaller_selection():
    a = [{"id": str(i)} for i in range(10)]
    b = [{"id": str(i)} for i in range(6, 12)]
    assert shared(a, b) == 4 / 6 and shared(b, a) == 4 / 6 and shared(a, []) == 0.0


def test_format_composition_one_row_per_target_and_method():
    held = {**describe([{"id": "a", "task": "t", "prompt": "p"}], "t"), "shared": 0.5}
    table = format_composition({"math": {"influence": {**held, "shared": None}, "rds+": held}}, "influence")
    lines = table.splitlines()
    assert len(lines) == 4 and "shared with influence" in lines[0]
    assert lines[3].startswith("| math | rds+ | 100% | 100% | 1 | 1 | 50% | t 1 |")
