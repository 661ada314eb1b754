"""Checks on the folders a command is given."""

from __future__ import annotations

from pathlib import Path


def check_output_is_not_input(input_path: str | Path, output: str | Path, *, input_key: str = "input",
                              output_key: str = "output") -> None:
    """Refuse an output folder that is the input's folder (the input itself when it is a folder, else the
    folder holding its files): a job would take its own output for input, skip every image as already done,
    or write shards over input shards of the same name.

    Raises:
        ValueError: naming both keys and the folder.
    """
    source = Path(input_path)
    folder = source if source.is_dir() else source.parent
    if Path(output).resolve() == folder.resolve():
        raise ValueError(f"{output_key}={output} is the folder of {input_key}={input_path}: write the output to "
                         "a folder of its own")


def folder_name(path: str | Path) -> str:
    """The name of the folder ``path`` ends in, after resolving it (``outputs/engine`` -> ``engine``): how an engine
    run directory is named on wandb (its group), and the config resolver ``${folder_name:${engine_dir}}``."""
    return Path(path).resolve().name
