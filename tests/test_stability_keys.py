"""The early-learning keys and the plateau measures, on the real `debug` config: each key changes
what it says it changes, and the default keeps the upstream behaviour."""
import math

import numpy as np
import pytest
import torch

from pydreamer.image_stats import ImageFloor, changed_pixels, object_pixels, pixel_accuracy
from pydreamer.models.dreamer import Dreamer
from pydreamer.train_step import init_optimizers, train_step
from tests.models_common import config, make_obs

torch.set_num_threads(1)


def test_zero_init_heads_predict_zero_reward_and_value_at_step_0():
    torch.manual_seed(0)
    obs = make_obs(config(), 6, 3)
    for zero in (False, True):
        torch.manual_seed(0)
        model = Dreamer(config(zero_init_heads=zero))
        features = model.wm.loss(obs, model.init_state(3)).features
        reward = model.wm.decoder.reward_mean(features)
        value, target = model.ac.critic(features), model.ac.critic_target(features)
        if zero:
            assert torch.count_nonzero(reward) == 0 and torch.count_nonzero(value) == 0
            assert torch.count_nonzero(target) == 0
        else:
            assert reward.abs().min() > 0 and value.abs().min() > 0


def test_zero_init_heads_still_learn():
    torch.manual_seed(0)
    model = Dreamer(config(zero_init_heads=True))
    optimizers = init_optimizers(model, config())
    obs = make_obs(config(), 6, 3)
    train_step(model, obs, model.init_state(3), optimizers)
    train_step(model, obs, model.init_state(3), optimizers)
    assert model.wm.decoder.reward.model[-1].weight.abs().sum() > 0
    assert model.ac.critic.model[-1].weight.abs().sum() > 0


@pytest.mark.parametrize('imag_starts,expected', [(0, 6 * 3), (5, 5), (100, 6 * 3)])
def test_imag_starts_sets_the_number_of_imagined_trajectories(imag_starts, expected):
    torch.manual_seed(0)
    conf = config(imag_starts=imag_starts)
    model = Dreamer(conf)
    wm = model.wm.loss(make_obs(conf, 6, 3), model.init_state(3))
    imagined, reward, terminal = model.imagine(wm.states)
    assert imagined.actions.shape[:2] == (conf.imag_horizon, expected)
    assert reward.shape == (conf.imag_horizon, expected) and terminal.shape == (conf.imag_horizon + 1, expected)


def test_imag_starts_draws_distinct_states_each_step():
    torch.manual_seed(0)
    conf = config(imag_starts=4)
    model = Dreamer(conf)
    wm = model.wm.loss(make_obs(conf, 6, 3), model.init_state(3))
    all_h = wm.states[0].flatten(0, 2)                                       # (18, D)
    picks = []
    for _ in range(2):
        imagined, _, _ = model.imagine(wm.states)
        start = imagined.h[0]                                                # (4, D)
        rows = [int(torch.nonzero((all_h == row).all(-1))[0]) for row in start]
        assert len(set(rows)) == 4                                           # without replacement
        picks.append(tuple(rows))
    assert picks[0] != picks[1]


def test_train_ac_false_leaves_actor_and_critic_unchanged():
    torch.manual_seed(0)
    conf = config()
    model = Dreamer(conf)
    optimizers = init_optimizers(model, conf)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, metrics = train_step(model, make_obs(conf, 6, 3), model.init_state(3), optimizers, train_ac=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith('wm.') for k in changed)
    assert 'loss_actor' not in metrics and int(model.ac.train_steps) == 0


def test_entropy_schedule_moves_linearly_from_initial_to_final():
    conf = config(entropy=0.001, entropy_initial=0.03, entropy_anneal_steps=10)
    model = Dreamer(conf)
    optimizers = init_optimizers(model, conf)
    obs = make_obs(conf, 4, 2)
    weights = []
    for _ in range(12):
        _, metrics = train_step(model, obs, model.init_state(2), optimizers)
        weights.append(float(metrics['policy_entropy_weight']))
    assert weights[0] == pytest.approx(0.03)
    assert weights[5] == pytest.approx(0.03 + (0.001 - 0.03) * 0.5)
    assert weights[10] == pytest.approx(0.001) and weights[11] == pytest.approx(0.001)
    constant = Dreamer(config(entropy=0.002))
    assert constant.ac.entropy_weight() == 0.002


def test_policy_probabilities_are_logged_and_sum_to_one():
    conf = config()
    model = Dreamer(conf)
    _, metrics = train_step(model, make_obs(conf, 4, 2), model.init_state(2), init_optimizers(model, conf))
    probs = [float(metrics[f'policy_prob_{i}']) for i in range(conf.action_dim)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5) and min(probs) > 0
    assert f'policy_prob_{conf.action_dim}' not in metrics


def test_image_floor_by_hand():
    # one pixel, two categories: category 1 in 1 of 4 images -> entropy of (3/4, 1/4)
    images = torch.zeros(4, 1, 2, 1, 1)
    images[:, 0, 0] = 1
    images[0, 0] = torch.tensor([0.0, 1.0]).view(2, 1, 1)
    floor = ImageFloor()
    floor.update(images[:2])
    floor.update(images[2:])
    p = np.array([0.75, 0.25])
    assert floor.value('categorical') == pytest.approx(float(-(p * np.log(p)).sum()))
    # squared error of predicting the mean one-hot: 0.5 · Σ_k p_k (1 - p_k)
    assert floor.value('mse') == pytest.approx(0.5 * float((p * (1 - p)).sum()))
    assert math.isnan(ImageFloor().value('mse'))


def _onehot(classes):
    """(T, B, H, W) category indices -> (T, B, 3, H, W) one-hot."""
    return torch.nn.functional.one_hot(torch.tensor(classes), 3).permute(0, 1, 4, 2, 3).float()


def test_pixel_accuracy_on_object_and_changed_pixels():
    # one stream, three 2x2 frames: a static object of class 2 at (1, 1), a class-1 object
    # moving from (0, 0) to (0, 1); a reset before the third frame
    target = _onehot([[[[1, 0], [0, 2]]], [[[0, 1], [0, 2]]], [[[1, 0], [0, 2]]]])
    reset = torch.tensor([[True], [False], [True]])
    prediction = torch.zeros_like(target)
    prediction[:, :, 0] = 1                              # everything empty ...
    prediction[:, :, 2, 1, 1], prediction[:, :, 0, 1, 1] = 1, 0   # ... but the static object, right
    objects, changed = object_pixels(target), changed_pixels(target, reset)
    assert objects.sum() == 6
    assert changed.tolist() == [[[[False, False], [False, False]]], [[[True, True], [False, False]]],
                                [[[False, False], [False, False]]]]
    assert pixel_accuracy(prediction, target, objects) == (3, 6)    # the static object in every frame
    # the vacated pixel (0, 0) of frame 1 is predicted empty: right; the new position is missed
    assert pixel_accuracy(prediction, target, changed) == (1, 2)


def test_actor_warmup_keeps_actor_and_critic_and_the_prefill_policy(mlflow_local, tmp_path):
    """A debug run that ends inside its actor warm-up: the world model trained, the actor and
    critic are the seeded initial ones, and the generator kept the random policy after the
    learner's checkpoints appeared."""
    import subprocess
    import sys

    from pydreamer import tracking
    from pydreamer.checkpoint import RunCheckpoints, read_checkpoint
    from pydreamer.config import PROJECT_ROOT, build_config

    args = ['--configs', 'defaults', 'minatar', 'debug', '--n_steps', '30', '--actor_warmup_steps', '1000',
            '--generator_prefill_steps', '300', '--save_interval', '5', '--limit_step_ratio', '40']
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / 'launch.py'), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    c = tracking.client()
    run = c.search_runs([c.get_experiment_by_name('pydreamer').experiment_id])[0]
    saved = read_checkpoint(RunCheckpoints(run.info.run_id).download(str(tmp_path / 'ckpt')))
    assert saved['step'] == 30
    conf = build_config(['defaults', 'minatar', 'debug'])
    torch.manual_seed(conf.seed)
    initial = Dreamer(conf).state_dict()
    for key, value in saved['model'].items():
        if key.startswith('ac.') and key != 'ac.train_steps':
            assert torch.equal(value, initial[key]), key
    assert any(not torch.equal(v, initial[k]) for k, v in saved['model'].items() if k.startswith('wm.'))
    assert 'train/loss_actor' not in run.data.metrics and run.data.metrics['train/ac_trained'] == 0
    fallback = c.get_metric_history(run.info.run_id, 'agent/policy_fallback')
    assert fallback and 'agent/policy_learner_step' not in run.data.metrics
