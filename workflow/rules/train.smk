rule train:
    """Train one Noise2Void model on the acquisition's own noisy voxels (GPU when there is one)."""
    input:
        zarr=raw_zarr,
    output:
        model=directory(f"{RESULTS}/{{acq}}/model"),
    params:
        settings=settings("train"),
    log:
        f"{RESULTS}/{{acq}}/logs/train.log",
    threads: config["threads"]["train"]
    resources:
        mem_mb=mem_mb_for("train"),
        runtime=runtime_for("train"),
        **gpu_resources("train"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/train.py"
