"""Training: a real (tiny) run on a zarr, the saved model, resume, early stopping, structN2V."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from n2vpipe.device import GpuUnusable, arithmetic_name, autocast_dtype, cpu_has_amx_bf16, select_device
from n2vpipe.errors import InputError
from n2vpipe.ingest import ingest_tiff
from n2vpipe.io import open_ome_zarr, partial_path
from n2vpipe.jobs import job_logging
from n2vpipe.model_io import Normalisation, load_model
from n2vpipe.train import (
    CHECKPOINT_FILE,
    PatchPool,
    Region,
    TrainConfig,
    ValidationSet,
    WeightAverage,
    _masked_tensors,
    augment,
    budget_progress,
    estimate_normalisation,
    learning_rate_at,
    split_regions,
    train_n2v,
    validation_masks,
    validation_patch,
)
from n2vpipe.unet import UNet, UNetSpec
from synthetic import poisson_gaussian, smooth_blobs
from tiny import noisy_raw_zarr

TINY = dict(patch={"z": 8, "y": 32, "x": 32}, batch_size=2, base_filters=4, validate_every=2,
            checkpoint_every=3, validation_patches=2, pool_tiles=2)


@pytest.fixture()
def raw_zarr(tmp_path: Path) -> Path:
    noisy = poisson_gaussian(smooth_blobs((16, 48, 48), seed=0), seed=1)
    tifffile.imwrite(tmp_path / "vol.tif", noisy, imagej=True, metadata={"axes": "ZYX", "spacing": 0.2},
                     resolution=(10.0, 10.0))
    ingest_tiff(tmp_path / "vol.tif", tmp_path / "raw.ome.zarr", {"z": 8, "y": 16, "x": 16})
    return tmp_path / "raw.ome.zarr"


def test_training_writes_a_self_describing_model(raw_zarr: Path, tmp_path: Path) -> None:
    train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=4, **TINY))
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"weights.pt", "model.json", "training_log.csv", "loss.png"} <= files
    assert CHECKPOINT_FILE not in files
    description = json.loads((tmp_path / "model" / "model.json").read_text())
    assert description["architecture"]["ndim"] == 3
    assert description["spatial_axes"] == "zyx"
    assert description["training"]["seed"] == 0 and description["training"]["steps"] == 4
    assert 100 < description["normalisation"]["mean"][0] < 200
    assert description["receptive_field"][1] == 47
    model, loaded = load_model(tmp_path / "model")
    assert not model.training and loaded.normalisation.std[0] > 0


def test_weights_file_holds_tensors_only(raw_zarr: Path, tmp_path: Path) -> None:
    train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=2, **TINY))
    state = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_same_seed_gives_identical_weights_on_cpu(raw_zarr: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        train_n2v(raw_zarr, tmp_path / name, TrainConfig(steps=3, **TINY), threads=1)
    first = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    second = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_interrupted_training_resumes_from_its_checkpoint(raw_zarr: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A run stopped after step 3 leaves a checkpoint; the next run continues from step 3."""
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model", TrainConfig(steps=6, **TINY))
    partial = partial_path(tmp_path / "model")
    assert (partial / CHECKPOINT_FILE).exists() and not (tmp_path / "model").exists()
    with caplog.at_level(logging.INFO, logger="n2vpipe.train"):
        train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=6, **TINY))
    assert f"resuming from {partial_path(tmp_path / 'model') / CHECKPOINT_FILE} at step 3" in caplog.text
    steps = [int(line.split(",")[0]) for line in (tmp_path / "model" / "training_log.csv").read_text().split()[1:]]
    assert steps == [2, 4, 6], "log continues after the checkpoint at step 3 instead of restarting"
    assert json.loads((tmp_path / "model" / "model.json").read_text())["history"]["steps_done"] == 6


def test_checkpoint_from_other_settings_is_not_resumed(raw_zarr: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model", TrainConfig(steps=6, **TINY))
    with caplog.at_level(logging.INFO, logger="n2vpipe.train"):
        train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=4, learning_rate=1e-3, **TINY))
    assert "other training settings (learning_rate: 0.0004 -> 0.001; steps: 6 -> 4)" in caplog.text
    steps = [int(line.split(",")[0]) for line in (tmp_path / "model" / "training_log.csv").read_text().split()[1:]]
    assert steps == [2, 4], "an edited config must train from scratch"


def _train_and_interrupt_after_checkpoint(raw_zarr: Path, model_dir: Path, config: TrainConfig) -> None:
    """Run training and raise KeyboardInterrupt right after the first checkpoint is written."""
    import n2vpipe.train as train_module

    original = train_module._save_checkpoint

    def save_then_interrupt(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)
        raise KeyboardInterrupt

    train_module._save_checkpoint = save_then_interrupt
    try:
        train_n2v(raw_zarr, model_dir, config)
    finally:
        train_module._save_checkpoint = original


def test_validation_region_is_disjoint_from_training() -> None:
    train, val = split_regions((32, 200, 64), (16, 64, 64), 0.1, (4, 4, 4))
    assert val is not None
    assert train.stop[1] == val.start[1] == 168 and val.stop[1] == 200
    assert split_regions((16, 64, 64), (16, 64, 64), 0.1, (4, 4, 4))[1] is None


def test_validation_slab_of_a_small_volume_is_half_a_patch_on_the_grid() -> None:
    train, val = split_regions((32, 128, 128), (16, 64, 64), 0.1, (4, 4, 4))
    assert val is not None and train.stop == (24, 128, 128) and val.start == (24, 0, 0)
    assert validation_patch((16, 64, 64), val) == (8, 64, 64)
    train, val = split_regions((32, 1000, 64), (16, 64, 64), 0.1, (4, 4, 4))
    assert val is not None and val.shape == (32, 100, 64) and validation_patch((16, 64, 64), val) == (16, 64, 64)
    assert split_regions((16, 90, 64), (16, 64, 64), 0.1, (4, 4, 4))[1] is None


def test_augmentation_never_mixes_z() -> None:
    """Each Z plane of an augmented patch comes from the same Z plane of the original."""
    batch = np.arange(2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8)
    out = augment(batch, np.random.default_rng(0))
    for original, augmented in zip(batch, out, strict=True):
        for z in range(4):
            assert set(augmented[z].ravel()) == set(original[z].ravel())


def test_unknown_training_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown training settings: stpes"):
        TrainConfig.from_mapping({"stpes": 10})


def _log_rows(model_dir: Path) -> list[dict[str, float]]:
    """The training log as numbers, one dict per row."""
    lines = (model_dir / "training_log.csv").read_text().split()
    header = lines[0].split(",")
    return [dict(zip(header, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def _history(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.json").read_text())["history"]


def test_early_stopping_saves_the_weights_of_the_best_validation(raw_zarr: Path, tmp_path: Path) -> None:
    settings = {**TINY, "steps": 200, "lr_schedule": "constant", "early_stopping_patience": 2}
    train_n2v(raw_zarr, tmp_path / "stopped", TrainConfig(**settings))
    history, rows = _history(tmp_path / "stopped"), _log_rows(tmp_path / "stopped")
    best_row = min(rows, key=lambda row: row["val_loss"])
    assert history["stopped_by"] == "early_stopping" and history["steps_done"] < 200
    assert history["best_step"] == best_row["step"] and history["best_val_loss"] == pytest.approx(best_row["val_loss"])
    assert history["steps_done"] == history["best_step"] + 2 * TINY["validate_every"], "patience counts validations"
    assert {row["learning_rate"] for row in rows} == {TrainConfig().learning_rate}
    # The same trajectory stopped by the step budget at best_step ends on the weights early stopping kept.
    train_n2v(raw_zarr, tmp_path / "cut", TrainConfig(**{**settings, "steps": history["best_step"]}))
    assert _history(tmp_path / "cut")["stopped_by"] == "steps"
    kept = torch.load(tmp_path / "stopped" / "weights.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "weights.pt", weights_only=True)
    assert all(torch.equal(kept[k], cut[k]) for k in kept)


def test_best_weights_survive_a_resume_from_the_checkpoint(raw_zarr: Path, tmp_path: Path) -> None:
    """Interrupted after the last step's checkpoint, the resumed run saves the best weights that checkpoint holds.

    float32, so the losses (and where the best one falls) are the same whatever the CPU multiplies in."""
    config = TrainConfig(steps=6, **{**TINY, "learning_rate": 3e-2, "validate_every": 1, "checkpoint_every": 6,
                                     "precision": "float32"})
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model", config)
    checkpoint = torch.load(partial_path(tmp_path / "model") / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["step"] == 6
    assert checkpoint["best"]["step"] < 6, "test setup: these settings must have their best validation before the end"
    train_n2v(raw_zarr, tmp_path / "model", config)
    history, rows = _history(tmp_path / "model"), _log_rows(tmp_path / "model")
    assert history["best_step"] == checkpoint["best"]["step"] == min(rows, key=lambda row: row["val_loss"])["step"]
    saved = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(torch.equal(saved[k], checkpoint["best"]["weights"][k]) for k in saved)
    assert not all(torch.equal(saved[k], checkpoint["model"][k]) for k in saved)


def test_struct_mask_hides_more_input_pixels_than_the_loss_sees() -> None:
    batch = np.random.default_rng(0).permutation(2 * 8 * 32 * 32).reshape(2, 8, 32, 32).astype(np.float32)
    config = TrainConfig(masked_fraction=0.01, struct_mask=[[1, 1, 1, 1, 1]])
    inputs, targets, masks = _masked_tensors(batch, config, np.random.default_rng(1), torch.device("cpu"))
    changed = int((inputs != targets).sum())
    assert masks.sum() > 0 and changed > 2 * int(masks.sum())


def test_struct_n2v_training_resumes_with_its_mask(raw_zarr: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The nested-list mask survives the tensors-only checkpoint, so the resumed run keeps its progress."""
    config = TrainConfig(steps=6, struct_mask=[[1, 1, 1, 1, 1]], **TINY)
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model", config)
    with caplog.at_level(logging.INFO, logger="n2vpipe.train"):
        train_n2v(raw_zarr, tmp_path / "model", config)
    assert f"resuming from {partial_path(tmp_path / 'model') / CHECKPOINT_FILE} at step 3" in caplog.text
    assert [row["step"] for row in _log_rows(tmp_path / "model")] == [2, 4, 6]
    assert json.loads((tmp_path / "model" / "model.json").read_text())["training"]["struct_mask"] == [[1, 1, 1, 1, 1]]


def test_bad_struct_mask_fails_before_training(raw_zarr: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="odd size"):
        train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=2, struct_mask=[[1, 1, 1, 1]], **TINY))
    assert not partial_path(tmp_path / "model").exists()


def test_cosine_schedule_follows_whichever_budget_is_further_along() -> None:
    config = TrainConfig(steps=1000, max_minutes=2.0, learning_rate=1e-3)
    assert budget_progress(config, 100, 60.0) == 0.5
    assert budget_progress(config, 750, 60.0) == 0.75
    assert budget_progress(config, 10, 500.0) == 1.0
    assert budget_progress(TrainConfig(steps=1000), 250, 1e6) == 0.25, "no wall budget: steps only"
    assert learning_rate_at(config, 0.0) == pytest.approx(1e-3)
    assert learning_rate_at(config, 0.5) == pytest.approx(0.5 * (1e-3 + 5e-5))
    assert learning_rate_at(config, 1.0) == pytest.approx(5e-5)
    assert learning_rate_at(TrainConfig(lr_schedule="constant", learning_rate=1e-3), 0.9) == 1e-3


def test_wall_time_budget_ends_training_annealed(raw_zarr: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "steps": 10**6, "max_minutes": 0.1, "validate_every": 5})
    train_n2v(raw_zarr, tmp_path / "model", config)
    history, rows = _history(tmp_path / "model"), _log_rows(tmp_path / "model")
    assert history["stopped_by"] == "max_minutes" and 10 < history["steps_done"] < 10**6
    rates = [row["learning_rate"] for row in rows]
    assert rates == sorted(rates, reverse=True) and rates[0] < config.learning_rate
    assert rates[-1] < 0.2 * config.learning_rate, "the budget's end is the schedule's end"
    assert (tmp_path / "model" / "weights.pt").exists()


def test_precision_auto_is_bfloat16_where_the_hardware_has_it_and_float16_on_older_gpus() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cuda, native_bf16=lambda: True) is torch.bfloat16  # Ampere and later
    assert autocast_dtype("auto", cuda, native_bf16=lambda: False) is torch.float16  # V100, T4
    assert autocast_dtype("float32", cuda, native_bf16=lambda: True) is None
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16 and autocast_dtype("float16", cpu) is torch.float16
    assert autocast_dtype("float32", cpu) is None
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_amx_bf16() else None)
    assert [arithmetic_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize(("flags", "amx"), [
    ("fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
    ("fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni", False),  # AMD Zen 4: not reproducible in bfloat16
    ("fpu sse2 avx2 fma", False),
])
def test_amx_cpus_are_told_by_their_flags(tmp_path: Path, flags: str, amx: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\n")
    assert cpu_has_amx_bf16(cpuinfo) is amx
    assert cpu_has_amx_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(("validate_every", "checkpoint_every", "message"), [
    (1, 1, "training loss became nan by step 2"),
    (4, 1, "weights became non-finite by step 2"),  # diverged between validations, caught before its checkpoint
])
def test_a_diverging_run_stops_with_the_file_named_and_a_finite_checkpoint(
        raw_zarr: Path, tmp_path: Path, validate_every: int, checkpoint_every: int, message: str) -> None:
    """A diverging run fails the job instead of saving a model that denoises to NaN; the checkpoint kept is finite."""
    config = TrainConfig(steps=8, **{**TINY, "learning_rate": 1e30, "precision": "float32",
                                     "validate_every": validate_every, "checkpoint_every": checkpoint_every})
    with pytest.raises(FloatingPointError, match=rf"{raw_zarr}: {message} "):
        train_n2v(raw_zarr, tmp_path / "model", config)
    assert not (tmp_path / "model").exists()
    kept = torch.load(partial_path(tmp_path / "model") / CHECKPOINT_FILE, weights_only=True)
    usable = all(torch.isfinite(weights).all() for weights in kept["model"].values())
    assert usable, "the kept checkpoint must be usable"


def test_bfloat16_training_takes_other_steps_than_float32_and_says_so(raw_zarr: Path, tmp_path: Path) -> None:
    for precision in ("float32", "bfloat16"):
        train_n2v(raw_zarr, tmp_path / precision, TrainConfig(steps=4, precision=precision, **TINY), threads=1)
    description = json.loads((tmp_path / "bfloat16" / "model.json").read_text())
    assert description["training"]["arithmetic"] == "bfloat16"
    log_rows = (tmp_path / "bfloat16" / "training_log.csv").read_text().splitlines()[1:]
    assert all(np.isfinite(float(row.split(",")[1])) for row in log_rows)
    exact = torch.load(tmp_path / "float32" / "weights.pt", weights_only=True)
    fast = torch.load(tmp_path / "bfloat16" / "weights.pt", weights_only=True)
    assert not any(v.dtype == torch.bfloat16 for v in fast.values())
    assert any(not torch.equal(exact[k], fast[k]) for k in exact)


def test_float16_training_scales_its_loss_and_resumes_with_the_scaler_state(raw_zarr: Path, tmp_path: Path) -> None:
    """float16 (for GPUs without bfloat16) runs with a loss scaler whose state is checkpointed and restored."""
    config = TrainConfig(steps=6, **{**TINY, "precision": "float16"})
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model", config)
    kept = torch.load(partial_path(tmp_path / "model") / CHECKPOINT_FILE, weights_only=True)
    assert kept["grad_scaler"]["scale"] >= 1.0, "the float16 checkpoint must carry the loss scale"
    train_n2v(raw_zarr, tmp_path / "model", config)
    description = json.loads((tmp_path / "model" / "model.json").read_text())
    assert description["training"]["arithmetic"] == "float16" and description["history"]["steps_done"] == 6
    weights = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    float32 = TrainConfig(steps=3, **{**TINY, "precision": "float32"})
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "float32", float32)
    assert torch.load(partial_path(tmp_path / "float32") / CHECKPOINT_FILE, weights_only=True)["grad_scaler"] == {}


def _corrupt_chunk(store: Path, key: str) -> None:
    """Overwrite one chunk file of ``store``'s full-resolution array with bytes no codec decodes."""
    (store / "0" / key).write_bytes(b"not a compressed chunk" * 8)


def test_undecodable_chunk_in_the_patch_pool_names_store_array_and_chunk(raw_zarr: Path) -> None:
    """The pool's tile is exactly the damaged chunk (z 0-8, y 16-32, x 16-32)."""
    _corrupt_chunk(raw_zarr, "0/1/1")
    array, meta = open_ome_zarr(raw_zarr)
    with pytest.raises(InputError, match=rf"^{re.escape(str(raw_zarr))}: array '0': chunk 0/1/1 cannot be decoded"):
        PatchPool(array, meta, Region((0, 16, 16), (8, 32, 32)), (8, 16, 16), Normalisation((0.0,), (1.0,)),
                  pool_tiles=1, refresh_every=1, rng=np.random.default_rng(0))


def test_undecodable_chunk_fails_training_naming_it(raw_zarr: Path, tmp_path: Path) -> None:
    """Training reads chunks first to estimate the normalisation: 64 random draws of the 18 chunks."""
    _corrupt_chunk(raw_zarr, "1/2/0")
    with pytest.raises(InputError, match=rf"^{re.escape(str(raw_zarr))}: array '0': chunk 1/2/0 cannot be decoded"):
        train_n2v(raw_zarr, tmp_path / "model", TrainConfig(steps=2, **TINY))
    assert not (tmp_path / "model").exists()


def test_sampling_for_the_normalisation_reads_through_read_region(raw_zarr: Path) -> None:
    _corrupt_chunk(raw_zarr, "0/0/2")
    array, meta = open_ome_zarr(raw_zarr)
    with pytest.raises(InputError, match="chunk 0/0/2 cannot be decoded"):
        estimate_normalisation(array, meta, np.random.default_rng(0))


@pytest.mark.parametrize(("damage", "file", "problem"), [
    (lambda model: (model / "weights.pt").write_bytes((model / "weights.pt").read_bytes()[:1000]), "weights.pt",
     "the weights cannot be loaded"),
    (lambda model: (model / "weights.pt").write_text("weights, honestly"), "weights.pt",
     "the weights cannot be loaded"),
    (lambda model: (model / "weights.pt").unlink(), "weights.pt", "the weights file is missing"),
    (lambda model: (model / "model.json").write_text('{"format_version": 1, "architec'), "model.json",
     "the model description cannot be read"),
    (lambda model: (model / "model.json").write_text('{"format_version": 1}'), "model.json",
     "the model description cannot be read"),
    (lambda model: (model / "model.json").unlink(), "model.json", "the model description is missing"),
], ids=["truncated-weights", "not-a-torch-file", "no-weights", "garbled-json", "incomplete-json", "no-json"])
def test_a_damaged_model_fails_loading_naming_the_file_and_how_to_retrain(
        raw_zarr: Path, tmp_path: Path, damage: Callable[[Path], object], file: str, problem: str) -> None:
    model_dir = tmp_path / "model"
    train_n2v(raw_zarr, model_dir, TrainConfig(steps=2, **TINY))
    damage(model_dir)
    with pytest.raises(InputError) as raised:
        load_model(model_dir)
    message = str(raised.value)
    assert message.startswith(f"{model_dir / file}: {problem}") and "\n" not in message
    assert message.endswith(f"delete {model_dir} and rerun the workflow to train it again")


def test_an_image_smaller_than_the_pooling_grid_fails_naming_it(tmp_path: Path) -> None:
    """Two planes cannot be pooled to 4 along Z: the one error line names the raw store and what to change."""
    raw = noisy_raw_zarr(tmp_path, (2, 32, 32), {"z": 2, "y": 32, "x": 32})
    with pytest.raises(InputError, match=rf"^{re.escape(str(raw))}: the image is 2 voxels along z, smaller than "
                                         r"the 4 the network pools it to .*train.depth"):
        train_n2v(raw, tmp_path / "model", TrainConfig(steps=1, base_filters=4, device="cpu"))
    assert not (tmp_path / "model").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine where torch finds no GPU")
def test_a_gpu_that_torch_cannot_use_fails_at_once_saying_why(tmp_path: Path) -> None:
    """SLURM gave the job a GPU (CUDA_VISIBLE_DEVICES) or the config asked for cuda, but this torch cannot
    use one: the job fails naming the cause, in one log line, instead of training on the CPU fifty times slower."""
    cause = "is a CPU-only build" if torch.version.cuda is None else "finds no usable GPU"
    with pytest.raises(GpuUnusable), job_logging(tmp_path / "train.log"):
        select_device("auto", {"CUDA_VISIBLE_DEVICES": "0"})
    errors = [line for line in (tmp_path / "train.log").read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in (tmp_path / "train.log").read_text()
    assert re.search(rf"given GPU\(s\) 0 \(CUDA_VISIBLE_DEVICES\), but .*{cause}.*train:gpu=0", errors[0])
    with pytest.raises(GpuUnusable, match=rf"device: cuda was asked for, but .*{cause}"):
        select_device("cuda", {})
    assert select_device("auto", {}).type == "cpu"
    assert select_device("auto", {"CUDA_VISIBLE_DEVICES": ""}).type == "cpu"
    assert select_device("cpu", {"CUDA_VISIBLE_DEVICES": "0"}).type == "cpu", "device: cpu always takes the CPU"


@pytest.mark.parametrize("shape", [(64, 64), (16, 64, 64), (1, 9, 7), (5, 7)])
def test_validation_masks_cover_every_pixel_once_and_never_touch(shape: tuple[int, ...]) -> None:
    masks = validation_masks(shape)
    np.testing.assert_array_equal(masks.sum(axis=0), 1)
    assert all(mask.any() for mask in masks)
    if min(shape) >= 3:
        assert len(masks) >= 8
    for mask in masks:
        for axis in range(len(shape)):
            head = np.take(mask, range(1, shape[axis]), axis=axis)
            tail = np.take(mask, range(shape[axis] - 1), axis=axis)
            assert not (head & tail).any(), "two pixels of one mask are neighbours"


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_validation_scores_every_pixel_of_its_patches_once_blind() -> None:
    patches = np.random.default_rng(0).normal(size=(3, 8, 12, 12)).astype(np.float32)
    validation = ValidationSet.build(patches, TrainConfig(), np.random.default_rng(1), torch.device("cpu"))
    np.testing.assert_array_equal(sum(mask.numpy() for mask in validation.masks), 1)
    replaced = sum(((inputs != validation.targets) * mask).sum() for inputs, mask in
                   zip(validation.inputs, validation.masks, strict=True))
    assert int(replaced) == patches.size, "every scored pixel was hidden from the network"
    squared = sum((((inputs - validation.targets) ** 2) * mask).sum() for inputs, mask in
                  zip(validation.inputs, validation.masks, strict=True))
    assert validation.loss(_Identity(), "mse") == pytest.approx(float(squared) / patches.size, rel=1e-6)


def _tiny_unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetSpec(ndim=2, depth=1, base_filters=2, batch_norm=True, pooling=((2, 2),), n2v2=False))


def test_weight_average_with_decay_zero_is_the_weights_and_warms_up_otherwise() -> None:
    start, moved = _tiny_unet(0), _tiny_unet(1)
    for buffer in moved.buffers():
        buffer.fill_(3)  # BatchNorm statistics as if after training: copied, not averaged
    copied = WeightAverage(start, 0.0)
    copied.update(moved, step=1)
    assert all(torch.equal(a, b) for a, b in zip(copied.model.state_dict().values(),
                                                 moved.state_dict().values(), strict=True))
    averaged = WeightAverage(start, 0.999)
    averaged.update(moved, step=1)
    kept = 2 / 11  # the warm-up's share of the average after step 1, below the decay
    for name, value in averaged.model.named_parameters():
        expected = kept * dict(start.named_parameters())[name] + (1 - kept) * dict(moved.named_parameters())[name]
        torch.testing.assert_close(value, expected)
    assert all(torch.equal(a, b) for a, b in zip(averaged.model.buffers(), moved.buffers(), strict=True))


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_the_model_saves_the_averaged_weights_and_resumes_them(raw_zarr: Path, tmp_path: Path, decay: float) -> None:
    """Interrupted after its last step's checkpoint, the run saves the average the checkpoint holds: with decay 0
    the weights themselves."""
    config = TrainConfig(steps=6, **{**TINY, "checkpoint_every": 6, "validation_fraction": 0, "ema_decay": decay})
    with pytest.raises(KeyboardInterrupt):
        _train_and_interrupt_after_checkpoint(raw_zarr, tmp_path / "model", config)
    checkpoint = torch.load(partial_path(tmp_path / "model") / CHECKPOINT_FILE, weights_only=True)
    train_n2v(raw_zarr, tmp_path / "model", config)
    saved = torch.load(tmp_path / "model" / "weights.pt", weights_only=True)
    assert all(torch.equal(saved[k], checkpoint["average"][k]) for k in saved)
    same_as_raw = all(torch.equal(saved[k], checkpoint["model"][k]) for k in saved)
    assert same_as_raw == (decay == 0)
