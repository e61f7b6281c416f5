rule ingest:
    """Copy one raw TIFF/OME-TIFF into a chunked, compressed OME-Zarr (lazy, bounded memory)."""
    input:
        raw=raw_input,
    output:
        zarr=directory(f"{RESULTS}/{{acq}}/raw.ome.zarr"),
    params:
        settings=settings("ingest"),
    log:
        f"{RESULTS}/{{acq}}/logs/ingest.log",
    threads: config["threads"]["ingest"]
    resources:
        mem_mb=mem_mb_for("ingest"),
        runtime=runtime_for("ingest"),
    conda:
        "../../envs/n2vpipe.yaml"
    script:
        "../scripts/ingest.py"
