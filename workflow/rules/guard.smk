# Before any job runs: the results lock (one run at a time writes into results_dir) and replaced
# inputs (results made from an input's old content are withdrawn, so it is ingested again).
# Only the run that schedules jobs does this; jobs started on cluster nodes do not.

from n2vpipe.lock import ResultsLocked, acquire_results_lock, holder_of
from n2vpipe.source import replaced_since_recorded, withdraw_results, write_record

DRY_RUN = bool(workflow.output_settings and workflow.output_settings.dryrun)


def hold_results_lock():
    """Take the results lock for this run, or stop with one line naming the run that holds it."""
    try:
        lock = acquire_results_lock(RESULTS)
    except ResultsLocked as err:
        sys.exit(f"n2vpipe: {err}")
    if lock.previous is not None:
        logger.warning(
            f"n2vpipe: the previous run on {RESULTS} ({lock.previous.describe()}) ended without finishing; "
            "its unfinished jobs are resumed or redone"
        )
    return lock


def check_replaced_inputs(write):
    """Compare each TIFF input with the identity recorded when it was ingested; with ``write``, withdraw
    the results of replaced ones and record every input's identity (a dry run only reports)."""
    for acq, path in ACQUISITIONS.items():
        if is_ome_zarr(path):
            continue
        folder = Path(RESULTS) / acq
        replaced, identity = replaced_since_recorded(folder, path)
        if replaced:
            action = "its results are withdrawn and it is ingested again" if write else "a real run re-ingests it"
            logger.warning(f"n2vpipe: {acq}: {path} has other content than when it was ingested; {action}")
            if write:
                removed = withdraw_results(folder)
                logger.info(f"n2vpipe: {acq}: removed {', '.join(removed) or 'nothing'} from {folder}")
        if write:
            write_record(folder, identity)


if workflow.is_main_process:
    if DRY_RUN:
        _holder = holder_of(RESULTS)
        if _holder is not None:
            logger.warning(f"n2vpipe: {RESULTS} is in use by another run ({_holder.describe()}); a real run "
                           "now would be refused")
        check_replaced_inputs(write=False)
    else:
        RESULTS_LOCK = hold_results_lock()
        check_replaced_inputs(write=True)
