"""Config keys: options added later must not invalidate runs and caches made before them, and must when set;
performance options (batch sizes) never count."""

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
    """The config as a version without the `added` options would have saved it (with the CPU's fixed JVP batch
    of 8, before batch sizes depended on the device)."""
    stored = to_dict(config)
    for section, name in _added(config):
        del stored[section][name]
    del stored["gradients"]["batch_size"]  # added, at 1, before it became a performance option
    stored["embedding"]["batch_size"] = 8
    return stored


def test_added_options_at_their_defaults_leave_an_older_run_the_same_run():
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    assert ("data", "split") in _added(config) and ("landmarks", "verify_space") in _added(config)
    older = _older(config)
    assert same_config(older, config)
    assert key_dict(from_dict(SelectConfig, older)) == key_dict(config)
    assert from_dict(SelectConfig, older) == dataclasses.replace(
        config, embedding=dataclasses.replace(config.embedding, batch_size=8))


def test_batch_sizes_are_neither_in_the_key_nor_in_run_comparisons():
    """A run made with other batch sizes (or on a device whose defaults differ) is the same run and reuses caches;
    the manifest still records them, so a replay runs as the original did."""
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    batched = dataclasses.replace(config, embedding=dataclasses.replace(config.embedding, batch_size=64),
                                  gradients=dataclasses.replace(config.gradients, batch_size=16))
    assert "batch_size" not in key_dict(config)["embedding"] and "batch_size" not in key_dict(config)["gradients"]
    assert key_dict(batched) == key_dict(config)
    assert same_config(to_dict(batched), config) and same_config(to_dict(config), batched)
    assert to_dict(batched)["embedding"]["batch_size"] == 64
    assert from_dict(SelectConfig, to_dict(batched)) == batched
    deeper = dataclasses.replace(config, embedding=dataclasses.replace(config.embedding, num_blocks=3))
    assert not same_config(to_dict(deeper), config)  # an option that changes results still counts


def test_an_added_option_set_away_from_its_default_changes_the_key():
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    older = _older(config)
    changed = dataclasses.replace(config, landmarks=dataclasses.replace(config.landmarks, verify_space="minilm"))
    assert key_dict(changed)["landmarks"]["verify_space"] == "minilm"
    assert key_dict(changed) != key_dict(config)
    assert not same_config(older, changed)


def test_an_option_whose_default_changed_is_always_in_the_key():
    """The embedding method's default became central differences: a run or cache made with the JVP, when the JVP was
    the default, must not pass for today's default, so the method is named in every key, never left out."""
    config = SelectConfig(pool="p.jsonl", target="t.jsonl", out="o")
    config.selection.budget = 5
    assert config.embedding.method == "difference" and ("embedding", "method") not in _added(config)
    assert key_dict(config)["embedding"]["method"] == "difference"
    made_with_jvp = to_dict(dataclasses.replace(config, embedding=dataclasses.replace(config.embedding, method="jvp")))
    assert not same_config(made_with_jvp, config)
    assert key_dict(from_dict(SelectConfig, made_with_jvp)) != key_dict(config)


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
    with pytest.raises(ConfigError, match="SelectionConfig.budget is required"):
        config.validate()
    config.selection.budget = -3
    with pytest.raises(ConfigError, match="SelectionConfig.budget must be at least 1, got -3"):
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
    # --grad-projection was added at SRHT and its default became CountSketch: a run saved before it is not today's
    stored = _older(config)
    del stored["gradients"]["projection"]
    assert not same_config(stored, config)
