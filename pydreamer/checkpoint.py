"""Versioned learner checkpoints: model state, optimizer states keyed by role, step and config.

A checkpoint is written to a temporary file and renamed (then uploaded as `checkpoints/latest.pt`
of the run), so a reader never sees half a file. The checkpoint saved before it stays beside it as
`checkpoints/previous.pt`, so a latest.pt damaged after it was written (a disk error, a hand edit)
costs one save interval instead of the run. It carries its resolved config so a later stage
can check that the architecture matches before loading anything. torch is imported by the
functions that need it: launchers import this module only for CheckpointError.
"""
from __future__ import annotations

import collections
import io
import logging
import pickle
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydreamer.artifacts import ArtifactFolder
from pydreamer.atomic import atomic_write

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_DIR = 'checkpoints'
CHECKPOINT_NAME = 'latest.pt'
PREVIOUS_NAME = 'previous.pt'


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that is missing, damaged or of another format; `reason` completes the
    sentence "Checkpoint file <name> ..." so that two of them can be told in one sentence."""

    def __init__(self, name: str, reason: str):
        super().__init__(f'Checkpoint file {name} {reason}.')
        self.name = name
        self.reason = reason


def save_checkpoint(path: Path, step: int, model: torch.nn.Module,
                    optimizers: Mapping[str, torch.optim.Optimizer], conf: Mapping[str, Any]) -> None:
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        'format_version': FORMAT_VERSION,
        'step': int(step),
        'model': model.state_dict(),
        'optimizers': {role: opt.state_dict() for role, opt in optimizers.items()},
        'config': dict(conf),
    }
    # Serialised in memory first: torch's file writer reports a full disk as "unexpected pos",
    # while a plain write raises the OSError that says so.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())


def read_checkpoint(path: Path, mmap: bool = False, name: str | None = None) -> dict:
    """Load a checkpoint file onto the CPU, checking its format. With `mmap` the tensors stay in
    the file's pages until used: a reader that needs only the model leaves the optimizer states
    (two thirds of the file) unread. Errors call the file `name` (default: its path), e.g. the
    artifact URI of a downloaded copy, whose temporary path would tell the user nothing."""
    import torch
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise UnreadableCheckpoint(name, 'does not exist')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except Exception as e:
        # the first line only: torch's unpickling errors go on for a paragraph of advice
        first_line = (str(e).strip().splitlines() or [''])[0]
        raise UnreadableCheckpoint(name, f'could not be read ({type(e).__name__}: {first_line})') from None
    return _checked(payload, name)


class _HeaderUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's payload with every tensor (and any other torch object) as
    None, and reads no storage."""

    def find_class(self, module: str, name: str):
        if module == 'collections' and name == 'OrderedDict':
            return collections.OrderedDict
        if module.split('.')[0] == 'torch':
            return lambda *args, **kwargs: None
        raise pickle.UnpicklingError(f'unexpected object {module}.{name}')

    def persistent_load(self, pid):
        return None


def read_header(path: Path, name: str | None = None) -> dict:
    """A checkpoint's payload without its tensors (each stands as None), read without torch, so
    that a launcher checks the format and the config at no cost: step, config, format version.
    The zip archive's checksums catch a damaged file. Errors as in `read_checkpoint`."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise UnreadableCheckpoint(name, 'does not exist')
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            if damaged:
                raise zipfile.BadZipFile(f'the checksum of {damaged} does not match')
            data = next(n for n in archive.namelist() if n.endswith('/data.pkl'))
            payload = _HeaderUnpickler(io.BytesIO(archive.read(data))).load()
    except Exception as e:
        raise UnreadableCheckpoint(name, f'could not be read ({type(e).__name__}: {e})') from None
    return _checked(payload, name)


def _checked(payload: Any, name: str) -> dict:
    if not isinstance(payload, dict) or 'format_version' not in payload:
        raise UnreadableCheckpoint(name, 'is not a pydreamer checkpoint (no format_version)')
    if payload['format_version'] != FORMAT_VERSION:
        raise UnreadableCheckpoint(name, f'has format version {payload["format_version"]}, but this code '
                                         f'reads version {FORMAT_VERSION}')
    return payload


def previous_of(ref: str) -> str | None:
    """Where the checkpoint saved before `ref` lies: beside it, when ref (a path or a URI) names a
    latest.pt; None for any other name."""
    head, sep, name = ref.rpartition('/')
    return head + sep + PREVIOUS_NAME if name == CHECKPOINT_NAME else None


@dataclass
class LoadedCheckpoint:
    payload: dict
    ref: str                  # the file read: the one asked for, or the previous.pt beside it
    local: Path               # the local copy that was read
    passed_over: str | None   # why the file asked for was not read (a sentence without its period)


def read_newest(ref: str, fetch: Callable[[str], Path | None], mmap: bool = False,
                header_only: bool = False) -> LoadedCheckpoint | None:
    """Read the checkpoint `ref`, or the previous.pt beside a latest.pt that is missing or cannot
    be read. `fetch(ref)` gives a local copy, or None when there is no such file. Returns None
    when neither file exists; raises UnreadableCheckpoint, naming both, when neither can be read.
    Failures to fetch (a network error) propagate: they say nothing about the file. With
    `header_only` the payload has no tensors (`read_header`: no torch)."""
    def read(local: Path, name: str) -> dict:
        return read_header(local, name) if header_only else read_checkpoint(local, mmap, name)

    local = fetch(ref)
    problem = 'does not exist'
    if local is not None:
        try:
            return LoadedCheckpoint(read(local, ref), ref, local, None)
        except UnreadableCheckpoint as e:
            problem = e.reason
    previous = previous_of(ref)
    fallback = fetch(previous) if previous else None
    if fallback is None:
        if local is None:
            return None
        raise UnreadableCheckpoint(ref, f'{problem}, and there is no {previous} to fall back on' if previous else problem)
    try:
        payload = read(fallback, previous)
    except UnreadableCheckpoint as e:
        raise UnreadableCheckpoint(ref, f'{problem}, and {previous} {e.reason}') from None
    return LoadedCheckpoint(payload, previous, fallback, f'Checkpoint file {ref} {problem}')


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
    """`checkpoints/latest.pt` of one mlflow run, and `checkpoints/previous.pt` saved before it."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.folder = ArtifactFolder(run_id, CHECKPOINT_DIR)
        self.artifact_path = f'{CHECKPOINT_DIR}/{CHECKPOINT_NAME}'
        self.uri = f'runs:/{run_id}/{self.artifact_path}'

    def upload(self, local_path: Path, previous: Path | None = None) -> None:
        """Publish `local_path` (a file named latest.pt) as the newest checkpoint. `previous` (a
        file named previous.pt: the checkpoint that latest.pt held, known to read) goes first, so
        that at every moment both names hold whole files and previous.pt one older than latest.pt."""
        if previous is not None:
            self.folder.upload_file(str(previous), CHECKPOINT_DIR)
        self.folder.upload_file(str(local_path), CHECKPOINT_DIR)

    def read(self, dst_dir: str, mmap: bool = False, header_only: bool = False) -> LoadedCheckpoint | None:
        """The newest readable checkpoint (see `read_newest`), downloaded into dst_dir; None when
        the run has none yet."""
        def fetch(uri: str) -> Path | None:
            artifact_path = uri[len(f'runs:/{self.run_id}/'):]
            if not self.folder.exists(artifact_path):
                return None
            return Path(self.folder.download_file(artifact_path, dst_dir))
        return read_newest(self.uri, fetch, mmap, header_only)

    def download(self, dst_dir: str) -> Path | None:
        """The newest checkpoint as a local file, or None when the run has none yet.

        Only a missing file means "not yet"; any other failure propagates with its cause.
        """
        if not self.folder.exists(self.artifact_path):
            return None
        return Path(self.folder.download_file(self.artifact_path, dst_dir))
