"""What every launcher shares: turning a user mistake into one sentence and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

from pydreamer.checkpoint import CheckpointError
from pydreamer.config import ConfigError
from pydreamer.envs import EnvError
from pydreamer.logs import configure_logging
from pydreamer.processes import USER_ERROR_EXIT, disk_full_error
from pydreamer.tracking import RunNotFoundError

USER_ERRORS = (ConfigError, EnvError, RunNotFoundError, CheckpointError)


def run_cli(main: Callable[[list[str]], int], name: str, argv: list[str] | None = None) -> int:
    configure_logging(name)
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)  # not logged as well: the sentence is said once
        return USER_ERROR_EXIT
    except OSError as e:  # a full disk under the launcher's own writes (the run's config.yaml)
        error = disk_full_error(e)
        if error is None:
            raise
        print(f'error: {error}', file=sys.stderr)
        return USER_ERROR_EXIT
