import subprocess
import sys

import pytest
import yaml

from pydreamer.config import (DEFAULTS_FILE, PROJECT_ROOT, ConfigError, Rule, build_config, load_rules, load_sections,
                              parse_args)


def test_sections_merge_left_to_right():
    sections = load_sections()
    conf = build_config(['defaults', 'minatar', 'debug'])
    assert conf.deter_dim == sections['debug']['deter_dim']        # debug overrides minatar
    assert conf.image_encoder == 'cnn_minatar'                      # minatar overrides defaults
    assert conf.gamma == sections['minatar']['gamma']
    assert conf.batch_length == sections['debug']['batch_length']
    flipped = build_config(['defaults', 'debug', 'minatar'])
    assert flipped.deter_dim == sections['minatar']['deter_dim']    # later wins


def test_configs_accepts_spaces_and_commas():
    a = parse_args(['--configs', 'defaults', 'minatar', 'debug'])
    b = parse_args(['--configs', 'defaults,minatar,debug'])
    c = parse_args(['--configs=defaults,minatar', '--configs', 'debug'])
    assert a == b == c


def test_upstream_defaults_are_kept():
    d = build_config(['defaults'])
    assert (d.batch_size, d.batch_length, d.deter_dim, d.hidden_dim) == (32, 48, 2048, 1000)
    assert (d.stoch_dim, d.stoch_discrete, d.kl_balance, d.kl_weight) == (32, 32, 0.8, 1.0)
    assert (d.gamma, d.lambda_gae, d.entropy, d.imag_horizon, d.target_interval) == (0.995, 0.95, 0.003, 15, 100)
    assert (d.adam_lr, d.adam_lr_actor, d.adam_lr_critic, d.adam_eps) == (3e-4, 1e-4, 1e-4, 1e-5)
    assert d.buffer_size == 10_000_000 and d.device == 'auto'
    m = build_config(['defaults', 'minatar'])
    assert (m.deter_dim, m.hidden_dim, m.cnn_depth, m.image_channels, m.action_dim) == (256, 200, 8, 11, 6)
    assert (m.kl_weight, m.gamma, m.entropy, m.clip_rewards, m.env_time_limit) == (0.1, 0.99, 0.001, 'tanh', 27_000)
    a = build_config(['defaults', 'atari'])
    assert (a.deter_dim, a.action_dim, a.env_action_repeat, a.image_size) == (1024, 18, 4, 64)


@pytest.mark.parametrize('key,raw,expected', [
    ('n_steps', '1_000_000', 1_000_000),
    ('n_steps', '1e6', 1_000_000),
    ('n_steps', '2000.0', 2000),
    ('adam_lr', '1e-4', 1e-4),
    ('adam_lr', '3', 3.0),
    ('keep_state', 'no', False),
    ('keep_state', 'yes', True),
    ('keep_state', '0', False),
    ('keep_state', 'True', True),
    ('device', 'cpu', 'cpu'),
    ('run_name', '123', '123'),
    ('amp', 'true', 'true'),
    ('amp', 'no', 'false'),
])
def test_override_types(key, raw, expected):
    value = getattr(parse_args(['--configs', 'defaults', f'--{key}', raw]), key)
    assert value == expected and type(value) is type(expected)


def test_inline_equals_form():
    assert parse_args(['--n_steps=5']).n_steps == 5


def test_empty_default_takes_its_declared_types():
    conf = parse_args(['--env_id', '[MinAtar/Breakout-v0, MinAtar/Seaquest-v0]'])
    assert conf.env_id == ['MinAtar/Breakout-v0', 'MinAtar/Seaquest-v0']
    assert parse_args(['--env_id', 'MinAtar/Breakout-v0']).env_id == 'MinAtar/Breakout-v0'
    assert parse_args(['--dqn_dir', '{MinAtar/Breakout-v0: some/folder}']).dqn_dir == {'MinAtar/Breakout-v0': 'some/folder'}
    with pytest.raises(ConfigError, match=r"Config key env_id is \{'MinAtar/Breakout-v0': 'some/folder'\}; "
                                          r"expected a string or a list\."):
        parse_args(['--env_id', '{MinAtar/Breakout-v0: some/folder}'])


def test_every_empty_default_declares_its_type():
    rules = load_rules()
    untyped = [key for key, value in load_sections()['defaults'].items() if value is None and not rules[key].types]
    assert not untyped


@pytest.mark.parametrize('key,raw,expected', [
    ('clip_rewards', 'clip', "Config key clip_rewards is 'clip'; expected one of none, tanh, log1p, sign."),
    ('n_steps', '-5', 'Config key n_steps is -5; expected at least 0.'),
    ('split_fraction', '1.5', 'Config key split_fraction is 1.5; expected between 0 and 1.'),
    ('run_tags', '[a, b]', "Config key run_tags is ['a', 'b']; expected a map."),
    ('n_steps', 'null', "Bad value None for config key 'n_steps': expected an int."),
])
def test_annotated_rules_refuse_a_value_with_one_sentence(key, raw, expected):
    with pytest.raises(ConfigError) as e:
        parse_args([f'--{key}', raw])
    assert str(e.value) == expected


def test_replace_checks_the_rules_too():
    with pytest.raises(ConfigError, match='Config key save_interval is 0; expected at least 1.'):
        build_config(['defaults']).replace(save_interval=0)


def test_annotations_are_parsed_from_the_defaults_comments(tmp_path):
    path = tmp_path / 'defaults.yaml'
    path.write_text('defaults:\n'
                    '  mode: a        # {a, b} the mode\n'
                    '  count: 3       # >= 1: how many\n'
                    '  share: 0.5     # 0..1\n'
                    '  folders:       # <map | list> where\n'
                    '  plain: 2       # no annotation, >= 5 later in the comment\n'
                    'other:\n'
                    '  mode: b        # {c} a comment outside defaults declares nothing\n')
    assert load_rules(path) == {'mode': Rule(choices=('a', 'b')), 'count': Rule(low=1), 'share': Rule(low=0, high=1),
                                'folders': Rule(types=('map', 'list'))}
    assert build_config(['defaults', 'other'], path=path).mode == 'b'


def test_declared_choices_are_the_ones_the_code_implements():
    from pydreamer.models.decoders import IMAGE_LOSSES
    from pydreamer.models.rssm import GRUStack
    from pydreamer.policies import POLICY_NAMES
    from pydreamer.pretrained import LOAD_PARTS
    rules = load_rules()
    assert rules['image_loss'].choices == IMAGE_LOSSES
    assert set(rules['gru_type'].choices) == set(GRUStack.CELLS)
    assert rules['policy_main'].choices == rules['generator_prefill_policy'].choices == POLICY_NAMES
    assert set(rules['load_parts'].choices) == set(LOAD_PARTS)


def test_unknown_key_names_closest_known_key():
    with pytest.raises(ConfigError, match=r"Unknown config key 'n_stepz' \(did you mean 'n_steps'\?\)"):
        parse_args(['--n_stepz', '3'])


def test_unknown_key_in_a_section_is_an_error(tmp_path):
    sections = load_sections()
    sections['mine'] = {'batch_sise': 4}
    path = tmp_path / 'defaults.yaml'
    path.write_text(yaml.safe_dump(sections))
    with pytest.raises(ConfigError, match=r"'batch_sise' in section 'mine' \(did you mean 'batch_size'\?\)"):
        build_config(['defaults', 'mine'], path=path)


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"Unknown config section 'minatr' \(did you mean 'minatar'\?\)"):
        parse_args(['--configs', 'defaults', 'minatr'])


@pytest.mark.parametrize('key,raw,expected', [
    ('n_steps', 'abc', 'an int'),
    ('n_steps', '1.5', 'an int'),
    ('adam_lr', 'fast', 'a float'),
    ('keep_state', 'maybe', 'a bool'),
    ('device', '[1, 2]', 'a string'),
])
def test_bad_value_names_key_value_and_type(key, raw, expected):
    with pytest.raises(ConfigError) as e:
        parse_args([f'--{key}', raw])
    message = str(e.value)
    assert repr(key) in message and expected in message and 'Bad value' in message


def test_config_is_immutable_and_replace_is_checked():
    conf = build_config(['defaults', 'debug'])
    with pytest.raises(AttributeError):
        conf.n_steps = 3
    assert conf.replace(n_steps='7').n_steps == 7
    with pytest.raises(ConfigError, match='Unknown config key'):
        conf.replace(nsteps=7)


def test_config_found_from_any_working_directory(tmp_path):
    assert DEFAULTS_FILE == PROJECT_ROOT / 'config' / 'defaults.yaml'
    code = 'from pydreamer.config import parse_args; print(parse_args(["--configs", "defaults", "minatar"]).deter_dim)'
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True,
                         env={'PYTHONPATH': str(PROJECT_ROOT)}, check=True)
    assert out.stdout.strip() == '256'


def test_every_section_only_sets_known_keys():
    sections = load_sections()
    known = set(sections['defaults'])
    for name, section in sections.items():
        assert set(section) <= known, f'{name} sets unknown keys {sorted(set(section) - known)}'
        conf = build_config(['defaults', name])
        for key, value in section.items():
            default = sections['defaults'][key]
            assert conf[key] == value, (name, key)
            # typed like its default (`1` for a float key is 1.0); a None default takes any type
            assert default is None or type(conf[key]) is type(default), (name, key)

