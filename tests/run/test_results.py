"""Stages return what they found: the method's manifest entries (dimensions, landmarks, cost...) come back in the
`SelectionResult` that `select_influence` or `select_baseline` returns, not through the run's context, and the
manifest is written from them."""

import dataclasses
import json

import pytest

from influence_distillation.config import SelectConfig
from influence_distillation.run.context import RunContext
from influence_distillation.run.pipeline import run_selection

OWN_ENTRIES = {
    "influence": {"dimensions", "influence", "selection", "batch_sizes", "propagation", "landmarks", "cost"},
    "random": {"selection", "dimensions", "cost"},
}


@pytest.mark.parametrize("method", sorted(OWN_ENTRIES))
def test_the_method_details_come_back_in_the_result(method, model_dir, data_files, tmp_path):
    pool, target = data_files
    config = SelectConfig(pool=str(pool), target=str(target), out=str(tmp_path / "out"), method=method)
    config.model.path, config.selection.budget = str(model_dir("llama")), 5
    result = run_selection(config, progress=False)
    assert set(result.details) == OWN_ENTRIES[method]
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for key, value in result.details.items():
        assert result.manifest[key] is value and written[key] == json.loads(json.dumps(value)), key
    with pytest.raises(dataclasses.FrozenInstanceError):  # nobody writes a result after its stage returned it
        result.details = {}  # type: ignore[misc]
    assert "details" not in {field.name for field in dataclasses.fields(RunContext)}
