"""What every launcher shares: `--help` from the config file, and a user mistake turned into one
sentence and exit code 2."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from pydreamer.checkpoint import CheckpointError
from pydreamer.config import DEFAULTS_FILE, ConfigError, build_config, key_docs, load_sections, parse_args
from pydreamer.envs import EnvError
from pydreamer.launching.processes import USER_ERROR_EXIT, disk_full_error
from pydreamer.logs import configure_logging
from pydreamer.tracking import RunNotFoundError

USER_ERRORS = (ConfigError, EnvError, RunNotFoundError, CheckpointError)


@dataclass(frozen=True)
class Stage:
    """A launcher as its `--help` describes it."""
    name: str                    # the script (`<name>.py`) and the log prefix
    doc: str                     # what it does and its command forms: the script's docstring
    sections: tuple[str, ...]    # the config sections it starts from without --configs
    groups: tuple[str, ...]      # the `# --- <group>` headings of defaults.yaml whose keys it reads (prefixes)

    def help(self, argv: list[str]) -> str:
        """The help text, with the values that `argv` (without -h) resolves to when it is valid."""
        try:
            conf = parse_args(argv, self.sections)
        except ConfigError:
            conf = build_config(list(self.sections))
        lines = [f'usage: python {self.name}.py [--configs <section> ...] [--<key> <value> ...]', '',
                 self.doc.strip(), '',
                 f'Config sections of {DEFAULTS_FILE.name}, merged left to right (default: {" ".join(self.sections)}):',
                 '  ' + ', '.join(load_sections()), '',
                 'Keys this stage reads, with their value under these sections and options, and their comment in '
                 f'{DEFAULTS_FILE.name}:']
        group = None
        for doc in key_docs():
            if not doc.group.startswith(self.groups):
                continue
            if doc.group != group:
                group = doc.group
                lines += ['', group]
            option = f'  --{doc.key} {_shown(conf[doc.key])}'
            if len(option) > 38 and doc.comment:  # a long value gets the comment on a line of its own
                lines += [option, ' ' * 40 + doc.comment]
            else:
                lines.append(f'{option:<39} {doc.comment}'.rstrip())
        return '\n'.join(lines)


def _shown(value: Any) -> str:
    if value is None:
        return '(empty)'
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix('\n...')


def run_cli(main: Callable[[list[str]], int], stage: Stage | str, argv: list[str] | None = None) -> int:
    """Run a launcher's `main`; a `Stage` answers -h / --help from the config file."""
    argv = sys.argv[1:] if argv is None else argv
    if isinstance(stage, Stage) and {'-h', '--help'} & set(argv):
        try:
            print(stage.help([a for a in argv if a not in ('-h', '--help')]))
        except BrokenPipeError:  # `--help | head`
            sys.stdout = None
        return 0
    configure_logging(stage.name if isinstance(stage, Stage) else stage)
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)  # not logged as well: the sentence is said once
        return USER_ERROR_EXIT
    except OSError as e:  # a full disk under the launcher's own writes (the run's config.yaml)
        error = disk_full_error(e)
        if error is None:
            raise
        print(f'error: {error}', file=sys.stderr)
        return USER_ERROR_EXIT
