"""Strict, layered configuration.

`config/defaults.yaml` holds named sections. A config is built by merging sections left to right
(`--configs defaults minatar debug`) and then applying `--<key> <value>` overrides. Every key must
exist in the `defaults` section; values are parsed as YAML and checked against the type of the
default, so a typo or a wrong type fails at start-up with one sentence instead of silently
creating a new key or turning a number into a string. The annotation that opens a key's comment
in the `defaults` section (`# {a, b}`, `# >= 0`, `# 0..1`, `# <map>`; the file's header explains
them) says which values the key takes, and every resolved config is checked against it.
"""
from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / 'config' / 'defaults.yaml'
BASE_SECTION = 'defaults'

_TRUE = {'true', 'yes', 'on', '1'}
_FALSE = {'false', 'no', 'off', '0'}


class ConfigError(ValueError):
    """A config section, key or value that cannot be used."""


@dataclass(frozen=True)
class Rule:
    """The values a key takes, from the annotation that opens its comment in `defaults`."""
    choices: tuple[str, ...] = ()
    low: float | None = None  # with `high`, the range of a number
    high: float = math.inf
    types: tuple[str, ...] = ()  # names in _TYPES, for a key whose default is empty

    def problem(self, value: Any) -> str | None:
        """What the value should have been, or None when it is allowed."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            return f'one of {", ".join(self.choices)}'
        if self.types and not isinstance(value, tuple(_TYPES[t] for t in self.types)):
            return ' or '.join(_type_name(_TYPES[t]) for t in self.types)
        if self.low is not None and not self.low <= value <= self.high:
            return f'at least {self.low:g}' if self.high == math.inf else f'between {self.low:g} and {self.high:g}'
        return None


_TYPES = {'str': str, 'list': list, 'map': dict}
# `{a, b}` | `>= n` | `n..m` | `<str | list>`, opening the comment of a key in the defaults section
_ANNOTATION = re.compile(r'\{(?P<choices>[^}]*)\}|>=\s*(?P<low>[-\d.]+)|(?P<from>[-\d.]+)\.\.(?P<to>[-\d.]+)'
                         r'|<(?P<types>[^>]*)>')
_KEY_COMMENT = re.compile(r'\s+(?P<key>\w+):[^#]*#\s*(?P<comment>.*)')
_BARE_KEY = re.compile(r'\s+(?P<key>\w+):[^#]*')
_GROUP = re.compile(r'\s+#\s*---\s*(?P<group>.*)')


class Config(Mapping):
    """An immutable mapping of resolved config values with attribute access."""

    def __init__(self, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                 rules: Mapping[str, Rule] | None = None):
        object.__setattr__(self, '_values', dict(values))
        # The `defaults` section decides the type and the allowed values of a key, also for later
        # `replace` calls.
        object.__setattr__(self, '_defaults', dict(defaults if defaults is not None else values))
        object.__setattr__(self, '_rules', dict(rules or {}))

    def __reduce__(self):
        return Config, (self._values, self._defaults, self._rules)

    def __getattr__(self, key: str) -> Any:
        if key.startswith('__'):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f'Config has no key {key!r}{_suggest(key, self._values)}.') from None

    def __setattr__(self, key, value):
        raise AttributeError('Config is immutable; use Config.replace(key=value).')

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f'Config({self._values!r})'

    def replace(self, **changes: Any) -> 'Config':
        """A copy with some keys changed; the keys must exist and the values are type-checked."""
        values = dict(self._values)
        for key, value in changes.items():
            if key not in values:
                raise ConfigError(f'Unknown config key {key!r}{_suggest(key, values)}.')
            values[key] = coerce(key, value, self._defaults[key])
        check_rules(values, self._rules)
        return Config(values, self._defaults, self._rules)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


def load_sections(path: Path = DEFAULTS_FILE) -> dict[str, dict[str, Any]]:
    try:
        with open(path) as f:
            sections = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f'Config file {path} does not exist.') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'Config file {path} is not valid YAML: {e}') from None
    if not isinstance(sections, dict) or BASE_SECTION not in sections:
        raise ConfigError(f'Config file {path} must map section names to key/value maps, '
                          f'starting with a {BASE_SECTION!r} section.')
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f'Config section {name!r} in {path} must be a map of keys to values.')
    return sections


def build_config(section_names: list[str], overrides: Mapping[str, Any] | None = None,
                 path: Path = DEFAULTS_FILE) -> Config:
    """Merge the named sections onto `defaults`, then apply overrides (already parsed values)."""
    sections = load_sections(path)
    base = sections[BASE_SECTION]
    values = dict(base)
    for name in section_names:
        if name not in sections:
            raise ConfigError(f'Unknown config section {name!r}{_suggest(name, sections)}; '
                              f'sections in {path.name}: {", ".join(sections)}.')
        for key, value in sections[name].items():
            if key not in base:
                raise ConfigError(f'Unknown config key {key!r} in section {name!r}{_suggest(key, base)}.')
            values[key] = coerce(key, value, base[key])
    for key, value in (overrides or {}).items():
        if key not in base:
            raise ConfigError(f'Unknown config key {key!r}{_suggest(key, base)}.')
        values[key] = coerce(key, value, base[key])
    rules = load_rules(path)
    check_rules(values, rules)
    return Config(values, base, rules)


@functools.cache
def load_rules(path: Path = DEFAULTS_FILE) -> dict[str, Rule]:
    """The rules that the annotated comments of the defaults section declare, by key."""
    rules = {}
    for line in _section_lines(path.read_text(), BASE_SECTION):
        match = _KEY_COMMENT.fullmatch(line)
        annotation = match and _ANNOTATION.match(match['comment'])
        if annotation:
            rules[match['key']] = _rule(match['key'], annotation)
    return rules


@dataclass(frozen=True)
class KeyDoc:
    """A key of the defaults section as its line documents it."""
    key: str
    group: str  # the `# --- <group>` line above it
    comment: str


def key_docs(path: Path = DEFAULTS_FILE) -> list[KeyDoc]:
    """Every key of the defaults section in file order, with its group and comment."""
    docs, group = [], ''
    for line in _section_lines(path.read_text(), BASE_SECTION):
        heading = _GROUP.fullmatch(line)
        if heading:
            group = heading['group']
            continue
        match = _KEY_COMMENT.fullmatch(line) or _BARE_KEY.fullmatch(line)
        if match:
            docs.append(KeyDoc(match['key'], group, (match.groupdict().get('comment') or '').strip()))
    return docs


def check_rules(values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    for key, rule in rules.items():
        expected = rule.problem(values[key])
        if expected:
            raise ConfigError(f'Config key {key} is {values[key]!r}; expected {expected}.')


def _section_lines(text: str, section: str) -> list[str]:
    """The indented lines of one top-level section of a YAML file."""
    lines = text.splitlines()
    start = lines.index(f'{section}:') + 1
    end = next((i for i in range(start, len(lines)) if lines[i][:1].strip() and lines[i][0] != '#'), len(lines))
    return lines[start:end]


def _rule(key: str, annotation: re.Match) -> Rule:
    if annotation['choices'] is not None:
        return Rule(choices=tuple(c.strip() for c in annotation['choices'].split(',')))
    if annotation['low'] is not None:
        return Rule(low=float(annotation['low']))
    if annotation['from'] is not None:
        return Rule(low=float(annotation['from']), high=float(annotation['to']))
    types = tuple(t.strip() for t in annotation['types'].split('|'))
    unknown = set(types) - set(_TYPES)
    if unknown:
        raise ConfigError(f'The annotation of config key {key} names the type {sorted(unknown)[0]!r}; '
                          f'expected {", ".join(_TYPES)}.')
    return Rule(types=types)


def parse_args(argv: list[str], default_sections: tuple[str, ...] = (BASE_SECTION,),
               path: Path = DEFAULTS_FILE) -> Config:
    """Build a config from command-line arguments: `--configs a b c` and `--<key> <value>` pairs."""
    section_names: list[str] = []
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith('--') or len(arg) == 2:
            raise ConfigError(f'Unexpected argument {arg!r}; expected --configs <sections> or --<key> <value>.')
        key, eq, inline = arg[2:].partition('=')
        key = key.replace('-', '_')
        if key == 'configs':
            names = [inline] if eq else []
            i += 1
            while not eq and i < len(argv) and not argv[i].startswith('--'):
                names.append(argv[i])
                i += 1
            section_names += [n for name in names for n in name.split(',') if n]
            if not section_names:
                raise ConfigError('--configs needs at least one section name.')
            continue
        if eq:
            raw = inline
            i += 1
        elif i + 1 < len(argv):
            raw = argv[i + 1]
            i += 2
        else:
            raise ConfigError(f'--{key} needs a value.')
        overrides[key] = _parse_yaml_value(key, raw)
    return build_config(section_names or list(default_sections), overrides, path)


def coerce(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of `default`, converting where the meaning is unambiguous."""
    if default is None:
        return value
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _as_float(value)
        if number is not None and math.isfinite(number) and number == int(number):
            return int(number)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = _as_float(value)
        if number is not None:
            return number
    elif expected is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # e.g. `--amp true` for a key whose values are auto/true/false
            return str(value).lower()
        if isinstance(value, (int, float)):
            return str(value)
    elif isinstance(value, expected):
        return value
    raise ConfigError(f'Bad value {value!r} for config key {key!r}: expected {_type_name(expected)}.')


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace('_', ''))
        except ValueError:
            return None
    return None


def _parse_yaml_value(key: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError:
        raise ConfigError(f'Value {raw!r} for --{key} is not valid YAML.') from None


def _type_name(t: type) -> str:
    return {bool: 'a bool (true/false/yes/no/1/0)', int: 'an int', float: 'a float', str: 'a string',
            list: 'a list', dict: 'a map'}.get(t, t.__name__)


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f' (did you mean {close[0]!r}?)' if close else ''
