"""An action that needs a package only the plugin's requirements.txt provides."""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction
from synapse_sdk.runtime import current_context


class ColoredParams(BaseModel):
    text: str = "hello"
    num_cpus: float | None = None
    resources: dict[str, float] | None = None


class ColoredAction(BaseAction[ColoredParams]):
    """Color ``text`` with termcolor and return termcolor's version and where it came from.

    termcolor is imported inside ``execute``: the server imports this module too (to describe
    the action's params), and the server's environment does not have the plugin's
    requirements.
    """

    def execute(self) -> dict[str, Any]:
        import termcolor

        return {
            "version": version("termcolor"),
            "module_file": termcolor.__file__,
            "colored": termcolor.colored(self.params.text, "red", force_color=True),
            "pid": os.getpid(),
            "mode": current_context().mode,
        }
