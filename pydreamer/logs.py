"""Logging with a per-process prefix, so interleaved output of generators and learner stays readable."""
from __future__ import annotations

import logging
import sys


def configure_logging(prefix: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f'%(asctime)s [{prefix}] %(levelname)s %(message)s', '%H:%M:%S'))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ('alembic', 'mlflow', 'urllib3', 'matplotlib', 'PIL'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
