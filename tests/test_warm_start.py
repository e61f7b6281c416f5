"""train.init_from: training starts from another model's weights (a model folder, an n2vpipe package or another
acquisition's model, trained first), checked to be the same network; a mismatch fails naming both sides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import tifffile
import torch
import yaml

from conftest import run_snakemake
from n2vpipe.bioimageio_export import export_bioimageio
from n2vpipe.errors import InputError
from n2vpipe.io import open_ome_zarr, partial_path
from n2vpipe.model_io import WEIGHTS_FILE
from n2vpipe.train import TrainConfig, build_spec, train_n2v, warm_start, weights_digest
from n2vpipe.unet import UNet
from synthetic import poisson_gaussian, smooth_blobs
from tiny import noisy_raw_zarr, tiny_model

CHUNKS = {"z": 8, "y": 32, "x": 32}
PATCH = {"z": 8, "y": 16, "x": 16}
# The network tiny_model trains: what a warm start from it must build.
TINY_NETWORK = {"base_filters": 4, "depth": 1}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model/ folder of a tiny model trained on a 3D acquisition."""
    folder = tmp_path_factory.mktemp("source")
    return tiny_model(noisy_raw_zarr(folder, (16, 32, 32), CHUNKS), folder / "model", PATCH)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 3D acquisition (other seed and size) to train from the source's weights."""
    return noisy_raw_zarr(tmp_path_factory.mktemp("target"), (16, 48, 32), CHUNKS, seed=5)


def source_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / WEIGHTS_FILE, weights_only=True)


def assert_same_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == expected.keys()
    assert [name for name in weights if not torch.equal(weights[name], expected[name])] == []


def tiny_config(**overrides: object) -> TrainConfig:
    return TrainConfig(**{"patch": PATCH, "batch_size": 2, "steps": 2, "validation_fraction": 0, **TINY_NETWORK,
                          **overrides})


def test_the_starting_network_holds_exactly_the_source_weights(source: Path, target: Path) -> None:
    """Before the first optimiser step the network is the source model, bit for bit, and the record names it."""
    array, meta = open_ome_zarr(target)
    spec = build_spec(tiny_config(), meta)
    start = warm_start(source, spec, meta, target)
    network = UNet(spec)
    network.load_state_dict(start.weights)
    assert_same_weights(network.state_dict(), source_weights(source))
    assert start.record["source"] == str(source)
    assert start.record["weights_sha256"] == weights_digest(source_weights(source))
    assert start.record["trained_on"] == str(source.parent / "raw.ome.zarr")


def test_training_from_a_model_starts_from_its_weights_and_records_it(source: Path, target: Path,
                                                                      tmp_path: Path) -> None:
    """One step at a learning rate far below float32's resolution of the weights leaves them as they started:
    the warm-started run saves the source weights exactly, a run from scratch does not."""
    frozen = {"steps": 1, "learning_rate": 1e-30, "lr_schedule": "constant"}
    warm = train_n2v(target, tmp_path / "warm", tiny_config(init_from=str(source), **frozen))
    assert_same_weights(source_weights(tmp_path / "warm"), source_weights(source))
    scratch = train_n2v(target, tmp_path / "scratch", tiny_config(**frozen))
    assert not torch.equal(source_weights(tmp_path / "scratch")["head.weight"], source_weights(source)["head.weight"])
    recorded = json.loads((tmp_path / "warm" / "model.json").read_text())["training"]
    assert recorded["init_from"] == str(source)
    assert recorded["warm_start"]["weights_sha256"] == weights_digest(source_weights(source))
    assert scratch.training["warm_start"] is None
    # the acquisition's own normalisation, not the source model's
    assert warm.normalisation == scratch.normalisation


def test_a_package_gives_the_same_start_as_the_folder(source: Path, target: Path, tmp_path: Path) -> None:
    cover = tmp_path / "cover.png"
    raw = source.parent / "raw.ome.zarr"
    plt.imsave(cover, np.zeros((16, 16)))
    package = tmp_path / "model.bioimageio.zip"
    export_bioimageio(raw, source, cover, package, "source")
    _, meta = open_ome_zarr(target)
    start = warm_start(package, build_spec(tiny_config(), meta), meta, target)
    assert_same_weights(start.weights, source_weights(source))
    assert start.record["weights_sha256"] == weights_digest(source_weights(source))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"base_filters": 8}, "has base_filters 4, but training on {target} builds a network with base_filters 8 "
                          "(train.base_filters)"),
    ({"depth": 2}, "has depth 1, but training on {target} builds a network with depth 2 (train.depth)"),
    ({"batch_norm": True}, "has batch_norm False, but training on {target} builds a network with batch_norm True "
                           "(train.batch_norm)"),
    ({"variant": "n2v2"}, "has n2v2 False, but training on {target} builds a network with n2v2 True "
                          "(train.variant (n2v2))"),
], ids=["base_filters", "depth", "batch_norm", "variant"])
def test_another_network_fails_naming_both_sides_and_the_setting(source: Path, target: Path, tmp_path: Path,
                                                                 overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(f"{source}: the model to start from " +
                                                   message.format(target=target))):
        train_n2v(target, tmp_path / "model", tiny_config(init_from=str(source), **overrides))
    assert not (tmp_path / "model").exists() and not partial_path(tmp_path / "model").exists()


def test_a_2d_acquisition_cannot_start_from_a_3d_model(source: Path, tmp_path: Path) -> None:
    flat = noisy_raw_zarr(tmp_path, (32, 32), {"y": 32, "x": 32})
    with pytest.raises(InputError, match=re.escape(f"{source}: the model to start from has ndim 3, but training on "
                                                   f"{flat} builds a network with ndim 2 (dimensionality")):
        train_n2v(flat, tmp_path / "model", tiny_config(init_from=str(source), patch={"y": 16, "x": 16}))


def test_a_missing_source_is_named_with_the_setting(target: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nowhere: no such model folder or package \(setting train\.init_from\)"):
        train_n2v(target, tmp_path / "model", tiny_config(init_from=str(tmp_path / "nowhere")))


@pytest.mark.workflow
def test_an_acquisition_warm_started_from_another_trains_after_it_in_a_real_run(tmp_path: Path) -> None:
    """day2 sets train.init_from: day1. The dry run plans day2's training on day1's model; the run trains day1,
    then day2 from day1's weights, and day2's model.json names them."""
    (tmp_path / "in").mkdir()
    for seed, name in ((0, "day1"), (3, "day2")):
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", poisson_gaussian(smooth_blobs((16, 32, 32), seed=seed),
                                                                          seed=seed + 1))
    results = tmp_path / "results"
    config = {
        "input_dir": str(tmp_path / "in"), "results_dir": str(results),
        "ingest": {"chunks": CHUNKS},
        "train": {"patch": PATCH, "batch_size": 2, "steps": 4, "validation_fraction": 0, **TINY_NETWORK},
        "predict": {"block": CHUNKS, "pyramid_levels": 1},
        "export": {"tiff": False},
        "threads": {"ingest": 1, "train": 1, "predict": 1},
        "acquisitions": {"day2": {"train": {"init_from": "day1"}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = run_snakemake(["--configfile", str(tmp_path / "config.yaml"), "--dry-run", "--forceall"], cwd=tmp_path)
    plan = dry.stdout + dry.stderr
    day2_train = re.search(r"rule train:\n(?:    .*\n)*?    input: ([^\n]*)\n(?:    .*\n)*?    wildcards: acq=day2",
                           plan)
    assert day2_train is not None, plan
    assert f"{results}/day1/model" in day2_train.group(1)
    # asking for day2's model alone: the rest of the run is the same with or without a warm start
    result = run_snakemake(["--configfile", str(tmp_path / "config.yaml"), "--cores", "2",
                            f"{results}/day2/model"], cwd=tmp_path)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, flags=re.MULTILINE))
    assert counts["train"] == "2", counts
    day1, day2 = results / "day1" / "model", results / "day2" / "model"
    assert day1.stat().st_mtime <= day2.stat().st_mtime
    recorded = json.loads((day2 / "model.json").read_text())["training"]
    assert recorded["warm_start"]["source"] == f"{results}/day1/model"
    assert recorded["warm_start"]["weights_sha256"] == weights_digest(source_weights(day1))
    assert json.loads((day1 / "model.json").read_text())["training"]["warm_start"] is None
