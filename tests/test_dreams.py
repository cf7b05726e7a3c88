"""Dream pictures: the GIF of real | posterior | dream panels and the labelled PNG strip, drawn from
a real debug model's outputs on real MinAtar play."""
import numpy as np
import pytest
import torch
from PIL import Image

from pydreamer import tracking
from pydreamer.config import build_config
from pydreamer.dreams import (IMAGINED, OBSERVED, DreamLogger, animation, category_names, data_env_ids,
                              dream_frames, enlarge, save_gif, scale_for, to_rgb)
from pydreamer.envs import make_env
from pydreamer.episodes import first_row, next_row
from pydreamer.models.dreamer import Dreamer
from pydreamer.preprocess import preprocess

torch.set_num_threads(1)

MINATAR = ['defaults', 'minatar', 'debug']
GAMES = ['MinAtar/Breakout-v0', 'MinAtar/Seaquest-v0']


def played_batch(conf, env_ids, T, B, seed=0):
    """A time-major batch as the data loader yields it, from random play: sequence b plays
    env_ids[b % len(env_ids)], episodes back to back, and carries its `env_id` index."""
    rng = np.random.default_rng(seed)
    columns = []
    for b in range(B):
        game = b % len(env_ids)
        env = make_env(env_ids[game], action_repeat=conf.env_action_repeat, seed=seed + b)
        rows = [first_row(env.reset(), conf.action_dim)]
        while len(rows) < T:
            action = int(rng.integers(conf.action_dim))
            obs, reward, terminated, truncated = env.step(action)
            rows.append(next_row(obs, action, conf.action_dim, reward, terminated))
            if terminated or truncated:
                rows.append(first_row(env.reset(), conf.action_dim))
        env.close()
        columns.append([{**row, 'env_id': np.int8(game)} for row in rows[:T]])
    return {key: np.stack([np.stack([col[t][key] for col in columns]) for t in range(T)]) for key in columns[0][0]}


def debug_model(**changes):
    conf = build_config(MINATAR).replace(amp='false', **changes)
    torch.manual_seed(0)
    return conf, Dreamer(conf)


def test_category_names_come_from_minatar():
    assert category_names('MinAtar/Breakout-v0') == ('paddle', 'ball', 'trail', 'brick')
    assert len(category_names('MinAtar/Seaquest-v1')) == 10 and category_names('MinAtar/SpaceInvaders-v0')[0] == 'cannon'
    assert category_names('Atari-Pong') == () and scale_for(10) >= 8 and 2 <= scale_for(64) <= 4


def test_gif_panels_show_real_posterior_and_dream_frames_exactly(tmp_path):
    conf, model = debug_model()
    T = conf.batch_length
    obs = preprocess(played_batch(conf, GAMES, T, 3), conf)
    frames = dream_frames(model, obs, 2, 3, False, GAMES)
    assert frames.env_ids[0] == GAMES
    images, layout = animation(frames, categorical=True)
    save_gif(images, tmp_path / 'dream.gif', frame_ms=400)

    gif = Image.open(tmp_path / 'dream.gif')
    assert gif.n_frames == T and gif.size == (layout.width, layout.height)
    assert layout.panel == (100, 100) and layout.legend_lines >= 2  # Breakout's line, Seaquest's 10 names
    kinds = (frames.real, frames.posterior, frames.dream)
    differing = 0
    for t in range(T):
        gif.seek(t)
        picture = np.asarray(gif.convert('RGB'))
        for n in range(2):
            crops = []
            for col, kind in enumerate(kinds):
                left, top, right, bottom = layout.box(n, col)
                crops.append(picture[top:bottom, left:right])
                assert np.array_equal(crops[-1], enlarge(to_rgb(kind[t:t + 1, n], True)[0], 10)), (t, n, col)
            # the real and the dream panel differ in exactly the cells where the categories differ
            cells_differ = (crops[0][::10, ::10] != crops[2][::10, ::10]).any(-1)
            assert np.array_equal(cells_differ, frames.real[t, n].argmax(0) != frames.dream[t, n].argmax(0))
            differing += cells_differ.sum()
            left, top = layout.box(n, 2)[:2]
            assert tuple(picture[top - 1, left - 1]) == (OBSERVED if t < 3 else IMAGINED)
    assert differing > 0  # an untrained model's dream is not the real game


def test_the_learner_logs_gif_and_labelled_png_and_dreams_with_the_actor_when_asked(mlflow_local, tmp_path):
    conf, model = debug_model(dream_actor=True, env_id=GAMES)
    T, B = conf.batch_length, conf.batch_size
    obs = preprocess(played_batch(conf, GAMES, T, B), conf)
    asked = []
    dream = model.dream
    model.dream = lambda *args, **kwargs: asked.append(kwargs['use_actor']) or dream(*args, **kwargs)
    c = tracking.client()
    experiment = c.create_experiment('dreams')
    data_run = c.create_run(experiment).info.run_id
    tracking.log_params(data_run, conf.to_dict())
    run_id = c.create_run(experiment).info.run_id
    env_ids = data_env_ids(build_config(MINATAR), data_run, run_id)  # a world-model run reads the data run's list
    assert env_ids == GAMES

    DreamLogger(conf, run_id, env_ids, str(tmp_path)).log(model, obs, 7)
    assert asked == [True]
    names = {a.path for a in c.list_artifacts(run_id, 'dreams')}
    assert names == {'dreams/dream_0000007.gif', 'dreams/dream_0000007.png'}
    local = c.download_artifacts(run_id, 'dreams', str(tmp_path / 'dl'))
    assert Image.open(f'{local}/dream_0000007.gif').n_frames == T
    strip = Image.open(f'{local}/dream_0000007.png')
    assert strip.height == 6 * (60 + 2) - 2  # real, posterior, dream for two sequences, 6x enlarged
    labels = np.asarray(strip.convert('L'))[:, :20]
    assert (labels > 200).any()  # the row labels are written at the left
    assert not list(tmp_path.glob('dream_*'))  # the local copies are removed


@pytest.mark.parametrize('use_actor', [False, True])
def test_the_dream_follows_recorded_actions_in_context_and_the_actor_after_when_asked(use_actor):
    conf, model = debug_model()
    obs = preprocess(played_batch(conf, GAMES[:1], 12, 2), conf)
    actions = model.dream(obs, model.init_state(2), context=3, use_actor=use_actor)['action']
    assert torch.equal(actions[:3], obs['action'][:3])
    assert torch.equal(actions[3:], obs['action'][3:]) != use_actor
