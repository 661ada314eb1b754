"""Every command's ``--help`` and ``--cfg job`` from the checkout, run as a user runs them; and the stage table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sam_engine.stages import STAGES, stage, step_label

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
"""pyproject.toml's console scripts: {"sam-train": "sam_engine.train.__main__:main", ...}."""
SCRIPT_OF = {target.split(":")[0].removesuffix(".__main__"): name for name, target in SCRIPTS.items()}
"""The console script of each command's module: {"sam_engine.train": "sam-train", ...}."""
FORMATS = ("coco", "sa1b", "folder")
COMMANDS = [
    ["sam_engine.train"],
    ["sam_engine.label"],
    ["sam_engine.engine"],
    ["sam_engine.predict"],
    *(["sam_engine.annotate", command] for command in ("export", "import")),
    ["sam_engine.annotate.web"],
    *(["sam_engine.data.importers", fmt] for fmt in FORMATS),
    ["sam_engine.data.synthetic"],
    ["sam_engine.data.stats"],
    ["sam_engine.onnx_export"],
]


def run_module(args: list[str], cwd) -> subprocess.CompletedProcess:
    """``python -m ARGS`` in ``cwd`` (an empty directory: nothing found beside the command, nothing left behind)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help(tmp_path, command):
    result = run_module([*command, "--help"], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out, out
    first = result.stdout.splitlines()[0]
    assert first.startswith("usage:"), out
    # The usage names the console script and the module form: `usage: sam-import coco ...`, `python -m ...`.
    assert first.startswith(" ".join(["usage:", SCRIPT_OF[command[0]], *command[1:]])), first
    assert f"python -m {' '.join(command)}" in result.stdout, result.stdout
    assert "== Config" in out, out
    assert list(tmp_path.iterdir()) == [], "--help wrote files"


MODEL_COMMANDS = ["sam_engine.train", "sam_engine.label", "sam_engine.engine", "sam_engine.predict",
                  "sam_engine.annotate.web", "sam_engine.onnx_export"]


@pytest.mark.parametrize(("argv", "answer"), [
    *(([module, "--help"], "usage:") for module in MODEL_COMMANDS),
    (["sam_engine.data.synthetic", "--help"], "usage:"), (["sam_engine.data.importers", "coco", "--help"], "usage:"),
    (["sam_engine.data.stats", "--help"], "usage:"), (["sam_engine.data.stats", "max_images=0"], "max_images=0"),
    (["sam_engine.annotate", "export", "--help"], "usage:"), (["sam_engine.annotate", "import", "--help"], "usage:"),
    (["sam_engine.label", "input={val}", "output={tmp}/labelled", "verify=true"], '"missing": [\n  "synthetic-000000"'),
    (["sam_engine.annotate.web", "pool=p", "checkpoint=c", "out_dir=o", "serve.host=0.0.0.0"], "not a loopback"),
    (["sam_engine.train", "stage.max_steps=abc", "engine_dir={tmp}"], "stage.max_steps='abc': expected an integer"),
])
def test_help_and_checks_that_need_no_model_load_no_torch(tmp_path, synthetic_shards, argv, answer):
    """--help, config errors and reading shard manifests answer in a second: the work (torch, Lightning, the
    model) is imported only once there is some."""
    argv = [arg.format(val=synthetic_shards["val"], tmp=tmp_path) for arg in argv]
    probe = (f"import runpy, sys; sys.argv = {argv!r}\n"
             f"try:\n    runpy.run_module({argv[0]!r}, run_name='__main__')\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert answer in result.stdout + result.stderr, result.stdout[-1500:] + result.stderr[-1500:]
    assert result.stdout.splitlines()[-1] == "False", result.stdout[-500:] + result.stderr[-1500:]


def test_every_console_script_has_its_help_tested():
    assert SCRIPT_OF.keys() == {command[0] for command in COMMANDS}, SCRIPTS


def test_importers_help_lists_formats(tmp_path):
    result = run_module(["sam_engine.data.importers", "--help"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("usage:"), result.stdout
    assert all(fmt in first for fmt in FORMATS), first
    assert "Traceback" not in result.stdout + result.stderr


def test_importers_without_format_prints_usage_and_fails(tmp_path):
    result = run_module(["sam_engine.data.importers"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("usage:") and all(fmt in result.stdout for fmt in FORMATS), result.stdout


def test_importers_unknown_format(tmp_path):
    result = run_module(["sam_engine.data.importers", "bogus"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert all(fmt in result.stderr for fmt in FORMATS), result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command, expected, stage_node",
    [
        (["sam_engine.train", "stage=1"], "name: assisted_manual", {"name": "assisted_manual", "number": 1}),
        (["sam_engine.engine", "stage=2"], "number: 2", {"name": "semi_automatic", "number": 2}),
    ],
    ids=["train stage=1", "engine stage=2"],
)
def test_stage_number_on_command_line(tmp_path, command, expected, stage_node):
    result = run_module([*command, "--cfg", "job"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout
    cfg = yaml.safe_load(result.stdout)
    assert {key: cfg["stage"][key] for key in stage_node} == stage_node, cfg["stage"]


def test_stages():
    assert [s.number for s in STAGES] == [1, 2, 3]
    assert stage(1).config == "assisted_manual"
    assert stage(2).config == "semi_automatic"
    assert stage(3).config == "fully_automatic"
    assert step_label(0) == "seed"
    assert step_label(1) == "stage 1"
    assert step_label(2) == "stage 2"
    assert step_label(3) == "stage 3"
    assert step_label(4) == "final"
    with pytest.raises(ValueError, match="stage 5"):
        stage(5)
    with pytest.raises(ValueError):
        step_label(5)


@pytest.mark.parametrize("entry", STAGES, ids=lambda entry: entry.config)
def test_each_stage_has_its_config_file(entry):
    cfg = yaml.safe_load((ROOT / "sam_engine" / "conf" / "stage" / f"{entry.config}.yaml").read_text())
    assert (cfg["name"], cfg["number"]) == (entry.config, entry.number)


@pytest.mark.parametrize(
    "command, overrides, message",
    [("sam_engine.data.synthetic", ["out_dir=o", "num_images=abc"], "num_images='abc': expected an integer >= 0"),
     ("sam_engine.data.synthetic", ["out_dir=o", "+scene.min_objects=many"],
      "scene.min_objects: Value 'many' of type 'str' could not be converted to Integer"),
     ("sam_engine.data.stats", ["sources=s", "out=o", "max_images=0"], "max_images=0: expected an integer >= 1"),
     ("sam_engine.predict", ["num_clicks=-1"], "num_clicks=-1: expected an integer >= 1"),
     ("sam_engine.onnx_export", ["checkpoint=c", "return_single_mask=1"],
      "return_single_mask=1: expected true or false"),
     ("sam_engine.annotate.web", ["pool=p", "checkpoint=c", "out_dir=o", "stage=3"], "stage=3: people annotate in"),
     ("sam_engine.annotate.web", ["pool=p", "checkpoint=c", "out_dir=o", "serve.port=http"],
      "serve.port: Value 'http' of type 'str' could not be converted to Integer"),
     ("sam_engine.annotate.web", ["pool=p", "checkpoint=c", "out_dir=o", "serve.host=0.0.0.0"],
      "host=0.0.0.0: not a loopback address")],
)
def test_a_wrong_value_is_refused_by_key_before_any_work(tmp_path, command, overrides, message):
    result = run_module([command, *overrides], tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] in ([], ["outputs"])  # at most Hydra's log
