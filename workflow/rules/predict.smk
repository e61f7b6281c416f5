rule predict:
    """Tiled, dask-parallel inference into a multiscale OME-Zarr; resumes after a kill."""
    input:
        zarr=f"{RESULTS}/{{acq}}/raw.ome.zarr",
        model=f"{RESULTS}/{{acq}}/model",
    output:
        zarr=directory(f"{RESULTS}/{{acq}}/denoised.ome.zarr"),
    params:
        settings=settings("predict"),
    log:
        f"{RESULTS}/{{acq}}/logs/predict.log",
    threads: config["threads"]["predict"]
    resources:
        mem_mb=mem_mb_for("predict"),
        runtime=runtime_for("predict"),
        **gpu_resources("predict"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/predict.py"
