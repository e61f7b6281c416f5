"""config/schema.yaml is the one source of the training settings' defaults and limits; the library's
TrainConfig is held equal to it here, and UNetSpec defaults none of them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from conftest import REPO
from n2vpipe.train import TrainConfig
from n2vpipe.unet import UNetSpec

SCHEMA: dict[str, Any] = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
TRAIN_SCHEMA: dict[str, Any] = SCHEMA["properties"]["train"]["properties"]


def test_train_config_defaults_are_the_schema_defaults() -> None:
    defaults = TrainConfig().to_dict()
    assert set(defaults) == set(TRAIN_SCHEMA), "TrainConfig and the schema's train section list the same keys"
    assert {key: defaults[key] for key in TRAIN_SCHEMA} == {key: spec["default"] for key, spec in TRAIN_SCHEMA.items()}


def test_the_network_settings_have_no_second_default() -> None:
    required = {f.name for f in dataclasses.fields(UNetSpec) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    assert {"depth", "base_filters", "batch_norm"} <= required


def _limit_cases() -> list[tuple[str, Any, bool]]:
    """(key, value, accepted) at and just beyond every bound and choice the schema sets for training."""
    cases = []
    for key, spec in TRAIN_SCHEMA.items():
        step = 1 if spec.get("type") == "integer" else 1e-9
        if "minimum" in spec:
            cases += [(key, spec["minimum"], True), (key, spec["minimum"] - step, False)]
        if "exclusiveMinimum" in spec:
            cases += [(key, spec["exclusiveMinimum"] + step, True), (key, spec["exclusiveMinimum"], False)]
        if "maximum" in spec:
            cases += [(key, spec["maximum"], True), (key, spec["maximum"] + step, False)]
        choices = spec.get("enum") or SCHEMA["$defs"].get(spec.get("$ref", "").rpartition("/")[2], {}).get("enum")
        if choices:
            cases += [(key, choice, True) for choice in choices] + [(key, "no-such-choice", False)]
    return cases


@pytest.mark.parametrize(("key", "value", "accepted"), _limit_cases())
def test_train_config_enforces_the_schema_limits(key: str, value: Any, accepted: bool) -> None:
    if accepted:
        assert getattr(TrainConfig(**{key: value}), key) == value
    else:
        with pytest.raises(ValueError, match=rf"training settings: {key} must be"):
            TrainConfig(**{key: value})


def test_a_negative_step_count_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^training settings: steps must be >= 1, not -1$"):
        TrainConfig(steps=-1)
    with pytest.raises(ValueError, match=r"patch\.y must be >= 1, not 0"):
        TrainConfig(patch={"z": 4, "y": 0, "x": 4})
