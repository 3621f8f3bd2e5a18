"""Job mode installs a plugin's requirements.txt; task and local modes do not have them.

The ``ray-pip-probe`` plugin's requirements.txt names termcolor, which the platform's own
environment does not have. In job mode Ray's ``pip`` runtime environment builds a virtualenv
with it for the job's actor (from the package index, the first time on each node), so the
action imports it; the same action in task or local mode fails with ModuleNotFoundError.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from ray_modes_support import PlatformServer, events, result_of, run_action
from synapse.plugin.v1 import job_pb2

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

PLUGIN = "ray-pip-probe"
#: Ray builds the virtualenv the first time: cloning this venv and a pip install.
FIRST_BUILD_SECONDS = 360


def test_the_requirement_is_not_in_the_platform_environment() -> None:
    """Precondition of this file: otherwise the isolation below would show nothing."""
    assert importlib.util.find_spec("termcolor") is None, (
        "termcolor is installed in the test environment; ray-pip-probe needs a package the "
        "platform does not install"
    )


def test_job_mode_runs_the_action_with_the_plugins_requirements(
    platform: PlatformServer,
) -> None:
    job = run_action(
        platform, "colored", {"text": "hi", "resources": {"node_a": 0.1}}, plugin=PLUGIN
    )
    assert job.mode == job_pb2.RUN_MODE_JOB, "the action's config.yaml says method: job"
    evs = events(platform, job.id, timeout=FIRST_BUILD_SECONDS)
    result = result_of(evs[-1])
    assert result["mode"] == "job"
    assert result["version"] == "2.4.0"
    assert result["colored"] == "\x1b[31mhi\x1b[0m"
    # Imported from the virtualenv Ray built for the plugin, not from the platform's own.
    module = Path(result["module_file"])
    assert not module.is_relative_to(Path(sys.prefix)), module
    assert "runtime_resources" in module.parts, module


@pytest.mark.parametrize("mode", ["task", "local"])
def test_other_modes_lack_the_plugins_requirements(platform: PlatformServer, mode: str) -> None:
    job = run_action(
        platform,
        "colored",
        {"text": "hi", "resources": {"node_a": 0.1}},
        mode=mode,
        plugin=PLUGIN,
    )
    terminal = events(platform, job.id)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "ModuleNotFoundError", terminal.error
    assert "No module named 'termcolor'" in terminal.error.message, terminal.error.message
