"""Versioned learner checkpoints: model state, optimizer states keyed by role, step and config.

A checkpoint is written to a temporary file and renamed (then uploaded as `checkpoints/latest.pt`
of the run), so a reader never sees half a file. It carries its resolved config so a later stage
can check that the architecture matches before loading anything. torch is imported by the two
functions that need it: launchers import this module only for CheckpointError.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydreamer.artifacts import ArtifactFolder

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_DIR = 'checkpoints'
CHECKPOINT_NAME = 'latest.pt'


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def save_checkpoint(path: Path, step: int, model: torch.nn.Module,
                    optimizers: Mapping[str, torch.optim.Optimizer], conf: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> None:
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        'format_version': FORMAT_VERSION,
        'step': int(step),
        'model': model.state_dict(),
        'optimizers': {role: opt.state_dict() for role, opt in optimizers.items()},
        'config': dict(conf),
        **(extra or {}),
    }
    # Serialised in memory first: torch's file writer reports a full disk as "unexpected pos",
    # while a plain write raises the OSError that says so.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file, not its temporary name
            e.filename = str(path)
        raise


def read_checkpoint(path: Path, mmap: bool = False, name: str | None = None) -> dict:
    """Load a checkpoint file onto the CPU, checking its format. With `mmap` the tensors stay in
    the file's pages until used: a reader that needs only the model leaves the optimizer states
    (two thirds of the file) unread. Errors call the file `name` (default: its path), e.g. the
    artifact URI of a downloaded copy, whose temporary path would tell the user nothing."""
    import torch
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise CheckpointError(f'Checkpoint file {name} does not exist.')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f'Checkpoint file {name} could not be read ({type(e).__name__}: {e}).') from None
    if not isinstance(payload, dict) or 'format_version' not in payload:
        raise CheckpointError(f'File {name} is not a pydreamer checkpoint (no format_version).')
    if payload['format_version'] != FORMAT_VERSION:
        raise CheckpointError(f'Checkpoint {name} has format version {payload["format_version"]}, '
                              f'this code reads version {FORMAT_VERSION}.')
    return payload


def restore(payload: dict, model: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer]) -> int:
    """Load model and optimizer states saved by `save_checkpoint`; returns the saved step."""
    model.load_state_dict(payload['model'])
    missing = set(optimizers) - set(payload['optimizers'])
    if missing:
        raise CheckpointError(f'Checkpoint has no optimizer state for role(s) {sorted(missing)}; '
                              f'it holds {sorted(payload["optimizers"])}.')
    for role, opt in optimizers.items():
        opt.load_state_dict(payload['optimizers'][role])
    return int(payload['step'])


class RunCheckpoints:
    """`checkpoints/latest.pt` of one mlflow run."""

    def __init__(self, run_id: str):
        self.folder = ArtifactFolder(run_id, CHECKPOINT_DIR)
        self.artifact_path = f'{CHECKPOINT_DIR}/{CHECKPOINT_NAME}'
        self.uri = f'runs:/{run_id}/{self.artifact_path}'

    def upload(self, local_path: Path) -> None:
        self.folder.upload_file(str(local_path), CHECKPOINT_DIR)

    def download(self, dst_dir: str) -> Path | None:
        """The newest checkpoint as a local file, or None when the run has none yet.

        Only a missing file means "not yet"; any other failure propagates with its cause.
        """
        if not self.folder.exists(self.artifact_path):
            return None
        return Path(self.folder.download_file(self.artifact_path, dst_dir))
