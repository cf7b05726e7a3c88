"""What the model tests share: the config sections, and batches of the right shapes."""
import numpy as np
import torch

from pydreamer.config import build_config
from pydreamer.preprocess import preprocess

torch.set_num_threads(1)

MINATAR = ['defaults', 'minatar', 'debug']
ATARI = ['defaults', 'atari', 'debug']
SHAPES = [(1, 1), (3, 2), (5, 4)]


def config(sections=MINATAR, **changes):
    return build_config(sections).replace(amp='false', **changes)


def numpy_batch(conf, T, B, seed=0):
    """A time-major batch as the data loader yields it: a few objects on an empty background."""
    rng = np.random.default_rng(seed)
    size = conf.image_size
    if conf.image_categorical:
        image = np.zeros((T, B, size, size), np.uint8)
        for t in range(T):
            image[t, :, t % size, (2 * t) % size] = 1 + t % (conf.image_channels - 1)
            image[t, :, size - 1, :] = conf.image_channels - 1
    else:
        image = np.zeros((T, B, size, size, conf.image_channels), np.uint8)
        for t in range(T):
            y = (4 * t) % (size - 8)
            image[t, :, y:y + 8, 10:18, :] = 200
    actions = rng.integers(0, conf.action_dim, (T, B))
    batch = {'image': image,
             'action': np.eye(conf.action_dim, dtype=np.float32)[actions],
             'reward': (np.arange(T)[:, None] % 3 == 0).repeat(B, 1).astype(np.float32),
             'terminal': np.zeros((T, B), bool),
             'reset': np.zeros((T, B), bool)}
    batch['reset'][0] = True
    batch['terminal'][-1] = True
    if conf.vecobs_size:
        batch['vecobs'] = rng.normal(size=(T, B, conf.vecobs_size)).astype(np.float32)
    return batch


def make_obs(conf, T, B, seed=0):
    return preprocess(numpy_batch(conf, T, B, seed), conf)
