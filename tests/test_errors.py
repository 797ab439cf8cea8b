"""The library speaks Python: its errors name the config field (`SelectionConfig.budget`), which a caller of
`run_selection(SelectConfig(...))` set, not the flag (`--budget`) it never passed; the CLI prints the flag."""

import ast
import re
from pathlib import Path

import pytest
from conftest import select_args

from influence_distillation.cli import build_parser, cli_words, main
from influence_distillation.config import SelectConfig, WarmupConfig
from influence_distillation.errors import ConfigError, DataError
from influence_distillation.evaluation.configs import BenchmarkConfig, DemoConfig, EvalConfig
from influence_distillation.options import as_flags, field_flags
from influence_distillation.run.pipeline import run_selection

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "influence_distillation"
LIBRARY = ("errors", "options", "config", "artifacts", "stats", "data", "model", "method", "run")  # below the CLI
FIELDS = field_flags(SelectConfig, WarmupConfig, EvalConfig, DemoConfig, BenchmarkConfig)


def command_flags() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and "select" in a.choices).choices.values()
    return {flag for command in commands for action in command._actions for flag in action.option_strings}


def config(**selection) -> SelectConfig:
    made = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    made.model.path = "m"
    for name, value in selection.items():
        setattr(made.selection, name, value)
    return made


def test_a_python_caller_is_told_the_field_not_the_flag(tmp_path):
    for made, expected in ((config(), "SelectionConfig.budget is required"),
                           (config(budget=-3), "SelectionConfig.budget must be at least 1, got -3"),
                           (config(budget=5, strategy="best"), "SelectionConfig.strategy must be one of auto, "
                                                               "round-robin, top-k, weights, got 'best'")):
        for call in (made.validate, lambda: run_selection(made)):  # the run checks before it loads anything
            with pytest.raises(ConfigError, match=re.escape(expected)) as raised:
                call()
            assert "--" not in str(raised.value)
    assert not (tmp_path / "o").exists()


def test_a_budget_above_the_pool_names_the_field_in_python_and_the_flag_in_the_cli(model_dir, data_files, tmp_path,
                                                                                   capsys):
    pool, target = data_files
    made = SelectConfig(pool=str(pool), target=str(target), out=str(tmp_path / "python"))
    made.model.path, made.selection.budget = str(model_dir("llama")), 37
    with pytest.raises(DataError, match=r"^SelectionConfig.budget=37 exceeds the 36 selectable pool samples") as raised:
        run_selection(made, progress=False)
    assert "--" not in str(raised.value)
    assert main(select_args(pool, target, model_dir("llama"), tmp_path / "cli", 37)) == 2
    assert "influence-distill: error: --budget 37 exceeds the 36 selectable pool samples" in capsys.readouterr().err


def test_the_cli_names_its_flags(data_files, tmp_path, capsys):
    pool, target = data_files
    code = main(["select", "--pool", str(pool), "--target", str(target), "--model", "m", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == "influence-distill: error: --budget is required: the number of pool samples to select"


def test_field_mentions_become_flags_with_their_values():
    flags = field_flags(SelectConfig)
    assert as_flags("SelectionConfig.budget is required", flags) == "--budget is required"
    assert as_flags("LandmarkConfig.count=80 or InfluenceConfig.exact=True", flags) == "--landmarks 80 or --exact"
    assert as_flags("allow it (DataConfig.template_fallback=False)", flags) == "allow it (--no-template-fallback)"
    assert as_flags("ModelConfig.path=\"/a b/it's\": no config.json", flags) == "--model /a b/it's: no config.json"
    assert as_flags("use SelectionConfig.strategy='weights'; pass overwrite=True", flags) == \
        "use --selection weights; pass --overwrite"
    assert as_flags("WarmupConfig.params and SelectionConfig.nothing stay", flags) == \
        "WarmupConfig.params and SelectionConfig.nothing stay"  # not select's fields
    assert cli_words("WarmupConfig.params='x' matches no parameter") == "--train-params x matches no parameter"


def raise_texts(source: str) -> list[tuple[int, str]]:
    """The literal text in every `raise` statement: its strings and the fixed pieces of its f-strings."""
    return [(node.lineno, sub.value) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Raise)
            and node.exc is not None for sub in ast.walk(node.exc)
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str)]


def flags_in_errors(sources: dict[str, str], flags: set[str]) -> list[str]:
    return [f"{module}:{line}: {flag}" for module, source in sorted(sources.items())
            for line, text in raise_texts(source) for flag in re.findall(r"--[a-z][a-z0-9-]*", text) if flag in flags]


def unknown_fields(sources: dict[str, str]) -> list[str]:
    """`Config.field` mentions in any string of the package that name no field of a command's config."""
    return [f"{module}: {name}" for module, source in sorted(sources.items())
            for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            for name in re.findall(r"\b[A-Z][A-Za-z]*Config\.[a-z_][a-z0-9_]*", node.value) if name not in FIELDS]


def package_sources(parts) -> dict[str, str]:
    return {str(path.relative_to(PACKAGE)): path.read_text() for path in PACKAGE.rglob("*.py")
            if path.relative_to(PACKAGE).with_suffix("").parts[0] in parts}


def test_no_library_error_names_a_flag_and_every_field_it_names_exists():
    assert not (found := flags_in_errors(package_sources(LIBRARY), command_flags())), "\n".join(found)
    everything = package_sources({path.relative_to(PACKAGE).with_suffix("").parts[0]
                                  for path in PACKAGE.rglob("*.py")})
    assert not (found := unknown_fields(everything)), "\n".join(found)


def test_the_checks_find_a_planted_flag_and_a_misspelt_field():
    planted = {"run/a.py": 'def f(n):\n    raise ValueError(f"--budget {n} and --no-deps")\n    x = "--budget"\n',
               "data/b.py": 'MESSAGE = "SelectionConfig.budgett and SelectionConfig.budget"\n'}
    assert flags_in_errors(planted, command_flags()) == ["run/a.py:2: --budget"]  # pip's --no-deps is not ours
    assert unknown_fields(planted) == ["data/b.py: SelectionConfig.budgett"]
