"""The demo's and the benchmark suite's data, built from packages every install gets from the package index.

A pool shaped like the paper's (Tulu V2 is mostly chat): ShareGPT conversations as multi-turn chat (the loss on the
assistant turns), mixed with generated school maths and Python functions of the standard library to complete or
document, so that a selector has something to find for each target. Targets, each a `target.jsonl` (the few examples
the selection sees) and a held-out `test.jsonl`, of three kinds:

* code: `humaneval` (HumanEval: complete a function's body) and `docstring` (document a function of `asyncio`);
* maths: `algebra` (generated linear equations, polynomial roots and sequences) and `champ` (competition problems with
  worked solutions);
* chat: `sql` (ShareGPT conversations that open with an SQL question).

Whatever a target is made of stays out of the pool: every ShareGPT conversation that mentions SQL anywhere (and every
other part of a split conversation a held-out one belongs to), the algebra modules, `asyncio`, HumanEval and CHAMP.
Target, test and pool are disjoint by id and by their first user turn; `test_demo_data` checks it on the real data.
Every record is a `messages` record with a `task` (its family and kind); HumanEval's also keep `task_id`,
`entry_point` and `test` for running the completions.
"""

from __future__ import annotations

import platform
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from influence_distillation.artifacts import write_json, write_jsonl
from influence_distillation.data.records import SHAREGPT_ROLES, trained_turns
from influence_distillation.errors import DataError
from influence_distillation.evaluation import sources
from influence_distillation.evaluation.configs import DEMO_TARGETS

BUILDER = "packages-1"  # data.json's recipe version: data built by another recipe is rebuilt, not reused
# The demo's three targets (`configs`, where --help reads them), one of each kind; the suite adds two.
SUITE_TARGETS = (*DEMO_TARGETS, "champ", "docstring")
ALGEBRA = ("algebra__linear_1d", "algebra__linear_1d_composed", "algebra__linear_2d", "algebra__linear_2d_composed",
           "algebra__polynomial_roots", "algebra__polynomial_roots_composed", "algebra__sequence_next_term",
           "algebra__sequence_nth_term")
# The other 48 training modules of mathematics_dataset go into the pool.
POOL_MATHS = tuple(f"{group}__{name}" for group, names in {
    "arithmetic": ("add_or_sub", "add_or_sub_in_base", "add_sub_multiple", "div", "mixed", "mul", "mul_div_multiple",
                   "nearest_integer_root", "simplify_surd"),
    "calculus": ("differentiate", "differentiate_composed"),
    "comparison": ("closest", "closest_composed", "kth_biggest", "kth_biggest_composed", "pair", "pair_composed",
                   "sort", "sort_composed"),
    "measurement": ("conversion", "time"),
    "numbers": ("base_conversion", "div_remainder", "div_remainder_composed", "gcd", "gcd_composed", "is_factor",
                "is_factor_composed", "is_prime", "is_prime_composed", "lcm", "lcm_composed", "list_prime_factors",
                "list_prime_factors_composed", "place_value", "place_value_composed", "round_number",
                "round_number_composed"),
    "polynomials": ("add", "coefficient_named", "collect", "compose", "evaluate", "evaluate_composed", "expand",
                    "simplify_power"),
    "probability": ("swr_p_level_set", "swr_p_sequence"),
}.items() for name in names)
DOCSTRING_PACKAGE = "asyncio"
# A conversation is about SQL if any turn names it or a database that speaks it, or holds an SQL query.
SQL = re.compile(r"(?i:\bsql\b|\bpostgres(?:ql)?\b|\bmysql\b|\bsqlite\b)|\bSELECT\b[^;]{1,300}?\bFROM\b")
# ShareGPT requests often paste whole documents, and a split conversation opens with the end of an earlier answer: one
# whose text before its first trained answer fills the demo's max_length (384 tokens) has nothing left to train on.
# Those with more than 1,000 bytes of it (UTF-8: a byte per character of English, up to four for other scripts, whose
# characters cost more tokens) stay out of the demo's pool and targets.
MAX_OPENING_BYTES = 1000
COMPLETE = "Complete the body of this Python function.\n\n"
DOCUMENT = "Write the docstring of this Python function from the module `{module}`.\n\n"
SOLVE = "Solve the following problem. Show your work, then give the final answer.\n\n"


@dataclass(frozen=True)
class DemoSizes:
    sharegpt: int = 1500  # ShareGPT conversations in the pool
    maths_per_module: int = 12  # generated questions per pool module (48 modules)
    code: int = 600  # standard-library functions in the pool, half to complete and half to document
    target: int = 32
    test: int = 100  # per target, or as many as the source has left
    suite: bool = False  # all five targets; otherwise the demo's three

    @classmethod
    def quick(cls) -> DemoSizes:
        return cls(sharegpt=100, maths_per_module=2, code=40, target=8, test=30)

    @classmethod
    def for_suite(cls) -> DemoSizes:
        return cls(sharegpt=2000, maths_per_module=16, code=800, target=32, test=200, suite=True)

    def targets(self) -> tuple[str, ...]:
        return SUITE_TARGETS if self.suite else DEMO_TARGETS


def chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def as_messages(conversation: dict) -> list[dict]:
    """A ShareGPT conversation's turns as `messages` (the pool is one record format), speakers mapped as the reader
    maps them."""
    return [{"role": SHAREGPT_ROLES.get(str(turn.get("from")).lower(), str(turn.get("from"))),
             "content": turn.get("value")} for turn in conversation["conversations"]]


def _first_user_text(messages: list[dict]) -> str:
    return next((str(m["content"]) for m in messages if m["role"] == "user"), "")


def _opening_bytes(messages: list[dict]) -> int:
    """UTF-8 bytes of the text before the first trained answer (all of it when there is none)."""
    turns = [(m["role"], str(m["content"] or "")) for m in messages]
    first = next(iter(trained_turns(turns)), len(turns))
    return sum(len(text.encode()) for _, text in turns[:first])


def _trainable(messages: list[dict]) -> bool:
    """A target or test conversation must open with the user and train on every assistant turn."""
    return (bool(messages) and messages[0]["role"] == "user" and all(isinstance(m["content"], str) for m in messages)
            and all(m["content"].strip() for m in messages if m["role"] == "assistant")
            and bool(trained_turns([(m["role"], m["content"]) for m in messages])))


def _sharegpt(sizes: DemoSizes, rng: random.Random) -> tuple[list[dict], dict[str, list[dict]]]:
    """(pool conversations, {"sql": held-out SQL conversations})."""
    conversations = sources.sharegpt_conversations()
    part_of = {c["id"]: c["id"].rsplit("_", 1)[0] for c in conversations}  # ShareGPT split long ones into parts
    about_sql = {c["id"] for c in conversations if any(SQL.search(str(t.get("value"))) for t in c["conversations"])}
    held_out_bases = {part_of[i] for i in about_sql}
    sql, pool, seen = [], [], set()
    for conversation in conversations:
        messages = as_messages(conversation)
        record = {"id": f"sharegpt/{conversation['id']}", "messages": messages}
        first = _first_user_text(messages)
        if (first in seen and first) or _opening_bytes(messages) > MAX_OPENING_BYTES:  # ShareGPT repeats requests
            continue
        seen.add(first)
        if conversation["id"] in about_sql:
            if _trainable(messages) and SQL.search(first):
                sql.append({**record, "task": "sharegpt/sql"})
        elif part_of[conversation["id"]] not in held_out_bases:
            pool.append({**record, "task": "sharegpt"})
    rng.shuffle(pool)
    rng.shuffle(sql)
    return pool[: sizes.sharegpt], {"sql": sql}


def _maths(sizes: DemoSizes, seed: int, cache: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    held_out = sizes.target + sizes.test
    per_algebra = -(-held_out // len(ALGEBRA))
    counts = {**dict.fromkeys(POOL_MATHS, sizes.maths_per_module), **dict.fromkeys(ALGEBRA, per_algebra)}
    questions = sources.maths_questions(counts, seed, cache)
    records, seen = {"pool": [], "algebra": []}, set()
    for i, q in enumerate(questions):
        if q["question"] in seen:
            continue
        seen.add(q["question"])
        records["algebra" if q["module"] in ALGEBRA else "pool"].append(
            {"id": f"math/{q['module']}#{i}", "task": f"math/{q['module']}", "messages": chat(q["question"], q["answer"])})
    by_module = {}
    for record in records["algebra"]:  # interleave the modules, so target and test hold every kind of question
        by_module.setdefault(record["task"], []).append(record)
    algebra = [r for group in zip(*by_module.values()) for r in group]
    return records["pool"], {"algebra": algebra}


def _code(sizes: DemoSizes, rng: random.Random) -> tuple[list[dict], dict[str, list[dict]]]:
    functions, seen, unique = sources.python_functions(), set(), []
    for function in functions:  # overloads and copies of one function say the same thing
        if function["code"] not in seen:
            seen.add(function["code"])
            unique.append(function)
    rng.shuffle(unique)
    pool, docstring = [], []
    for f in unique:
        key = f"{f['module']}.{f['name']}#{f['line']}"
        document = {"task": "code/docstring", "messages": chat(DOCUMENT.format(module=f["module"]) + f["code"],
                                                                f["docstring"])}
        if f["module"].split(".")[0] == DOCSTRING_PACKAGE:
            docstring.append({"id": f"docstring/{key}", **document})
        elif len(pool) < sizes.code:
            if len(pool) % 2:
                pool.append({"id": f"docstring/{key}", **document})
            else:
                pool.append({"id": f"complete/{key}", "task": "code/complete",
                             "messages": chat(COMPLETE + f["header"], f["body"])})
    return pool, {"docstring": docstring}


def humaneval_records() -> list[dict]:
    return [{"id": p["task_id"], "task": "humaneval", "task_id": p["task_id"], "entry_point": p["entry_point"],
             "test": p["test"], "messages": chat(COMPLETE + p["prompt"].strip(), p["canonical_solution"].rstrip())}
            for p in sources.humaneval_problems()]


def champ_records() -> list[dict]:
    return [{"id": f"champ/{p['id']}", "task": f"champ/{p['category'].lower()}",
             "messages": chat(SOLVE + p["problem"], f"{p['solution']}\n\nFinal answer: {p['answer']}")}
            for p in sources.champ_problems()]


def build_demo_data(out: Path, sizes: DemoSizes, cache: Path, seed: int = 0) -> dict:
    """Write pool.jsonl and targets/<name>/{target,test}.jsonl into `out`; returns the summary also saved as
    data.json (sizes, seed, the pinned sources, the Python version behind the standard-library functions, the pool's
    families and every target's counts)."""
    rng = random.Random(seed)
    chats, held_out = _sharegpt(sizes, rng)
    maths, algebra = _maths(sizes, seed, cache)
    code, docstring = _code(sizes, rng)
    held_out.update(algebra)
    held_out.update(docstring)
    held_out["humaneval"] = humaneval_records()
    held_out["champ"] = champ_records()
    summary = {"builder": BUILDER, "seed": seed, "sizes": asdict(sizes), "python": platform.python_version(),
               "targets": {},
               "sources": [sources.SHAREGPT, sources.HUMAN_EVAL, sources.CHAMP, *sources.MATHS_ENVIRONMENT[:2],
                           f"the Python {platform.python_version()} standard library"]}
    for name in sizes.targets():
        records = held_out[name]
        if name in ("humaneval", "champ"):
            rng.shuffle(records)
        if len(records) < sizes.target + 1:
            raise DataError(f"{name}: only {len(records)} usable records, need {sizes.target} and a test set")
        target, test = records[: sizes.target], records[sizes.target : sizes.target + sizes.test]
        write_jsonl(out / "targets" / name / "target.jsonl", target)
        write_jsonl(out / "targets" / name / "test.jsonl", test)
        summary["targets"][name] = {"task": target[0]["task"], "target": len(target), "test": len(test)}
    pool = chats + maths + code
    rng.shuffle(pool)
    write_jsonl(out / "pool.jsonl", pool)
    summary["pool"] = {"size": len(pool), "families": dict(Counter(r["task"].split("/")[0] for r in pool)),
                       "tasks": len({r["task"] for r in pool})}
    write_json(out / "data.json", summary)
    return summary
