"""Learning and gradients: a debug model overfits a batch, the actor and critic move the right
way, gradients reach only what they should, bf16 agrees with fp32, checkpoints round-trip."""
import copy
import io
import math

import pytest
import torch

from pydreamer.models.actor_critic import ActorCritic, Imagined
from pydreamer.models.common import frozen
from pydreamer.models.dreamer import Dreamer
from pydreamer.models.world_model import WorldModel
from pydreamer.train_step import init_optimizers, train_step

from tests.models_common import config, make_obs

torch.set_num_threads(1)


def test_debug_model_overfits_one_batch():
    torch.manual_seed(0)
    conf = config(adam_lr=1e-3)
    model = Dreamer(conf, wm_only=True)
    optimizers = init_optimizers(model, conf)
    obs = make_obs(conf, conf.batch_length, conf.batch_size)
    history = []
    for _ in range(100):
        _, metrics = train_step(model, obs, model.init_state(conf.batch_size), optimizers)
        history.append(metrics)
    for key in ('loss_model', 'loss_kl', 'loss_image', 'loss_reward', 'loss_terminal'):
        assert all(math.isfinite(m[key].item()) for m in history), key
    assert history[-1]['loss_model'] < 0.5 * history[0]['loss_model']
    assert history[-1]['loss_reward'] < history[0]['loss_reward']


def _train_actor_critic(ac, features, actions, reward, terminal, steps=30):
    """Adam steps of actor and critic on one fixed imagined batch; returns the per-step metrics."""
    opt_actor = torch.optim.Adam(ac.actor.parameters(), lr=1e-3)
    opt_critic = torch.optim.Adam(ac.critic.parameters(), lr=1e-3)
    history = []
    for _ in range(steps):
        imagined = Imagined(features, None, None, actions, ac.actor(features[:-1]))
        loss_actor, targets, metrics = ac.actor_loss(imagined, reward, terminal)
        loss_critic, _ = ac.critic_loss(imagined, targets)
        opt_actor.zero_grad()
        opt_critic.zero_grad()
        (loss_actor + loss_critic).backward()
        opt_actor.step()
        opt_critic.step()
        history.append({'critic': loss_critic.item(), 'entropy': metrics['policy_entropy'].item(),
                        'prob_0': metrics['policy_prob_0'].item()})
    return history


def test_actor_moves_toward_the_positive_advantage_and_critic_fits_the_returns():
    torch.manual_seed(0)
    conf = config()
    F, H, M = 24, conf.imag_horizon, 64
    ac = ActorCritic(conf, F)
    features = torch.randn(H + 1, M, F)
    actions = torch.nn.functional.one_hot(torch.randint(0, conf.action_dim, (H, M)), conf.action_dim).float()
    # Action 0 earns 1, the others -0.2: zero mean under the uniform actions, so only action 0 has
    # a positive advantage. Any sign error in the REINFORCE term makes its probability fall.
    reward = torch.where(actions[..., 0] > 0, 1.0, -0.2)
    terminal = torch.rand(H + 1, M) * 0.1
    history = _train_actor_critic(ac, features, actions, reward, terminal)
    assert history[-1]['critic'] < 0.5 * history[0]['critic']
    assert history[-1]['prob_0'] > history[0]['prob_0'] + 0.2  # measured: 0.18 -> 0.67


def test_entropy_bonus_alone_raises_the_policy_entropy():
    torch.manual_seed(0)
    conf = config(zero_init_heads=True)  # a zero target critic and zero rewards: every advantage is 0
    F, H, M = 24, conf.imag_horizon, 64
    ac = ActorCritic(conf, F)
    features = torch.randn(H + 1, M, F)
    actions = torch.nn.functional.one_hot(torch.randint(0, conf.action_dim, (H, M)), conf.action_dim).float()
    history = _train_actor_critic(ac, features, actions, torch.zeros(H, M), torch.zeros(H + 1, M))
    assert history[-1]['entropy'] > history[0]['entropy'] + 0.05  # measured: 1.69 -> 1.79 (log 6 = 1.79)


def grads(module):
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def imagined_losses(model, obs):
    """The actor and critic losses of one batch, as train_step computes them, without stepping."""
    wm = model.wm.loss(obs, model.init_state(obs['reward'].shape[1]))
    imagined, reward, terminal = model.imagine(wm.states)
    loss_actor, targets, _ = model.ac.actor_loss(imagined, reward, terminal)
    return loss_actor, model.ac.critic_loss(imagined, targets)[0]


def test_reinforce_gives_world_model_no_gradient():
    conf = config()
    model = Dreamer(conf)
    obs = make_obs(conf, 4, 2)
    loss_actor, loss_critic = imagined_losses(model, obs)
    loss_actor.backward()
    assert grads(model.wm) == [] and grads(model.ac.critic) == [] and grads(model.ac.actor)
    loss_critic.backward()
    assert grads(model.wm) == [] and grads(model.ac.critic)
    assert all(p.requires_grad for p in model.wm.parameters())             # unfrozen again


def test_dynamics_backprop_reaches_the_actor_through_the_rollout():
    conf = config(actor_grad='dynamics', entropy=0.0)
    model = Dreamer(conf)
    obs = make_obs(conf, 4, 2)
    torch.manual_seed(0)
    loss_actor, _ = imagined_losses(model, obs)
    loss_actor.backward()
    assert len(grads(model.ac.actor)) == len(list(model.ac.actor.parameters()))  # value path only
    assert grads(model.wm) == [] and grads(model.ac.critic) == []

    # the same loss with the rollout detached gives the actor nothing
    model.zero_grad()
    seq = model.wm.loss(obs, model.init_state(2))
    start = tuple(x.detach().flatten(0, 2) for x in seq.states)
    with frozen(model.wm):
        imagined = model.ac.imagine(model.wm.rssm, start, conf.imag_horizon)
        detached = imagined._replace(features=imagined.features.detach())
        reward = detached.apply(model.wm.decoder.reward, 1)
        terminal = torch.sigmoid(detached.apply(model.wm.decoder.terminal))
        loss_actor, _, _ = model.ac.actor_loss(detached, reward, terminal)
    loss_actor.backward()
    assert grads(model.ac.actor) == []


def test_target_critic_is_a_hard_copy_every_interval():
    conf = config(target_interval=3)
    model = Dreamer(conf)
    obs = make_obs(conf, 3, 2)
    optimizers = init_optimizers(model, conf)
    for step in range(5):
        critic = [p.clone() for p in model.ac.critic.parameters()]
        train_step(model, obs, model.init_state(2), optimizers)
        copied = all(torch.equal(a, b) for a, b in zip(critic, model.ac.critic_target.parameters()))
        assert copied == (step % 3 == 0), step
    assert all(not p.requires_grad for p in model.ac.critic_target.parameters())


def test_bf16_autocast_agrees_with_fp32():
    conf = config()
    model = Dreamer(conf)
    obs = make_obs(conf, conf.batch_length, conf.batch_size)
    results = {}
    for amp in ('false', 'true'):
        twin = copy.deepcopy(model)
        twin.amp = amp
        torch.manual_seed(0)
        _, metrics = train_step(twin, obs, twin.init_state(conf.batch_size), init_optimizers(twin, conf))
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in metrics.values())
        results[amp] = metrics
    for key in ('loss_model', 'loss_image', 'entropy_prior', 'entropy_post'):
        assert math.isclose(results['true'][key], results['false'][key], rel_tol=0.02), key
    for key in ('loss_kl', 'loss_reward', 'loss_terminal', 'policy_value', 'policy_entropy'):
        assert abs(results['true'][key] - results['false'][key]) < 0.02 + 0.05 * abs(results['false'][key]), key


def test_state_dict_round_trip():
    conf = config()
    obs = make_obs(conf, 4, 2)
    model = Dreamer(conf)
    optimizers = init_optimizers(model, conf)
    for _ in range(2):
        train_step(model, obs, model.init_state(2), optimizers)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a different initialisation
    fresh = Dreamer(conf)
    fresh.load_state_dict(torch.load(buffer))
    outputs = []
    for m in (model, fresh):
        torch.manual_seed(0)
        with torch.no_grad():
            wm = m.wm.loss(obs, m.init_state(2))
            imagined, reward, terminal = m.imagine(wm.states)
            loss_actor, targets, _ = m.ac.actor_loss(imagined, reward, terminal)
        outputs.append((wm.out_state, {**wm.metrics, 'loss_actor': loss_actor, 'returns': targets.returns}))
    (sa, ma), (sb, mb) = outputs
    assert torch.equal(sa[0], sb[0]) and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_the_world_model_loss_is_its_weighted_terms():
    conf = config(kl_weight=0.3, reward_weight=2.0)
    wm = WorldModel(conf)
    out = wm.loss(make_obs(conf, 4, 2), wm.init_state(2))
    assert out.terms.keys() == wm.weights.keys() == {'kl', 'image', 'reward', 'terminal'}
    assert wm.weights['kl'] == 0.3 and wm.weights['reward'] == 2.0
    expected = sum(wm.weights[name] * term for name, term in out.terms.items()).mean()
    assert torch.isclose(out.loss, expected)
    with pytest.raises(AssertionError, match='loss terms'):
        wm.weighted({'kl': out.terms['kl']})
