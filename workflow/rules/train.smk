rule train:
    """Train one Noise2Void model on the acquisition's own noisy voxels (GPU when there is one), from random
    weights or from those of train.init_from (input init)."""
    input:
        unpack(init_input),
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


rule import_model:
    """Use config model: (another acquisition's model/ folder or an n2vpipe bioimage.io package) or model_from:
    (another acquisition's model/) instead of training: checked against the acquisition's axes and channels,
    copied into imported_model/."""
    input:
        zarr=raw_zarr,
        source=model_source,
    output:
        model=directory(f"{RESULTS}/{{acq}}/imported_model"),
    log:
        f"{RESULTS}/{{acq}}/logs/import_model.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/import_model.py"
