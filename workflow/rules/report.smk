rule export_tiff:
    """Stream the denoised volume into an ImageJ hyperstack TIFF (voxel size kept) for Fiji."""
    input:
        zarr=f"{RESULTS}/{{acq}}/denoised.ome.zarr",
    output:
        tiff=f"{RESULTS}/{{acq}}/denoised.tif",
    log:
        f"{RESULTS}/{{acq}}/logs/export_tiff.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/export_tiff.py"


rule qc_figure:
    """Raw, denoised and residual XY/XZ/YZ views through the centre, a 1:1 crop and histograms, with the QC numbers."""
    input:
        raw=raw_zarr,
        denoised=f"{RESULTS}/{{acq}}/denoised.ome.zarr",
        noise=f"{RESULTS}/{{acq}}/qc/noise.json",
        metrics=f"{RESULTS}/{{acq}}/qc/metrics.json",
    output:
        png=report(
            f"{RESULTS}/{{acq}}/qc/comparison.png",
            caption="../report/comparison.rst",
            category="Raw vs denoised",
            labels={"acquisition": "{acq}"},
        ),
    log:
        f"{RESULTS}/{{acq}}/logs/qc_figure.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/qc_figure.py"


rule export_bioimageio:
    """Package the acquisition's model as a bioimage.io model (weights, TorchScript, test block cut from the
    acquisition, normalisation, QC figure as cover), written only once bioimageio.core's model test passes."""
    input:
        raw=raw_zarr,
        model=model_dir,
        cover=f"{RESULTS}/{{acq}}/qc/comparison.png",
    output:
        package=f"{RESULTS}/{{acq}}/model.bioimageio.zip",
    log:
        f"{RESULTS}/{{acq}}/logs/export_bioimageio.log",
    threads: config["threads"]["report"]
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/export_bioimageio.py"
