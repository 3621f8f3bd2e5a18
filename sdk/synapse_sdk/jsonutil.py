"""JSON helpers the SDK uses for results, params and events, public for the platform around it.

* :func:`load_json` / :func:`dump_json`: strict, fast JSON text ↔ plain data (pydantic-core);
  :func:`dump_json_checked` also refuses non-finite floats.
* :func:`is_plain_json` / :func:`to_jsonable`: whether a value is plain JSON data already, and
  the conversion of tensors, numpy values, models, dataclasses, paths and enums to it.
* :func:`gc_paused`: a block in which the cyclic collector waits, for parsing or validating
  large JSON documents (see its docstring for the measured reason).
"""

from synapse_sdk._json import (
    dump_json,
    dump_json_checked,
    gc_paused,
    is_plain_json,
    load_json,
    to_jsonable,
)

__all__ = [
    "dump_json",
    "dump_json_checked",
    "gc_paused",
    "is_plain_json",
    "load_json",
    "to_jsonable",
]
