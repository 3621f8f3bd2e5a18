"""`synapse plugin run` against a server from inside a plugin's directory (the default --plugin .).

The reference document runs ``synapse plugin run inference --mode job --params ...`` with no
--plugin: the current directory is the plugin, and the server knows it by its code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SYNAPSE = str(Path(sys.executable).with_name("synapse"))
TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy"


def _synapse(*args: str, cwd: Path, server: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    env["SYNAPSE_SERVER"] = server
    return subprocess.run(
        [SYNAPSE, *args], capture_output=True, text=True, timeout=90, cwd=cwd, env=env
    )


def test_the_plugin_directory_stands_for_its_code(platform_server: Any) -> None:
    done = _synapse(
        "plugin", "run", "quick", "--params", '{"count": 1, "label": "here"}', "--no-progress",
        cwd=TOY, server=platform_server.address,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"label": "here", "count": 1}
    # An explicit directory path works the same way.
    done = _synapse(
        "plugin", "run", "quick", "--plugin", str(TOY), "--params", '{"count": 0, "label": "p"}',
        "--no-progress", cwd=TOY.parent, server=platform_server.address,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "p"


def test_outside_a_plugin_directory_the_code_is_required(
    platform_server: Any, tmp_path: Path
) -> None:
    done = _synapse("plugin", "run", "quick", cwd=tmp_path, server=platform_server.address)
    assert done.returncode == 2
    assert "no config.yaml: pass --plugin CODE" in done.stderr
    (tmp_path / "config.yaml").write_text("name: no code here\n")
    done = _synapse("plugin", "run", "quick", cwd=tmp_path, server=platform_server.address)
    assert done.returncode == 2
    assert "field 'code' is missing" in done.stderr
