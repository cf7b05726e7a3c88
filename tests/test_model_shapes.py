"""Model parts and the Dreamer on the real config sections: preprocessing, the shapes every module
takes and gives, the policy and the dream."""
import copy
import math

import numpy as np
import pytest
import torch

from pydreamer.models.actor_critic import ActorCritic, Imagined
from pydreamer.models.decoders import MultiDecoder, image_loss
from pydreamer.models.dreamer import Dreamer
from pydreamer.models.encoders import MultiEncoder
from pydreamer.models.functions import sample_latent
from pydreamer.models.rssm import RSSM
from pydreamer.preprocess import clip_rewards, preprocess, preprocess_step
from pydreamer.train_step import init_optimizers, train_step

from tests.models_common import ATARI, MINATAR, SHAPES, config, make_obs, numpy_batch

torch.set_num_threads(1)


def test_preprocess_images_rewards_actions():
    conf = config(ATARI, clip_rewards='tanh')
    batch = numpy_batch(conf, 4, 2)
    batch['action'] = np.array([[0, 1], [2, 3], [17, 0], [5, 5]])        # indices become one-hot
    batch['reward'][:] = 2.0
    obs = preprocess(batch, conf)
    assert obs['image'].shape == (4, 2, 3, 64, 64) and obs['image'].dtype == torch.float32
    assert obs['image'].min() == -0.5 and math.isclose(obs['image'].max().item(), 200 / 255 - 0.5, rel_tol=1e-6)
    assert obs['action'].shape == (4, 2, 18) and obs['action'][2, 0, 17] == 1 and obs['action'].sum() == 8
    assert torch.allclose(obs['reward'], torch.full((4, 2), math.tanh(2.0)))
    assert obs['reset'].dtype == torch.bool and obs['terminal'].dtype == torch.float32

    conf = config(MINATAR)
    obs = preprocess(numpy_batch(conf, 3, 2), conf)
    assert obs['image'].shape == (3, 2, 11, 10, 10)
    assert torch.equal(obs['image'].sum(2), torch.ones(3, 2, 10, 10))     # one-hot over categories

    step = preprocess_step({'image': np.zeros((5, 10, 10), np.uint8), 'action': np.zeros(5, int),
                            'reset': np.ones(5, bool)}, conf)
    assert step['image'].shape == (1, 5, 11, 10, 10) and step['action'].shape == (1, 5, 6)


def test_clip_rewards():
    r = torch.tensor([-5.0, -0.5, 0.0, 3.0])
    assert torch.equal(clip_rewards(r, 'none'), r)
    assert torch.allclose(clip_rewards(r, 'sign'), torch.tensor([-1.0, -1.0, 0.0, 1.0]))
    assert torch.allclose(clip_rewards(r, 'log1p'), torch.tensor([-math.log(6), -math.log(1.5), 0, math.log(4)]))
    with pytest.raises(ValueError, match='clip_rewards'):
        clip_rewards(r, 'clip')


@pytest.mark.parametrize('sections,changes,embed_dim', [
    (MINATAR, {}, 32 * 4),
    (ATARI, {}, 32 * 4),
    (MINATAR, {'vecobs_size': 5}, 32 * 4 + 256),
    (MINATAR, {'image_encoder': 'dense', 'image_decoder': 'dense', 'image_encoder_layers': 2}, 256),
    (MINATAR, {'image_encoder': 'none', 'image_decoder': 'none', 'vecobs_size': 7}, 256),
])
@pytest.mark.parametrize('T,B', SHAPES)
def test_encoder_decoder_shapes(sections, changes, embed_dim, T, B):
    conf = config(sections, **changes)
    obs = make_obs(conf, T, B)
    encoder = MultiEncoder(conf)
    assert encoder(obs).shape == (T, B, embed_dim)
    features = torch.randn(T, B, 2, 40)
    decoder = MultiDecoder(conf, 40)
    terms, outputs = decoder.loss(features, obs, with_outputs=True)
    assert all(term.shape == (T, B, 2) for term in terms.values())
    assert outputs['reward_rec'].shape == (T, B) and outputs['terminal_rec'].shape == (T, B)
    if decoder.image is not None:
        assert outputs['image_rec'].shape == obs['image'].shape
    if conf.vecobs_size:
        assert outputs['vecobs_rec'].shape == (T, B, conf.vecobs_size)


def test_image_prediction_follows_the_image_loss():
    output = torch.randn(2, 11, 10, 10)
    categorical = MultiDecoder(config(image_loss='categorical'), 8).image_prediction(output)
    assert torch.allclose(categorical, output.softmax(-3))
    assert torch.equal(MultiDecoder(config(image_loss='mse'), 8).image_prediction(output), output)
    with pytest.raises(ValueError, match='image_loss categorical needs categorical images'):
        MultiDecoder(config(ATARI, image_loss='categorical'), 8)


def test_image_losses_by_hand():
    target = torch.zeros(1, 2, 2, 2)
    target[0, 1] = 1.0                                                     # class 1 everywhere
    logits = torch.zeros(1, 2, 2, 2)
    assert torch.allclose(image_loss(logits, target, 'categorical'), torch.tensor([4 * math.log(2)]))
    assert torch.allclose(image_loss(logits + 1, target, 'mse'), torch.tensor([0.5 * 4]))


@pytest.mark.parametrize('T,B', SHAPES)
@pytest.mark.parametrize('classes', [4, 0])
def test_rssm_shapes(T, B, classes):
    conf = config(stoch_discrete=classes)
    rssm = RSSM(conf, embed_dim=10)
    Z = conf.stoch_dim * (classes or 1)
    P = conf.stoch_dim * (classes or 2)
    obs = make_obs(conf, T, B)
    for I in (1, 3):
        seq = rssm(torch.randn(T, B, 10), obs['action'], obs['reset'], rssm.init_state(B), iwae_samples=I)
        assert seq.prior.shape == seq.post.shape == (T, B, I, P)
        assert seq.h.shape == (T, B, I, conf.deter_dim) and seq.z.shape == (T, B, I, Z)
        assert seq.out_state[0].shape == (B * I, conf.deter_dim) and seq.out_state[1].shape == (B * I, Z)
        assert not seq.out_state[0].requires_grad
    assert rssm.feature_dim == conf.deter_dim + Z


@pytest.mark.parametrize('gru_type', ['gru', 'gru_layernorm', 'gru_layernorm_dv2'])
def test_rssm_steps_equal_sequence(gru_type):
    """Stepping the posterior one step at a time with the same noise equals the sequence call,
    resets included (state zeroed before the reset step)."""
    conf = config(gru_type=gru_type, gru_layers=2)
    T, B = 6, 3
    rssm = RSSM(conf, embed_dim=10)
    embed = torch.randn(T, B, 10)
    obs = make_obs(conf, T, B)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[3, 1] = True
    in_state = (torch.randn(B, conf.deter_dim), sample_latent(torch.randn(B, rssm.params_dim), rssm.classes))
    noise = rssm.noise((T, B))
    seq = rssm(embed, obs['action'], reset, in_state, noise=noise)
    state = in_state
    for t in range(T):
        post, state = rssm.observe_step(embed[t], obs['action'][t], reset[t], state, noise=noise[t])
        assert torch.allclose(post, seq.post[t, :, 0], atol=1e-5)
        assert torch.allclose(state[0], seq.h[t, :, 0], atol=1e-5)
        assert torch.equal(state[1], seq.z[t, :, 0])
        assert torch.allclose(rssm.prior(state[0]), seq.prior[t, :, 0], atol=1e-5)
    # the reset row starts from a zero state: it equals a fresh start
    _, fresh = rssm.observe_step(embed[3, 1:2], obs['action'][3, 1:2], None, rssm.init_state(1), noise=noise[3, 1:2])
    assert torch.allclose(fresh[0], seq.h[3, 1:2, 0], atol=1e-5)


def test_onehot_rollout_equals_dense():
    """The index-based imagination (REINFORCE) gives the same states and head outputs as the dense one."""
    conf = config()
    rssm = RSSM(conf, embed_dim=10)
    ac = ActorCritic(conf, rssm.feature_dim)
    M, H = 5, 3
    start = (torch.randn(M, conf.deter_dim), sample_latent(torch.randn(M, rssm.params_dim), rssm.classes))
    noise = rssm.noise((H, M))
    torch.manual_seed(1)
    sparse = ac.imagine(rssm, start, H, noise=noise)
    ac.actor_grad = 'dynamics'
    torch.manual_seed(1)
    dense = ac.imagine(rssm, start, H, noise=noise)
    assert sparse.features is None and dense.features is not None
    assert torch.equal(sparse.actions, dense.actions.detach())
    for mlp in (ac.critic, ac.actor):
        assert torch.allclose(sparse.apply(mlp), dense.apply(mlp), atol=1e-5)
    sparse.apply(ac.critic).sum().backward()
    grad_sparse = ac.critic.model[0].weight.grad.clone()
    ac.critic.zero_grad()
    dense.apply(ac.critic, detach=True).sum().backward()
    assert torch.allclose(grad_sparse, ac.critic.model[0].weight.grad, atol=1e-4)


@pytest.mark.parametrize('T,B', SHAPES)
def test_actor_critic_shapes(T, B):
    conf = config()
    F, A, H = 20, conf.action_dim, conf.imag_horizon
    ac = ActorCritic(conf, F)
    features = torch.randn(T, B, F)
    policy = ac.distribution(ac.actor(features))
    action = policy.sample()
    assert action.shape == (T, B, A) and policy.entropy().shape == (T, B)
    assert policy.log_prob(action).shape == (T, B) and ac.critic(features).shape == (T, B)
    imagined = Imagined(torch.randn(H + 1, T * B, F), None, None,
                        torch.rand(H, T * B, A) * 1.8 - 0.9, ac.actor(torch.randn(H, T * B, F)))
    loss_actor, targets, _ = ac.actor_loss(imagined, torch.randn(H, T * B), torch.rand(H + 1, T * B))
    assert targets.returns.shape == targets.weight.shape == (H, T * B)
    loss_critic, _ = ac.critic_loss(imagined, targets)
    assert loss_actor.dim() == loss_critic.dim() == 0


@pytest.mark.parametrize('sections,changes', [
    (MINATAR, {}),
    (ATARI, {}),
    (MINATAR, {'vecobs_size': 5}),
    (MINATAR, {'stoch_discrete': 0}),
    (MINATAR, {'iwae_samples': 2}),
    (MINATAR, {'actor_grad': 'dynamics'}),
])
def test_dreamer_training_step_shapes(sections, changes):
    conf = config(sections, **changes)
    I = conf.iwae_samples
    for T, B in [(3, 2), (5, 1)]:
        model = Dreamer(conf)
        obs = make_obs(conf, T, B)
        tensors = model.wm.loss(obs, model.init_state(B), do_image_pred=True).tensors
        assert tensors['image_rec'].shape == tensors['image_pred'].shape == obs['image'].shape
        assert tensors['loss_kl'].shape == (T, B)
        optimizers = init_optimizers(model, conf)
        out_state, metrics = train_step(model, obs, model.init_state(B), optimizers)
        assert out_state[0].shape == (B * I, conf.deter_dim)
        for key in ('loss_model', 'loss_kl', 'loss_image', 'loss_reward', 'loss_terminal', 'entropy_prior',
                    'entropy_post', 'loss_actor', 'loss_critic', 'policy_entropy', 'policy_value',
                    'policy_reward', 'policy_reward_std', 'grad_norm_wm', 'grad_norm_actor', 'grad_norm_critic'):
            assert metrics[key].dim() == 0 and torch.isfinite(metrics[key]), key
    # A second batch without a reset on its first row continues from the carried state (B·I rows):
    # under the same random draws, its loss differs from that of the same step from a blank state.
    batch = numpy_batch(conf, T, B, seed=1)
    batch['reset'][0] = False
    obs = preprocess(batch, conf)
    blank_model, blank_optimizers = copy.deepcopy((model, optimizers))
    torch.manual_seed(1)
    next_state, metrics = train_step(model, obs, out_state, optimizers)
    torch.manual_seed(1)
    _, blank_metrics = train_step(blank_model, obs, blank_model.init_state(B), blank_optimizers)
    assert next_state[0].shape == (B * I, conf.deter_dim) and torch.isfinite(metrics['loss_model'])
    assert not torch.isclose(metrics['loss_model'], blank_metrics['loss_model'])


@pytest.mark.parametrize('image_loss', ['categorical', 'mse'])
def test_policy_and_dream(image_loss):
    conf = config(image_loss=image_loss)
    model = Dreamer(conf)
    B = 4
    state = model.init_state(B)
    step = preprocess_step({'image': np.zeros((B, 10, 10), np.uint8), 'action': np.zeros(B, int),
                            'reset': np.ones(B, bool)}, conf)
    action, state, metrics = model.policy(step, state)
    assert action.shape == (B, conf.action_dim) and torch.equal(action.sum(-1), torch.ones(B))
    assert state[0].shape == (B, conf.deter_dim)
    assert metrics['policy_value'].shape == metrics['policy_entropy'].shape == (B,)
    T = 6
    obs = make_obs(conf, T, 2)
    for use_actor in (False, True):
        dream = model.dream(obs, model.init_state(2), context=2, use_actor=use_actor)
        assert dream['image_pred'].shape == obs['image'].shape
        if image_loss == 'categorical':  # class probabilities; under mse the decoder's one-hot estimate
            assert torch.allclose(dream['image_pred'].sum(2), torch.ones(T, 2, 10, 10), atol=1e-5)
        assert dream['reward_pred'].shape == dream['terminal_pred'].shape == (T, 2)
        assert dream['observed'].tolist() == [True, True, False, False, False, False]
    assert torch.equal(dream['action'][:2], obs['action'][:2])


def test_wm_only_mode_skips_imagination():
    conf = config()
    model = Dreamer(conf, wm_only=True)
    obs = make_obs(conf, 4, 2)
    optimizers = init_optimizers(model, conf)
    before = [p.clone() for p in model.ac.parameters()]
    _, metrics = train_step(model, obs, model.init_state(2), optimizers)
    assert 'loss_actor' not in metrics and [k for k in metrics if k.startswith('grad_norm')] == ['grad_norm_wm']
    assert all(torch.equal(a, b) for a, b in zip(before, model.ac.parameters()))
    assert int(model.ac.train_steps) == 0
