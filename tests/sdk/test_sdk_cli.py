"""``synapse plugin run`` through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DOC_PLUGIN_DIR, MODEL_ID

SYNAPSE = Path(sys.executable).parent / "synapse"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYNAPSE), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_run_step_action_prints_result_json(models_root: Path, reference_model: object) -> None:
    params = {"model_id": MODEL_ID, "inputs": [{"input": [1, 2, 3]}, {"input": [3, 2, 1]}]}
    proc = _run(
        "plugin", "run", "inference_steps",
        "--plugin", str(DOC_PLUGIN_DIR),
        "--params", json.dumps(params),
        "--mode", "local",
        "--models-dir", str(models_root),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["processed_count"] == 2
    with torch.no_grad():
        expected = reference_model(torch.tensor([3, 2, 1]).float()).tolist()  # type: ignore[operator]
    assert result["results"][1]["prediction"] == pytest.approx(expected, abs=1e-6)
    # Not a terminal: one line per progress update, ending at 100 percent.
    bars = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert "100.0%" in bars[-1]
    assert any("30.0%" in line and "step load_model" in line for line in bars)
    assert "step 2/2 inference started" in proc.stderr


def test_params_from_file(models_root: Path, tmp_path: Path) -> None:
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"model_id": MODEL_ID, "inputs": [{"tensor": [1, 1, 1]}]}))
    proc = _run(
        "plugin", "run", "inference", "--plugin", str(DOC_PLUGIN_DIR),
        "--params", f"@{params_file}", "--models-dir", str(models_root), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["results"]) == 1
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("args", "code", "reason"),
    [
        (["inference", "--params", '{"model_id": "x", "inputs": []}'], 2, "model_id"),
        (["inference", "--params", "[1]"], 2, "must be a JSON object"),
        (["inference", "--params", "{nope"], 2, "not valid JSON"),
        (["nosuch", "--params", "{}"], 2, "has no action 'nosuch'"),
        (["inference", "--params", '{"model_id": 1, "inputs": []}'], 1, "needs a model backend"),
    ],
)
def test_failures_give_one_line_reason(args: list[str], code: int, reason: str) -> None:
    proc = _run("plugin", "run", *args[:1], "--plugin", str(DOC_PLUGIN_DIR), *args[1:])
    assert proc.returncode == code
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and reason in lines[0], proc.stderr


def test_bad_plugin_config_names_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("code: x\nname: x\nversion: '1'\ncategory: nope\n")
    proc = _run("plugin", "run", "a", "--plugin", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert "config.yaml" in proc.stderr and "'category'" in proc.stderr


def test_unknown_mode_is_usage_error() -> None:
    proc = _run("plugin", "run", "inference", "--plugin", str(DOC_PLUGIN_DIR), "--mode", "ray")
    assert proc.returncode == 2


TOY_PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "toy"


def test_a_second_ctrl_c_in_a_local_run_exits_without_a_traceback() -> None:
    import signal

    proc = subprocess.Popen(
        [str(SYNAPSE), "plugin", "run", "stubborn", "--plugin", str(TOY_PLUGIN)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # The action ignores cancellation (sleeps 60 s) once it has logged "started".
        for line in proc.stderr:
            if "started" in line:
                break
        proc.send_signal(signal.SIGINT)
        for line in proc.stderr:
            if "cancelling" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert rest.strip().splitlines()[-1] == "aborted"


@pytest.mark.parametrize(
    ("config", "field", "said"),
    [
        (
            "actions:\n  a:\n    entrypoint: m:A\n    metod: local\n",
            "actions.a.metod",
            "unknown key 'metod' (did you mean 'method'?); the keys of an action are: "
            "entrypoint, method",
        ),
        (
            "descripton: x\nactions:\n  a:\n    entrypoint: m:A\n",
            "descripton",
            "unknown key 'descripton' (did you mean 'description'?); the keys of a plugin",
        ),
    ],
)
def test_an_unknown_config_key_fails_the_load_naming_it(
    tmp_path: Path, config: str, field: str, said: str
) -> None:
    from synapse_sdk.errors import PluginConfigError
    from synapse_sdk.plugins import load_plugin

    (tmp_path / "config.yaml").write_text(
        "code: x\nname: x\nversion: '1'\ncategory: custom\n" + config
    )
    with pytest.raises(PluginConfigError) as info:
        load_plugin(tmp_path)
    assert info.value.field == field
    assert said in info.value.message
    proc = _run("plugin", "run", "a", "--plugin", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and said in proc.stderr


def test_every_example_and_test_plugin_loads() -> None:
    from synapse_sdk.plugins import load_plugin

    root = Path(__file__).resolve().parents[2]
    configs = sorted((root / "examples").rglob("config.yaml")) + sorted(
        (root / "tests").rglob("config.yaml")
    )
    assert len(configs) >= 10
    for config in configs:
        plugin = load_plugin(config.parent)
        assert plugin.actions, config
