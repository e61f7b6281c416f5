rule predict_part:
    """Tiled, dask-parallel inference of one part of an acquisition's blocks (config predict.jobs
    parts, each a separate job that may run on its own node); a killed job resumes its missing blocks."""
    input:
        zarr=raw_zarr,
        model=model_dir,
    output:
        marker=temp(f"{RESULTS}/{{acq}}/.predict_parts/part{{part}}-of-{{parts}}.done"),
    params:
        settings=settings("predict"),
        denoised=f"{RESULTS}/{{acq}}/denoised.ome.zarr",
    wildcard_constraints:
        part=r"\d+",
        parts=r"\d+",
    log:
        f"{RESULTS}/{{acq}}/logs/predict_part{{part}}-of-{{parts}}.log",
    benchmark:
        f"{RESULTS}/{{acq}}/logs/predict_part{{part}}-of-{{parts}}.benchmark.tsv"
    threads: config["threads"]["predict"]
    resources:
        mem_mb=mem_mb_for("predict"),
        runtime=runtime_for("predict"),
        **gpu_resources("predict"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/predict_part.py"


rule predict:
    """Check every inference part is done, add the multiscale pyramid and publish denoised.ome.zarr."""
    input:
        parts=prediction_parts,
    output:
        zarr=directory(f"{RESULTS}/{{acq}}/denoised.ome.zarr"),
    params:
        settings=settings("predict"),
    log:
        f"{RESULTS}/{{acq}}/logs/predict.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("predict"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/predict.py"
