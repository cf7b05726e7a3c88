"""Importing a library without the optional heavy dependencies it loads but we never use.

Every generator and learner process imports mlflow and (generators) minatar; both pull in large
libraries at import time for features pydreamer does not touch (mlflow: pandas, pyarrow and scipy
for datasets and model signatures; minatar: pyplot and seaborn for its own renderer). Hiding
those during the import saves ~75 MB and ~150 MB of memory per process.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


@contextlib.contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """Inside the block, `import name` fails with ImportError for each of `names` (libraries
    treat them as not installed); their "cannot import" warnings are muted. Afterwards every
    module is importable again and already imported ones are restored."""
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    sys.modules.update(dict.fromkeys(names))  # a None entry makes `import name` fail
    root = logging.getLogger()
    mute = logging.NullHandler()  # with no handler at all, logging.warning would configure one
    root.addHandler(mute)
    previous_disable = root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous_disable)
        root.removeHandler(mute)
        for name in names:
            sys.modules.pop(name)
        sys.modules.update(saved)
