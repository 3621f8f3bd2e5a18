"""Model artifacts on the SDK side: safe archive handling, the per-machine cache, and the
platform-backed model backend that ``get_model`` / ``download_model`` / ``load_model`` use.
"""

from synapse_sdk.models._archive import (
    ArchiveError,
    ArchiveFormat,
    ArchiveLimitError,
    CorruptArchiveError,
    ExtractionLimits,
    UnsafeArchiveError,
    UnsupportedArchiveError,
    detect_archive_format,
    extract_archive,
    inspect_archive,
    pack_path,
    sha256_file,
)
from synapse_sdk.models._backend import (
    ModelSource,
    PlatformModelBackend,
    WritableBytes,
    parse_model_id,
)
from synapse_sdk.models._cache import ModelCache, ModelIntegrityError, default_cache_dir

__all__ = [
    "ArchiveError",
    "ArchiveFormat",
    "ArchiveLimitError",
    "CorruptArchiveError",
    "ExtractionLimits",
    "ModelCache",
    "ModelIntegrityError",
    "ModelSource",
    "PlatformModelBackend",
    "UnsafeArchiveError",
    "UnsupportedArchiveError",
    "WritableBytes",
    "default_cache_dir",
    "detect_archive_format",
    "extract_archive",
    "inspect_archive",
    "pack_path",
    "parse_model_id",
    "sha256_file",
]
