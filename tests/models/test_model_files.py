"""The example plugins' model loader: every format loads and matches the builder; no unpickling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.plugins import LocalModelBackend, load_plugin, run_action
from synapse_sdk.runtime import RunContext

torch = pytest.importorskip("torch")
from examples.models import (  # noqa: E402
    MODEL_FORMATS,
    WEIGHTS_FILE,
    MLPConfig,
    build_mlp,
    build_model_dir,
    reference_outputs,
)

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "examples" / "plugins"
BATCH_PLUGIN = PLUGINS / "batch_inference"
LOADER_COPIES = [
    BATCH_PLUGIN / "batch_plugin" / "_model_files.py",
    PLUGINS / "torch_serve" / "serve_plugin" / "_model_files.py",
]
INPUTS = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [-2.0, 4.0, 0.25]]
#: torch 2.13 warns on every TorchScript call; only the test of the legacy format makes them.
TORCHSCRIPT_DEPRECATED = r"ignore:`torch\.jit\.(script|save|load)` is deprecated:DeprecationWarning"


@pytest.fixture(scope="module")
def model_files() -> Any:
    """The batch plugin's ``_model_files`` module, imported the way the platform imports it."""
    return load_plugin(BATCH_PLUGIN).import_module("batch_plugin._model_files")


def _torchscript_dir(directory: Path, config: MLPConfig) -> Path:
    directory.mkdir(parents=True)
    torch.jit.save(torch.jit.script(build_mlp(config)), str(directory / "model.pt"))
    return directory


def _assert_predicts(model: Any, inputs: list[Any], expected: list[Any]) -> None:
    with torch.no_grad():
        got = model(torch.tensor(inputs))
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-6)


def test_the_example_plugins_carry_the_same_loader() -> None:
    first, second = (path.read_bytes() for path in LOADER_COPIES)
    assert first == second, "edit both copies of _model_files.py alike"


@pytest.mark.parametrize("model_format", MODEL_FORMATS)
def test_the_build_command_runs_without_warnings(tmp_path: Path, model_format: str) -> None:
    # The command scripts/demo and the README give; -W error turns any warning (such as
    # runpy's about a module imported by its package before running) into a failure.
    out = tmp_path / "built"
    command = [sys.executable, "-W", "error", "-m", "examples.models.build", str(out)]
    done = subprocess.run(
        [*command, "--hidden", "8", "--format", model_format],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["hidden"] == 8
    assert reference_outputs(out, INPUTS) == reference_outputs(
        build_model_dir(tmp_path / "in-process", MLPConfig(hidden=8)), INPUTS
    )


@pytest.mark.parametrize("model_format", MODEL_FORMATS)
def test_each_format_loads_and_matches_the_builder(
    model_files: Any, tmp_path: Path, model_format: str
) -> None:
    config = MLPConfig(hidden=8, seed=2)
    model_dir = build_model_dir(tmp_path / "m", config, model_format=model_format)
    model = model_files.load_model_dir(model_dir)
    model.eval()  # what the plugins call; an exported program's module refuses it by itself
    expected = reference_outputs(model_dir, INPUTS)
    _assert_predicts(model, INPUTS, expected)
    # One sample, and integers, as the serve example's callers send them.
    _assert_predicts(model, INPUTS[0], expected[0])
    _assert_predicts(model, [1, 2, 3], expected[0])


@pytest.mark.filterwarnings(TORCHSCRIPT_DEPRECATED)
def test_a_torchscript_model_still_loads_and_runs(model_files: Any, tmp_path: Path) -> None:
    config = MLPConfig(hidden=8, seed=5)
    legacy = _torchscript_dir(tmp_path / "legacy", config)
    expected = reference_outputs(build_model_dir(tmp_path / "same", config), INPUTS)
    _assert_predicts(model_files.load_model_dir(legacy), INPUTS, expected)
    # And through the example action, as a registered model directory.
    plugin = load_plugin(BATCH_PLUGIN)
    (tmp_path / "models").mkdir()
    legacy.rename(tmp_path / "models" / "3")
    result = run_action(
        plugin.get_action_class("batch_inference"),
        {"model_id": 3, "inputs": [{"data": x} for x in INPUTS], "batch_size": 2},
        RunContext(model_backend=LocalModelBackend(root=tmp_path / "models")),
    )
    got = [row["prediction"] for row in result["results"]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-6)


class _RunsCodeWhenUnpickled:
    """Unpickling this object creates ``marker``: what a hostile pickled model could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def test_a_pickled_file_is_refused_without_unpickling_it(model_files: Any, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    torch.save(_RunsCodeWhenUnpickled(marker), model_dir / "model.pt")
    with pytest.raises(model_files.ModelFormatError, match=r"not TorchScript.*pickled module"):
        model_files.load_model_dir(model_dir)
    assert not marker.exists()
    # A pickled module is refused the same way.
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), model_dir / "model.pt")
    with pytest.raises(model_files.ModelFormatError, match=r"model\.safetensors.*model\.pt2"):
        model_files.load_model_dir(model_dir)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "needs a config.json"),
        ("{not json", "not valid JSON"),
        ({"architecture": "resnet50"}, "names 'resnet50', not an architecture"),
        ({"architecture": 7}, "names no architecture"),
        ({"architecture": "mlp", "in_features": 3, "hidden": 8}, "positive integers"),
        ({"architecture": "mlp", "in_features": 3, "hidden": -1, "out_features": 2}, "positive"),
        # The weights are of a 3-input mlp.
        ({"architecture": "mlp", "in_features": 4, "hidden": 8, "out_features": 2}, "not hold"),
    ],
)
def test_a_state_dict_the_plugin_cannot_build_is_a_clear_error(
    model_files: Any, tmp_path: Path, config: Any, message: str
) -> None:
    model_dir = build_model_dir(tmp_path / "m", MLPConfig(hidden=8))
    if config is None:
        (model_dir / "config.json").unlink()
    else:
        text = config if isinstance(config, str) else json.dumps(config)
        (model_dir / "config.json").write_text(text)
    with pytest.raises(model_files.ModelFormatError, match=message):
        model_files.load_model_dir(model_dir)


def test_truncated_weights_and_an_empty_directory_are_clear_errors(
    model_files: Any, tmp_path: Path
) -> None:
    model_dir = build_model_dir(tmp_path / "m", MLPConfig(hidden=8))
    weights = model_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(model_files.ModelFormatError, match="does not hold the mlp"):
        model_files.load_model_dir(model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_files.ModelFormatError, match="holds none of"):
        model_files.load_model_dir(tmp_path / "empty")
