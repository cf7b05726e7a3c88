"""Reading and writing the published atari-agents checkpoint format.

A checkpoint file `model_<step:08d>.gz` is a gzip stream of a `torch.save` dict whose network
weights sit under `estimator_state` (the published files may hold other keys; they are ignored).
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import re
import zlib
from pathlib import Path
from typing import Mapping

import torch

from atari_net.network import AtariNet
from pydreamer.atomic import atomic_write

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r'model_(\d{8,})\.gz')  # `{step:08d}` pads to 8 digits, never truncates
WEIGHTS_KEY = 'estimator_state'
_MANGLED_PREFIX = '_AtariNet__'
_DATA_PARALLEL_PREFIX = 'module.'
_OUTPUT_BIAS_KEY = f'{_MANGLED_PREFIX}head.2.bias'


def checkpoint_name(step: int) -> str:
    if step < 0:
        raise ValueError(f'A checkpoint step must be non-negative, got {step}.')
    return f'model_{step:08d}.gz'


def checkpoint_step(path: str | os.PathLike) -> int:
    match = CHECKPOINT_RE.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f'Checkpoint file name {Path(path).name!r} does not match '
                         f'model_<step:08d>.gz.')
    return int(match.group(1))


def save_atari_net(model: AtariNet, checkpoint_dir: str | os.PathLike, step: int) -> Path:
    """Writes `checkpoint_dir/model_<step:08d>.gz` in the published format and returns its path.

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / checkpoint_name(step)
    payload = io.BytesIO()
    torch.save({WEIGHTS_KEY: model.state_dict()}, payload)
    # The temporary name does not match CHECKPOINT_RE, so a concurrent listing never picks it up.
    with atomic_write(path) as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0) as zipped:
        zipped.write(payload.getvalue())
    return path


def load_atari_net(path: str | os.PathLike, n_actions: int) -> AtariNet:
    """Builds an `AtariNet(n_actions)` in eval mode from a published checkpoint file.

    Accepts the published (mangled) keys `_AtariNet__features.0.weight`, plain keys
    `features.0.weight`, either with a leading `module.` (DataParallel).

    Security: the file is only ever unpickled with `weights_only=True`; any other objects it
    holds (classes or functions outside torch's allow-list) load as inert placeholders, so no
    code named by the file runs.
    """
    path = Path(path)
    model = AtariNet(n_actions)
    state = _normalise_keys(path, _read_estimator_state(path), model.state_dict())
    model.load_state_dict(state)
    return model.eval()


def _read_estimator_state(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except gzip.BadGzipFile:
        raise ValueError(f'Checkpoint {path} is not a gzip file; expected a gzip stream of a '
                         f'torch.save dict (the atari-agents model_<step>.gz format).') from None
    except (EOFError, zlib.error) as e:
        raise ValueError(f'Checkpoint {path} is a truncated or corrupt gzip stream: {e}') from None
    payload = _load_weights_only(path, raw)
    if not isinstance(payload, Mapping) or WEIGHTS_KEY not in payload:
        found = (f'keys {sorted(map(str, payload))}' if isinstance(payload, Mapping)
                 else f'a {type(payload).__name__}')
        raise ValueError(f'Checkpoint {path} has no {WEIGHTS_KEY!r} entry; expected a dict with '
                         f'the network weights under {WEIGHTS_KEY!r}, found {found}.')
    state = payload[WEIGHTS_KEY]
    if not isinstance(state, Mapping):
        raise ValueError(f'Checkpoint {path}: {WEIGHTS_KEY!r} must be a state dict, '
                         f'got {type(state).__name__}.')
    return state


class _Inert:
    """Stands in for every class or function a checkpoint names outside torch's allow-list.

    It accepts any construction and state and does nothing with them, so such objects load as
    empty placeholders and no code named by the file is imported or run.
    """

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _load_weights_only(path: Path, raw: bytes) -> object:
    """torch.load with weights_only=True, with the file's other objects replaced by `_Inert`.

    weights_only=True alone refuses any file that pickles an object besides tensors and plain
    containers, and the published files may hold training state next to the weights (possibly
    of classes from modules we do not have). Instead of falling back to a full unpickle, which
    would run code named by the file, the globals the file names are listed statically and each
    is mapped to `_Inert` for this load.
    """
    try:
        others = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(raw))
        zip_format = True
    except (ValueError, RuntimeError):
        others, zip_format = [], False  # torch's legacy format; torch.load below decides
    if others:
        logger.info('Checkpoint %s: skipping objects other than tensors (%s).', path,
                    ', '.join(sorted(others)))
    try:
        with torch.serialization.safe_globals([(_Inert, name) for name in others]):
            return torch.load(io.BytesIO(raw), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        cause = _unpickling_cause(e)
        if not zip_format and 'GLOBAL' in cause:
            cause += ' (only the zip format of torch>=1.6 may hold objects besides tensors)'
        raise ValueError(f'Checkpoint {path} does not hold a readable torch.save stream: '
                         f'{cause}.') from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f'Checkpoint {path} does not hold a readable torch.save stream: '
                         f'{type(e).__name__}: {e}') from None


def _unpickling_cause(error: pickle.UnpicklingError) -> str:
    """The sentence of torch's several-paragraph weights_only message that names the cause."""
    text = str(error)
    marker = re.search(r'WeightsUnpickler error:\s*([^\n]+)', text)
    paragraphs = [part.strip() for part in text.split('\n\n') if part.strip()]
    cause = marker.group(1) if marker else paragraphs[min(1, len(paragraphs) - 1)]
    return cause.split('. ')[0].rstrip('.')


def _normalise_keys(path: Path, state: Mapping[str, object],
                    expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps every accepted key style onto `expected`'s (mangled) keys and checks the shapes."""
    out, unknown = {}, []
    for key, value in state.items():
        plain = key.removeprefix(_DATA_PARALLEL_PREFIX).removeprefix(_MANGLED_PREFIX)
        name = _MANGLED_PREFIX + plain
        if name in expected:
            out[name] = value
        else:
            unknown.append(key)
    if any(key.endswith('__support') for key in unknown):
        raise ValueError(f'Checkpoint {path} is a distributional (C51) network; expected a '
                         f'DQN_modern (or M-DQN) checkpoint with plain Q-value outputs.')
    missing = sorted(set(expected) - set(out))
    if unknown or missing:
        raise ValueError(f'Checkpoint {path} does not hold an AtariNet state dict: unexpected '
                         f'keys {sorted(unknown)}, missing keys {missing}; expected '
                         f'{sorted(expected)} (optionally without the {_MANGLED_PREFIX} prefix '
                         f'or with a leading {_DATA_PARALLEL_PREFIX!r}).')
    not_tensors = sorted(key for key, value in out.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f'Checkpoint {path}: entries {not_tensors} must be tensors.')
    # The action count is checked first: a checkpoint of another game is the likely mistake.
    n_found, n_expected = out[_OUTPUT_BIAS_KEY].numel(), expected[_OUTPUT_BIAS_KEY].numel()
    if n_found != n_expected:
        raise ValueError(f'Checkpoint {path} has {n_found} Q-value outputs, expected '
                         f'n_actions={n_expected} (the size of the game\'s minimal action set); '
                         f'is it a checkpoint of another game?')
    for key, param in expected.items():
        if out[key].shape != param.shape:
            raise ValueError(f'Checkpoint {path}: {key} has shape {tuple(out[key].shape)}, '
                             f'expected {tuple(param.shape)}.')
    return out
