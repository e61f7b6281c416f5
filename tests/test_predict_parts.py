"""Inference split into parts run as concurrent processes, on a dask.distributed cluster, and rescaled integer
output."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from distributed import LocalCluster

from n2vpipe.errors import InputError
from n2vpipe.io import open_ome_zarr, partial_path
from n2vpipe.metrics import check_residual, write_metrics
from n2vpipe.model_io import WEIGHTS_FILE
from n2vpipe.noise import check_noise, write_noise_report
from n2vpipe.predict import (
    NonFiniteOutput,
    OutputEncoding,
    PredictConfig,
    cpu_network_thread,
    finalize_prediction,
    fuse_batch_norm,
    inference_model,
    part_of,
    predict_volume,
)
from n2vpipe.qc import comparison_figure
from n2vpipe.unet import UNet, UNetSpec
from tiny import noisy_raw_zarr, tiny_model

BLOCK = {"z": 8, "y": 16, "x": 16}
CONFIG = PredictConfig(block=BLOCK, pyramid_levels=1)
PART = "from n2vpipe.predict import PredictConfig, predict_part; import sys; " \
       "predict_part(sys.argv[1], sys.argv[2], sys.argv[3], PredictConfig(block={'z': 8, 'y': 16, 'x': 16}, " \
       "pyramid_levels=1), part=int(sys.argv[4]), parts=int(sys.argv[5]))"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small raw OME-Zarr and a model trained on it for a few steps."""
    folder = tmp_path_factory.mktemp("parts")
    raw = noisy_raw_zarr(folder, (16, 48, 64), BLOCK)
    return raw, tiny_model(raw, folder / "model", BLOCK, steps=3)


def test_parts_are_disjoint_and_cover_all_blocks() -> None:
    blocks = list(range(23))
    parts = [part_of(blocks, i, 4) for i in range(4)]
    assert sorted(b for part in parts for b in part) == blocks
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="part 4"):
        part_of(blocks, 4, 4)


def test_concurrent_parts_give_the_single_job_result(trained: tuple[Path, Path], tmp_path: Path) -> None:
    raw, model = trained
    reference = tmp_path / "reference.ome.zarr"
    predict_volume(raw, model, reference, CONFIG)
    split = tmp_path / "denoised.ome.zarr"
    processes = [subprocess.Popen([sys.executable, "-c", PART, str(raw), str(model), str(split), str(i), "3"],
                                  stderr=subprocess.PIPE, text=True) for i in range(3)]
    errors = [p.communicate()[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), errors
    assert not split.exists(), "parts alone must not publish the output"
    finalize_prediction(split, CONFIG)
    assert np.array_equal(open_ome_zarr(split)[0][:], open_ome_zarr(reference)[0][:])
    assert not partial_path(split).exists()


def test_distributed_workers_give_the_threaded_result(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """With a scheduler address, blocks run in separate worker processes, which load the model themselves."""
    raw, model = trained
    reference = tmp_path / "reference.ome.zarr"
    predict_volume(raw, model, reference, CONFIG)
    dst = tmp_path / "denoised.ome.zarr"

    def network_thread_of_two_worker_threads() -> tuple[bool, int]:
        """On a worker: whether its network thread for 2 task threads was running, and its torch threads."""
        before = cpu_network_thread.cache_info().currsize
        torch_threads = cpu_network_thread(2).submit(torch.get_num_threads).result()
        return before >= 1 and cpu_network_thread.cache_info().currsize == before, torch_threads

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        stats = predict_volume(raw, model, dst,
                               dataclasses.replace(CONFIG, scheduler_address=cluster.scheduler_address))
        with cluster.get_client() as client:
            models_loaded = client.run(lambda: inference_model.cache_info().currsize)
            network_threads = client.run(network_thread_of_two_worker_threads)
    assert stats.blocks == 24 and stats.voxels == 16 * 48 * 64
    assert sum(models_loaded.values()) >= 1, "no worker process ran a block"
    for address, loaded in models_loaded.items():
        if loaded:
            assert network_threads[address] == (True, 2), "the worker's network thread must use its 2 threads"
    expected = open_ome_zarr(reference)[0][:]
    np.testing.assert_allclose(open_ome_zarr(dst)[0][:], expected, rtol=0, atol=1e-5 * np.ptp(expected))
    assert not partial_path(dst).exists()


def test_finalize_refuses_while_a_part_is_missing(trained: tuple[Path, Path], tmp_path: Path) -> None:
    raw, model = trained
    dst = tmp_path / "denoised.ome.zarr"
    subprocess.run([sys.executable, "-c", PART, str(raw), str(model), str(dst), "0", "2"], check=True,
                   capture_output=True)
    with pytest.raises(RuntimeError, match=r"12 of 24 blocks are done"):
        finalize_prediction(dst, CONFIG)
    assert not dst.exists()


def test_uint16_output_decodes_to_the_float_result(trained: tuple[Path, Path], tmp_path: Path) -> None:
    raw, model = trained
    floats = tmp_path / "float.ome.zarr"
    predict_volume(raw, model, floats, CONFIG)
    integers = tmp_path / "uint16.ome.zarr"
    predict_volume(raw, model, integers, dataclasses.replace(CONFIG, output_dtype="uint16", output_range=[0, 1000]))
    stored, meta = open_ome_zarr(integers)
    mapping = zarr.open_group(str(integers), mode="r").attrs["n2vpipe"]["intensity"]
    assert stored.dtype == np.uint16 and meta.dtype == "uint16"
    decoded = mapping["offset"][0] + mapping["scale"][0] * stored[:].astype(np.float64)
    expected = np.clip(open_ome_zarr(floats)[0][:], 0, 1000)
    assert np.abs(decoded - expected).max() <= 0.5 * mapping["scale"][0] + 1e-4  # half a step + float32 rounding


def test_auto_range_comes_from_input_percentiles(trained: tuple[Path, Path]) -> None:
    raw, _ = trained
    array, meta = open_ome_zarr(raw)
    encoding = OutputEncoding.choose("uint8", "auto", array, meta)
    values = array[:]
    assert np.percentile(values, 0) <= encoding.low[0] < np.percentile(values, 1)
    assert np.percentile(values, 99) < encoding.high[0] <= np.percentile(values, 100)
    assert encoding.encode(np.array([encoding.low[0] - 5, encoding.high[0] + 5]), 0).tolist() == [0, 255]
    with pytest.raises(ValueError, match="low < high"):
        OutputEncoding.choose("uint16", [5, 5], array, meta)


def test_folding_batch_norm_keeps_the_output() -> None:
    torch.manual_seed(0)
    model = UNet(UNetSpec(ndim=3, depth=1, base_filters=4, batch_norm=True))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(1, 1, 8, 16, 16)
    expected = model(x)
    fused = fuse_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    assert torch.allclose(fused(x), expected, atol=1e-5)


def test_2d_images_take_the_planar_block(tmp_path: Path) -> None:
    """predict.block_2d sets the blocks (= output chunks) of an image without Z; 3D blocks are left alone."""
    raw = noisy_raw_zarr(tmp_path, (100, 120), {"z": 1, "y": 32, "x": 32}, seed=2)
    tiny_model(raw, tmp_path / "model", {"z": 1, "y": 32, "x": 32})
    stats = predict_volume(tmp_path / "raw.ome.zarr", tmp_path / "model", tmp_path / "den.ome.zarr",
                           PredictConfig(block={"z": 4, "y": 16, "x": 16}, block_2d={"y": 32, "x": 64},
                                         pyramid_levels=1))
    denoised, meta = open_ome_zarr(tmp_path / "den.ome.zarr")
    assert (stats.blocks, denoised.chunks, meta.shape) == (8, (32, 64), (100, 120))


def test_3d_volumes_ignore_the_planar_block(trained: tuple[Path, Path], tmp_path: Path) -> None:
    raw, model = trained
    stats = predict_volume(raw, model, tmp_path / "den.ome.zarr",
                           dataclasses.replace(CONFIG, block_2d={"y": 32, "x": 32}))
    assert open_ome_zarr(tmp_path / "den.ome.zarr")[0].chunks == tuple(BLOCK.values())
    assert stats.blocks == 2 * 3 * 4


def test_undecodable_input_chunk_fails_inference_naming_it(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A block reads the damaged chunk (z 8-16, y 16-32, x 32-48) with its halo: the error names the store,
    the array and the chunk key, and no output looks finished."""
    raw = tmp_path / "raw.ome.zarr"
    shutil.copytree(trained[0], raw)
    (raw / "0" / "1" / "1" / "2").write_bytes(b"not a compressed chunk" * 8)
    with pytest.raises(InputError, match=rf"^{re.escape(str(raw))}: array '0': chunk 1/1/2 cannot be decoded"):
        predict_volume(raw, trained[1], tmp_path / "denoised.ome.zarr", CONFIG)
    assert not (tmp_path / "denoised.ome.zarr").exists()


def test_truncated_weights_fail_inference_naming_the_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained[1], model)
    (model / WEIGHTS_FILE).write_bytes((trained[1] / WEIGHTS_FILE).read_bytes()[:-100])
    with pytest.raises(InputError, match=rf"^{re.escape(str(model / WEIGHTS_FILE))}: the weights cannot be loaded "
                                         rf".*; the model is damaged: delete {re.escape(str(model))} and rerun"):
        predict_volume(trained[0], model, tmp_path / "denoised.ome.zarr", CONFIG)
    assert not (tmp_path / "denoised.ome.zarr").exists()


def test_qc_figure_is_written_and_names_an_undecodable_chunk(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The figure shows views through the centre (z 8 of 16: chunk row 1 along Z); its picture is complete or
    absent."""
    raw, model = trained
    denoised = tmp_path / "denoised.ome.zarr"
    predict_volume(raw, model, denoised, CONFIG)
    noise, metrics = tmp_path / "noise.json", tmp_path / "metrics.json"
    write_noise_report(noise, check_noise(raw, 4, 0.002, 0.1, 0))
    write_metrics(metrics, check_residual(raw, denoised, noise, 4, 0.002, 0.1, 0))
    comparison_figure(raw, denoised, noise, metrics, tmp_path / "qc.png")
    assert (tmp_path / "qc.png").read_bytes().startswith(b"\x89PNG")
    (denoised / "0" / "1" / "1" / "1").write_bytes(b"not a compressed chunk" * 8)
    with pytest.raises(InputError, match=rf"^{re.escape(str(denoised))}: array '0': chunk 1/1/1 cannot be decoded"):
        comparison_figure(raw, denoised, noise, metrics, tmp_path / "qc_again.png")
    assert not list(tmp_path.glob("qc_again.png*"))


def test_a_model_that_outputs_nan_writes_nothing_and_says_so(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Weights gone NaN (a diverged run, float16 overflow): no block of NaN is written, nothing is published."""
    model = tmp_path / "model"
    shutil.copytree(trained[1], model)
    weights = torch.load(model / WEIGHTS_FILE, weights_only=True)
    torch.save({name: torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor
                for name, tensor in weights.items()}, model / WEIGHTS_FILE)
    dst = tmp_path / "denoised.ome.zarr"
    with pytest.raises(NonFiniteOutput, match=rf"^{re.escape(str(model))}: the model's output for block t0_c0_\S+ "
                                              r"has [\d,]+ NaN or infinite values; nothing of it was written"):
        predict_volume(trained[0], model, dst, CONFIG)
    assert not dst.exists()
    assert not list((partial_path(dst) / ".blocks_done").iterdir()), "no block with NaN counts as done"
