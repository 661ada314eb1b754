"""What every command shares: its Hydra config inside the package, and ``stage=1`` for a stage's name.

Each command is the ``__main__.py`` of the package whose work it runs, and a console script
(``pyproject.toml``): its ``main()`` calls :func:`run_command` with the function that does the work, or
:func:`run_subcommand` when its first word picks one of several (``sam-import coco``, ``sam-annotate export``).
``--help`` prints the config's ``hydra.help.template``: a usage line, what the command does and its
main options, then the config groups and the config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import hydra
from omegaconf import DictConfig

from sam_engine.stages import STAGES

CONFIG_PATH = "pkg://sam_engine.conf"
"""The configs ship inside the package (``sam_engine/conf``), so an installed wheel finds them."""


def alias_stage_numbers(argv: list[str]) -> list[str]:
    """Let ``stage=1`` stand for ``stage=assisted_manual`` (and 2, 3 likewise).

    Hydra reads ``stage=1`` as an integer, which it refuses as a config-group choice; any other number
    is passed on quoted, so Hydra's error lists the available stages.
    """
    names = {str(entry.number): entry.config for entry in STAGES}
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "stage" and value.isdigit():
            arg = f"{key}={names.get(value, repr(value))}"
        out.append(arg)
    return out


def alias_groups(argv: list[str], aliases: Mapping[str, str]) -> list[str]:
    """Let ``key=choice`` stand for ``group=choice`` where a command keeps a config group under another key
    (the engine's ``data=folder`` is ``engine_data@data=folder``: ``engine_data/folder.yaml`` at ``data``);
    ``key.sub=value`` is left alone."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        prefix = key[: len(key) - len(key.lstrip("+~"))]
        if sep and key.lstrip("+~") in aliases:
            arg = f"{prefix}{aliases[key.lstrip('+~')]}={value}"
        out.append(arg)
    return out


def run_command(task: Callable[[DictConfig], Any], config_name: str,
                group_aliases: Mapping[str, str] | None = None) -> None:
    """Run ``task`` on the config ``conf/<config_name>.yaml`` composed with the command line's overrides
    (``stage=1`` and the ``group_aliases`` rewritten as :func:`alias_stage_numbers` and :func:`alias_groups` say)."""
    argv = alias_stage_numbers(sys.argv[1:])
    sys.argv = [sys.argv[0], *alias_groups(argv, group_aliases or {})]
    hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=config_name)(task)()


def run_subcommand(commands: Mapping[str, tuple[Callable[[DictConfig], Any], str]], usage: str) -> None:
    """``COMMAND key=value ...``: run ``commands[COMMAND]`` (its task and config name) with the rest of the
    command line; without a known COMMAND print ``usage`` (exit 0 for ``--help`` or nothing, else 2)."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command not in commands:
        print(usage, file=sys.stdout if command in (None, "-h", "--help") else sys.stderr)
        sys.exit(0 if command in ("-h", "--help") else 2)
    del sys.argv[1]
    run_command(*commands[command])
