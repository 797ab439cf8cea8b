"""Generate school-maths questions with DeepMind's `mathematics_dataset`, one JSON line each on stdout.

Run by `sources.maths_questions` as a script in a subprocess whose PYTHONPATH is the private environment that holds
`mathematics-dataset` 1.0.1 and the sympy 1.5.1 it was written for (today's sympy, which torch needs, lacks an
import it uses). It imports nothing of this package. Arguments: a JSON object {"modules": {name: count}, "seed": int}.
Each module's questions come from its own seed (the seed and the module's name), so adding a module changes no other
module's questions; questions longer than the generator's own limits are dropped and drawn again, as its
`generate.py` does.
"""

import json
import random
import sys
import zlib

import numpy as np
from mathematics_dataset import generate_settings
from mathematics_dataset.modules import modules


def flatten(tree, prefix=""):
    for key, value in sorted(tree.items()):
        name = f"{prefix}__{key}" if prefix else key
        if isinstance(value, dict):
            yield from flatten(value, name)
        else:
            yield name, value


def main() -> None:
    request = json.loads(sys.argv[1])
    generators = dict(flatten(modules.train(lambda entropy_range: entropy_range)))  # the 'train' regime
    unknown = sorted(set(request["modules"]) - set(generators))
    if unknown:
        raise SystemExit(f"unknown mathematics_dataset modules: {', '.join(unknown)}")
    for name, count in request["modules"].items():
        seed = zlib.crc32(f"{request['seed']}/{name}".encode())
        random.seed(seed)
        np.random.seed(seed)
        made = 0
        while made < count:
            problem = generators[name]()
            question, answer = str(problem.question), str(problem.answer)
            if len(question) > generate_settings.MAX_QUESTION_LENGTH or len(answer) > generate_settings.MAX_ANSWER_LENGTH:
                continue
            print(json.dumps({"module": name, "question": question, "answer": answer}))
            made += 1


if __name__ == "__main__":
    main()
