# Quality checks beside the main chain (docs/qc.md): they read its outputs and feed only the report.


rule noise_check:
    """Before training, from the raw data alone: is the noise independent from voxel to voxel, and how strong?"""
    input:
        zarr=raw_zarr,
    output:
        json=f"{RESULTS}/{{acq}}/qc/noise.json",
        png=report(
            f"{RESULTS}/{{acq}}/qc/noise.png",
            caption="../report/noise.rst",
            category="Noise check",
            labels={"acquisition": "{acq}"},
        ),
    params:
        qc=lambda wildcards: canonical(config["qc"]),
        struct_mask=lambda wildcards: config_for(config, wildcards.acq)["train"]["struct_mask"],
    log:
        f"{RESULTS}/{{acq}}/logs/noise_check.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/noise_check.py"


rule qc_metrics:
    """After inference: residual (raw - denoised) diagnostics on a sample of blocks, against the noise check."""
    input:
        raw=raw_zarr,
        denoised=f"{RESULTS}/{{acq}}/denoised.ome.zarr",
        noise=f"{RESULTS}/{{acq}}/qc/noise.json",
    output:
        json=report(
            f"{RESULTS}/{{acq}}/qc/metrics.json",
            caption="../report/metrics.rst",
            category="Residual diagnostics",
            labels={"acquisition": "{acq}"},
        ),
    params:
        qc=lambda wildcards: canonical(config["qc"]),
    log:
        f"{RESULTS}/{{acq}}/logs/qc_metrics.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/qc_metrics.py"


rule batch_summary:
    """The batch summary (one row per acquisition, as results/summary.csv) as a table page in the report."""
    input:
        lambda wildcards: [
            f"{RESULTS}/{acq}/qc/{name}" for acq in ACQUISITIONS for name in ("noise.json", "metrics.json")
        ],
    output:
        html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary.rst",
            category="Batch summary",
        ),
    params:
        results=lambda wildcards, output: os.path.dirname(output.html),
        raw=lambda wildcards: {acq: raw_zarr(SimpleNamespace(acq=acq)) for acq in ACQUISITIONS},
    log:
        f"{RESULTS}/logs/batch_summary.log",
    localrule: True
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/batch_summary.py"
