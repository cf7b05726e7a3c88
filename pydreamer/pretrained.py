"""Starting a Dreamer from another run's checkpoint: find it, check it fits, load parts, freeze parts.

A checkpoint reference is a local path or an mlflow URI such as
`runs:/<run_id>/checkpoints/latest.pt`. Before anything is loaded, the architecture keys of the
checkpoint's config are compared with the current config, and a mismatch names the key and both
values; loading a 2048-unit GRU into a 256-unit one should never get as far as a shape error.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydreamer.artifacts import ArtifactFolder
from pydreamer.checkpoint import CheckpointError, LoadedCheckpoint, UnreadableCheckpoint, read_newest
from pydreamer.config import Config
from pydreamer.tracking import setup_tracking

if TYPE_CHECKING:  # the launcher's checks read checkpoint headers without torch
    import torch

log = logging.getLogger(__name__)

WORLD_MODEL_KEYS = ('deter_dim', 'stoch_dim', 'stoch_discrete', 'hidden_dim', 'gru_layers', 'gru_type',
                    'layer_norm', 'image_encoder', 'image_encoder_layers', 'image_decoder',
                    'image_decoder_layers', 'cnn_depth', 'image_size', 'image_channels', 'image_categorical',
                    'image_loss', 'vecobs_size', 'action_dim', 'mlp_dim', 'reward_decoder_layers',
                    'terminal_decoder_layers')
ACTOR_CRITIC_KEYS = ('actor_critic_layers', 'actor_dist')
LOAD_PARTS = {'wm': ('wm.',), 'all': ('wm.', 'ac.')}
FREEZE_PARTS = {'freeze_rssm': 'wm.rssm.', 'freeze_encoder': 'wm.encoder.', 'freeze_decoder': 'wm.decoder.'}


def fetch_checkpoint(ref: str, dst_dir: str) -> Path | None:
    """A local copy of the checkpoint that `ref` (a path or an mlflow artifact URI) points to, or
    None when a path or a `runs:/` URI names no file."""
    if not ref:
        raise CheckpointError('Config key model_checkpoint is empty; give a checkpoint path or '
                              'runs:/<run_id>/checkpoints/latest.pt.')
    if ':/' not in ref:
        path = Path(ref).expanduser()
        return path if path.is_file() else None
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    setup_tracking()
    try:
        if ref.startswith('runs:/'):  # a listing tells a missing file from a failing transfer
            run_id, _, artifact_path = ref[len('runs:/'):].partition('/')
            folder = ArtifactFolder(run_id)
            return Path(folder.download_file(artifact_path, dst_dir)) if folder.exists(artifact_path) else None
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=dst_dir))
    except MlflowException as e:
        raise CheckpointError(f'Checkpoint {ref} could not be fetched from the tracking store: {e.message}') from None
    except OSError as e:
        raise CheckpointError(f'Checkpoint {ref} could not be fetched: {e}') from None


def read_pretrained(ref: str, dst_dir: str, header_only: bool = False) -> LoadedCheckpoint:
    """The checkpoint `ref` names or, when that is a latest.pt that cannot be read, the previous.pt
    beside it (`passed_over` then says why); with `header_only`, without its tensors (no torch)."""
    loaded = read_newest(ref, lambda r: fetch_checkpoint(r, dst_dir), header_only=header_only)
    if loaded is None:
        raise UnreadableCheckpoint(ref, 'does not exist')
    return loaded


def check_compatible(saved: dict, conf: Config, parts: str, ref: str) -> None:
    keys = WORLD_MODEL_KEYS + (ACTOR_CRITIC_KEYS if parts == 'all' else ())
    for key in keys:
        if key in saved and saved[key] != conf[key]:
            raise CheckpointError(f'Checkpoint {ref} was trained with {key}={saved[key]!r} but this config '
                                  f'has {key}={conf[key]!r}; the two architectures do not match.')


def frozen_prefixes(conf: Config) -> tuple[str, ...]:
    """Parameter-name prefixes that the freeze_* keys keep fixed."""
    return tuple(prefix for key, prefix in FREEZE_PARTS.items() if conf[key])


def load_pretrained(conf: Config, model: torch.nn.Module) -> dict[str, str]:
    """Load the parts chosen by `load_parts` from `model_checkpoint` into `model` (whose frozen
    parameters no longer require gradients). Returns a summary for the run's tags."""
    if conf.load_parts not in LOAD_PARTS:
        raise CheckpointError(f'Config key load_parts must be one of {", ".join(LOAD_PARTS)}, got {conf.load_parts!r}.')
    with tempfile.TemporaryDirectory(prefix='pydreamer-pretrained-') as tmp:
        loaded = read_pretrained(conf.model_checkpoint, tmp)
    if loaded.passed_over:
        log.warning('%s; fine-tuning from %s instead.', loaded.passed_over, loaded.ref)
    ref, payload = loaded.ref, loaded.payload
    check_compatible(payload['config'], conf, conf.load_parts, ref)
    prefixes = LOAD_PARTS[conf.load_parts]
    state = {k: v for k, v in payload['model'].items() if k.startswith(prefixes)}
    own = model.state_dict()
    for key, value in state.items():
        if key not in own or own[key].shape != value.shape:
            raise CheckpointError(f'Checkpoint {ref} has {key} of shape {tuple(value.shape)} '
                                  f'but the model expects {tuple(own[key].shape) if key in own else "no such key"}.')
    missing = [k for k in own if k.startswith(prefixes) and k not in state]
    if missing:
        raise CheckpointError(f'Checkpoint {ref} lacks {len(missing)} tensors of the '
                              f'parts to load, e.g. {missing[0]}.')
    model.load_state_dict(state, strict=False)

    frozen = frozen_prefixes(conf)
    counts = {'loaded': 0, 'frozen': 0, 'trained': 0}
    for name, param in model.named_parameters():
        counts['loaded'] += param.numel() if name.startswith(prefixes) else 0
        counts['frozen' if name.startswith(frozen) else 'trained'] += param.numel()
    summary = {'pretrained_checkpoint': ref, 'pretrained_step': str(payload['step']),
               'pretrained_parts': conf.load_parts, 'frozen_parts': ','.join(p.rstrip('.') for p in frozen) or 'none',
               **{f'parameters_{k}': f'{v:,}' for k, v in counts.items()}}
    log.info('Loaded %s parameters (%s) from %s (step %s); frozen: %s; trained: %s.', f'{counts["loaded"]:,}',
             conf.load_parts, ref, payload['step'], summary['frozen_parts'],
             f'{counts["trained"]:,}')
    return summary
