"""Helpers shared by the workflow scripts: per-job logging."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from n2vpipe.errors import DiskFullError, UnusableEnvironment

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_logging(log_file: str | Path) -> Iterator[logging.Logger]:
    """Send log records to ``log_file`` and stderr for the duration of one job.

    An exception escaping the job is written to the log (one line for bad
    input, a full disk and an unusable GPU, with traceback otherwise) before it propagates, so
    the job fails and the log says why. Python warnings (numpy's, torch's, …)
    are logged too, so they reach the job's own log.
    """
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers = [logging.FileHandler(log_file, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logger = logging.getLogger("n2vpipe.job")
    logging.captureWarnings(True)
    try:
        yield logger
    except (ValueError, DiskFullError, UnusableEnvironment) as err:
        logger.error("%s", err)
        raise
    except Exception:
        logger.exception("job failed")
        raise
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
