"""Config keys: options added later must not invalidate runs and caches made before them, and must when set."""

import dataclasses

import pytest

from influence_distillation.config import SelectConfig
from influence_distillation.errors import ConfigError
from influence_distillation.options import from_dict, key_dict, same_config, to_dict


def _added(config) -> list[tuple[str, str]]:
    return [(section.name, spec.name) for section in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, section.name))
            for spec in dataclasses.fields(getattr(config, section.name)) if spec.metadata.get("added")]


def _older(config) -> dict:
    """The config as a version without the `added` options would have saved it."""
    stored = to_dict(config)
    for section, name in _added(config):
        del stored[section][name]
    return stored


def test_added_options_at_their_defaults_leave_the_key_of_an_older_run_unchanged():
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    assert ("gradients", "batch_size") in _added(config) and ("embedding", "method") in _added(config)
    older = _older(config)
    assert key_dict(config) == older  # exactly what the older version hashed
    assert same_config(older, config)
    assert from_dict(SelectConfig, older) == config


def test_an_added_option_set_away_from_its_default_changes_the_key():
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    older = _older(config)
    changed = dataclasses.replace(config, gradients=dataclasses.replace(config.gradients, projection="countsketch"))
    assert key_dict(changed)["gradients"]["projection"] == "countsketch"
    assert key_dict(changed) != key_dict(config)
    assert not same_config(older, changed)


def test_same_config_rejects_other_values_and_unreadable_configs():
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    other = to_dict(config)
    other["landmarks"]["count"] = 7
    assert not same_config(other, config)
    assert not same_config({"no_such_key": 1}, config)
    assert not same_config(None, config)


def test_a_missing_budget_is_named_as_required_not_as_out_of_range():
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.model.path = "m"
    with pytest.raises(ConfigError, match="--budget is required"):
        config.validate()
    config.selection.budget = -3
    with pytest.raises(ConfigError, match="--budget must be at least 1, got -3"):
        config.validate()


def test_a_run_saved_before_an_option_whose_default_changes_behaviour_is_not_the_same_run():
    """`--verify` defaults to verification landmarks; a run saved before it existed had none, so it must not be
    reused as if it had been made with today's defaults."""
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    stored = _older(config)
    assert same_config(stored, config)
    del stored["landmarks"]["verify"]
    assert not same_config(stored, config)
