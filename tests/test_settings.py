"""config/schema.yaml is the one source of every setting's default and limits: the library's TrainConfig and
PredictConfig and the docs in config/README.md are held equal to it here, UNetSpec defaults none of them, and
config/config.yaml (where user configs start) sets none of them."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from conftest import REPO
from n2vpipe.discover import ArrivalRule
from n2vpipe.ingest import ingest_tiff
from n2vpipe.predict import PredictConfig
from n2vpipe.train import TrainConfig
from n2vpipe.unet import UNetSpec

SCHEMA: dict[str, Any] = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
TRAIN_SCHEMA: dict[str, Any] = SCHEMA["properties"]["train"]["properties"]
PREDICT_SCHEMA: dict[str, Any] = SCHEMA["properties"]["predict"]["properties"]


def test_train_config_defaults_are_the_schema_defaults() -> None:
    defaults = TrainConfig().to_dict()
    assert set(defaults) == set(TRAIN_SCHEMA), "TrainConfig and the schema's train section list the same keys"
    assert {key: defaults[key] for key in TRAIN_SCHEMA} == {key: spec["default"] for key, spec in TRAIN_SCHEMA.items()}


def test_the_network_settings_have_no_second_default() -> None:
    required = {f.name for f in dataclasses.fields(UNetSpec) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    assert {"depth", "base_filters", "batch_norm"} <= required


def test_predict_config_defaults_are_the_schema_defaults() -> None:
    defaults = PredictConfig().to_dict()
    assert set(defaults) == set(PREDICT_SCHEMA), "PredictConfig and the schema's predict section list the same keys"
    assert defaults == {key: spec["default"] for key, spec in PREDICT_SCHEMA.items()}


def test_ingest_defaults_are_the_schema_defaults() -> None:
    """ingest_tiff's keyword defaults (what a library caller gets) are the workflow's."""
    parameters = inspect.signature(ingest_tiff).parameters
    ingest = SCHEMA["properties"]["ingest"]["properties"]
    assert {key: parameters[key].default for key in ingest if key != "chunks"} == \
        {key: spec["default"] for key, spec in ingest.items() if key != "chunks"}
    assert parameters["spatial_chunks"].default is inspect.Parameter.empty


def test_arrival_defaults_are_the_schema_defaults() -> None:
    arrival = SCHEMA["properties"]["arrival"]["properties"]
    assert dataclasses.asdict(ArrivalRule()) == {key: spec["default"] for key, spec in arrival.items()}
    assert ArrivalRule.from_mapping({"min_age_seconds": 60}) == ArrivalRule(60, "")


def _limit_cases(section: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """(key, value, accepted) at and just beyond every bound and choice the schema sets in ``section``."""
    cases = []
    for key, spec in section.items():
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


@pytest.mark.parametrize(("key", "value", "accepted"), _limit_cases(TRAIN_SCHEMA))
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


@pytest.mark.parametrize(("key", "value", "accepted"), _limit_cases(PREDICT_SCHEMA))
def test_predict_config_enforces_the_schema_limits(key: str, value: Any, accepted: bool) -> None:
    if accepted:
        assert getattr(PredictConfig(**{key: value}), key) == value
    else:
        with pytest.raises(ValueError, match=rf"inference settings: {key} must be"):
            PredictConfig(**{key: value})


def _block_cases() -> list[tuple[str, Any, bool]]:
    """(key, value, accepted) for the block sizes: the axes the schema requires, each at least its minimum."""
    cases = []
    for key in ("block", "block_2d"):
        spec = SCHEMA["$defs"][PREDICT_SCHEMA[key]["$ref"].rpartition("/")[2]]
        assert set(spec["required"]) == set(spec["properties"]) and spec["additionalProperties"] is False
        sizes = {axis: 8 for axis in spec["required"]}
        cases += [(key, sizes, True), (key, {**sizes, "t": 8}, False), (key, dict(list(sizes.items())[1:]), False)]
        for axis, axis_spec in spec["properties"].items():
            cases += [(key, {**sizes, axis: axis_spec["minimum"]}, True),
                      (key, {**sizes, axis: axis_spec["minimum"] - 1}, False)]
    return cases


@pytest.mark.parametrize(("key", "value", "accepted"), _block_cases())
def test_predict_config_holds_the_block_axes_and_sizes_to_the_schema(key: str, value: Any, accepted: bool) -> None:
    if accepted:
        assert PredictConfig(**{key: value}).to_dict()[key] == value
    else:
        with pytest.raises(ValueError, match=rf"inference settings: {key}\S* must"):
            PredictConfig(**{key: value})


@pytest.mark.parametrize(("value", "accepted"), [("auto", True), ([0, 1000], True), ([0.5, 2.5], True),
                                                  ("percentiles", False), ([0], False), ([0, 1, 2], False)])
def test_predict_config_takes_auto_or_two_numbers_as_output_range(value: Any, accepted: bool) -> None:
    alternatives = PREDICT_SCHEMA["output_range"]["oneOf"]
    assert alternatives[0]["enum"] == ["auto"] and (alternatives[1]["minItems"], alternatives[1]["maxItems"]) == (2, 2)
    if accepted:
        assert PredictConfig(output_range=value).output_range == value
    else:
        with pytest.raises(ValueError, match=r"inference settings: output_range must be auto or \[low, high\]"):
            PredictConfig(output_range=value)


def test_unknown_inference_settings_are_refused_naming_them() -> None:
    assert PredictConfig.from_mapping({"jobs": 2, "block_2d": {"y": 64, "x": 64}}).jobs == 2
    with pytest.raises(ValueError, match=r"^unknown inference settings: blocks, treads$"):
        PredictConfig.from_mapping({"blocks": {}, "treads": 2})


def _documented_rows() -> dict[str, tuple[str, str]]:
    """config/README.md's table rows as {"section.key" or "key": (default cell, what-it-does cell)}; the
    section is the last `## \\`name\\`` heading; the table after "Keys of each rule's entry" is `resources.*`."""
    rows: dict[str, tuple[str, str]] = {}
    section = ""
    for line in (REPO / "config" / "README.md").read_text().splitlines():
        heading = re.fullmatch(r"## `(\w+)`", line)
        if heading or line.startswith("## "):
            section = heading.group(1) if heading else ""
        if line.startswith("Keys of each rule's entry"):
            section = "resources.*"
        row = re.match(r"\| `(\w+)` \| (.+?) \| (.+?) \|.*\|$", line)
        if row:
            key = f"{section}.{row.group(1)}" if section else row.group(1)
            rows[key] = (row.group(2), row.group(3))
    return rows


def _schema_rows() -> dict[str, tuple[str, str]]:
    """What config/README.md must show for every key of the schema: its default and its description."""

    def row(spec: dict[str, Any]) -> tuple[str, str]:
        default = f"`{json.dumps(spec['default'])}`" if "default" in spec else "—"
        described = spec if "description" in spec else SCHEMA["$defs"][spec["$ref"].rpartition("/")[2]]
        return default, " ".join(described["description"].split())

    rows: dict[str, tuple[str, str]] = {}
    for key, spec in SCHEMA["properties"].items():
        if "properties" in spec:
            rows.update({f"{key}.{sub}": row(sub_spec) for sub, sub_spec in spec["properties"].items()})
        elif key != "acquisitions":
            rows[key] = row(spec)
    rows.update({f"resources.*.{key}": row(spec) for key, spec in SCHEMA["$defs"]["resources"]["properties"].items()})
    return rows


def test_config_readme_shows_every_key_with_the_schema_default_and_description() -> None:
    documented, expected = _documented_rows(), _schema_rows()
    assert set(documented) == set(expected), "config/README.md and config/schema.yaml list the same keys"
    assert {key: documented[key] for key in expected} == expected


def test_config_yaml_leaves_every_setting_to_the_schema_default() -> None:
    """config/config.yaml is what a user's config starts from: it sets the folders, never a setting, so
    a key a user leaves out takes the default real data should get (the demo's values live in demo.yaml)."""
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    sections = {key for key, spec in SCHEMA["properties"].items() if "properties" in spec}
    assert shipped and not sections & set(shipped)


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_config_files_are_valid(name: str) -> None:
    jsonschema.validate(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)


SCHEMA_KEYWORDS = {"type", "default", "description", "enum", "minimum", "maximum", "exclusiveMinimum", "items",
                   "minItems", "maxItems", "properties", "additionalProperties", "required", "$ref", "oneOf", "anyOf",
                   "minLength", "pattern", "title", "examples"}


def _property_specs(spec: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every property spec under ``spec`` (recursively), with its dotted path."""
    found = []
    for key, sub in spec.get("properties", {}).items():
        found += [(f"{path}{key}", sub), *_property_specs(sub, f"{path}{key}.")]
    return found


@pytest.mark.parametrize(("path", "spec"), _property_specs(SCHEMA, "") + [
    (f"$defs.{name}", spec) for name, spec in SCHEMA["$defs"].items()])
def test_every_schema_entry_uses_only_json_schema_keywords(path: str, spec: dict[str, Any]) -> None:
    """A comma in an unquoted YAML flow-mapping description splits it into a stray key, which JSON Schema
    ignores silently: the description is cut and the docs show half a sentence."""
    assert set(spec) <= SCHEMA_KEYWORDS, f"{path}: {sorted(set(spec) - SCHEMA_KEYWORDS)}"
