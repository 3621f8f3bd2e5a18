"""Datasets in a platform job: the :class:`~synapse_sdk.datasets.DatasetResolver` a worker
installs in the run context (local, task and job modes alike).

A reference (an id ``ds-...`` or a name, the newest of that name) is looked up as the job's
tenant through ``DatasetService`` with the job's credential, and the file is downloaded once
(checked against its sha256) into the job's scratch directory, so the runner reads a local
file however far the server is. A worker on the server's own machine (``LOCAL_ARTIFACTS_ENV``
set by the local executor) copies the file from the server's artifact store instead, also
checked against the sha256 the server named, and downloads it when that fails. An output
sink is a Parquet file in the same directory; its ``commit`` uploads it through
``WorkerService.UploadJobOutput``, where the server keeps it staged: it becomes a dataset
only if the job succeeds. A worker on the server's machine names the file in the scratch
directory the server chose for it instead, and the server copies it from there (sending the
bytes when the server refuses). The directory goes with the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from synapse.plugin.v1 import worker_service_pb2, worker_service_pb2_grpc
from synapse_sdk.runtime import PlatformInfo

from synapse_server.core._scratch import JOB_SCRATCH_ENV, LOCAL_ARTIFACTS_ENV, SCRATCH_ENV
from synapse_server.core.artifacts._files import blob_path

if TYPE_CHECKING:
    from synapse_sdk.datasets import DatasetSource

__all__ = ["SCRATCH_ENV", "WorkerDatasets", "WorkerOutputSink"]

logger = logging.getLogger(__name__)

_ID_PREFIX = "ds-"
_UPLOAD_CHUNK = 1 << 20
_EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl", "npy": "npy"}


def _hand_over_refused(exc: grpc.RpcError) -> bool:
    """Whether the server declined to copy a named output file (then its bytes are sent):
    FAILED_PRECONDITION when it has no scratch directory of this job on its machine (a job
    that already ended gets it too, and its upload then fails the same way), or
    INVALID_ARGUMENT naming ``info.local_file`` (a file it will not read). Any other error,
    a bad output name or an invalid file say, is the upload's own."""
    code = exc.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return True
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        return False
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and any(
            violation.field == "info.local_file" for violation in bad_request.field_violations
        ):
            return True
    return False


class WorkerOutputSink:
    """One job output: a Parquet file the runner writes at :attr:`path`, then commits."""

    def __init__(
        self,
        name: str,
        path: Path,
        job_id: str,
        stub: worker_service_pb2_grpc.WorkerServiceStub,
        metadata: Sequence[tuple[str, str]],
        *,
        local: bool = False,
    ) -> None:
        self.name = name
        self.path = str(path)
        self._job_id = job_id
        self._stub = stub
        self._metadata = tuple(metadata)
        self._local = local
        self.committed: int | None = None

    def _requests(self) -> Iterator[worker_service_pb2.UploadJobOutputRequest]:
        yield worker_service_pb2.UploadJobOutputRequest(
            info=worker_service_pb2.JobOutputInfo(job_id=self._job_id, name=self.name)
        )
        with open(self.path, "rb") as fh:
            while data := fh.read(_UPLOAD_CHUNK):
                yield worker_service_pb2.UploadJobOutputRequest(chunk=data)

    def _hand_over(self) -> worker_service_pb2.UploadJobOutputResponse | None:
        """Name the file for the server to copy from the job's scratch directory; None when
        the server will not (then the bytes are sent)."""
        info = worker_service_pb2.JobOutputInfo(
            job_id=self._job_id, name=self.name, local_file=Path(self.path).name
        )
        try:
            return cast(
                worker_service_pb2.UploadJobOutputResponse,
                self._stub.UploadJobOutput(
                    iter([worker_service_pb2.UploadJobOutputRequest(info=info)]),
                    metadata=self._metadata,
                ),
            )
        except grpc.RpcError as exc:
            if not _hand_over_refused(exc):
                raise
            logger.info("output %r: the server did not copy the file, sending it", self.name)
            return None

    def commit(self, num_rows: int) -> None:
        """Upload the finished file as the job's output (kept if the job succeeds)."""
        response = self._hand_over() if self._local else None
        if response is None:
            response = self._stub.UploadJobOutput(self._requests(), metadata=self._metadata)
        if response.output.num_rows != num_rows:
            raise RuntimeError(
                f"output {self.name!r}: the server read {response.output.num_rows} rows, the "
                f"runner wrote {num_rows}"
            )
        self.committed = num_rows
        # The server has its own copy now; the local file would only take disk space.
        Path(self.path).unlink(missing_ok=True)
        logger.info("output %r (%d rows) handed to the server", self.name, num_rows)


class WorkerDatasets:
    """The resolver of one job: reads as the job's tenant, writes staged job outputs.

    ``stub``/``metadata``: the worker's WorkerService stub and credential metadata (for
    output uploads). ``scratch``: the parent directory of the job's own directory.
    """

    def __init__(
        self,
        platform: PlatformInfo,
        job_id: str,
        stub: worker_service_pb2_grpc.WorkerServiceStub,
        metadata: Sequence[tuple[str, str]],
        scratch: str | os.PathLike[str] | None = None,
    ) -> None:
        self._platform = platform
        self._job_id = job_id
        self._stub = stub
        self._metadata = tuple(metadata)
        self._parent = scratch or os.environ.get(SCRATCH_ENV) or None
        self._dir: Path | None = None
        self._client: Any = None
        self._sources: dict[str, DatasetSource] = {}

    def _directory(self) -> Path:
        if self._dir is None:
            exact = os.environ.get(JOB_SCRATCH_ENV)
            if exact:
                # Chosen by whoever launched this worker, who removes it if the worker is
                # killed and cannot (core._scratch).
                path = Path(exact)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir(mode=0o700, exist_ok=True)
                self._dir = path
            else:
                if self._parent is not None:
                    Path(self._parent).mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="synapse-job-", dir=self._parent))
        return self._dir

    def _platform_client(self) -> Any:
        if self._client is None:
            self._client = self._platform.client()
        return self._client

    def resolve(self, ref: str) -> DatasetSource:
        """The dataset ``ref`` names, as a local file (downloaded once per job)."""
        # Imported on first use: a fork server finds synapse_sdk.datasets loaded only when
        # its plugin uses datasets, and then preloads the batch runner (see _zygote).
        from synapse_client import NotFoundError
        from synapse_sdk.datasets import DatasetFormat, DatasetNotFoundError, DatasetSource

        if ref in self._sources:
            return self._sources[ref]
        client = self._platform_client()
        try:
            if ref.startswith(_ID_PREFIX):
                info = client.get_dataset(ref)
            else:
                info = next(iter(client.list_datasets(name=ref, page_size=1)), None)
                if info is None:
                    raise DatasetNotFoundError(ref)
        except NotFoundError:
            raise DatasetNotFoundError(ref) from None
        path = self._directory() / f"{info.sha256}.{_EXTENSIONS.get(info.format, 'data')}"
        if not path.exists() and not _copy_local_artifact(info.sha256, path):
            client.download_dataset(info.id, path)
        source = DatasetSource(
            dataset_id=info.id,
            path=str(path),
            format=cast(DatasetFormat, info.format),
            num_rows=info.num_rows,
            columns=tuple(c.name for c in info.columns),
        )
        self._sources[ref] = source
        logger.info(
            "dataset %s (%s, %d rows) ready at %s", info.id, info.format, info.num_rows, path
        )
        return source

    def open_sink(self, name: str) -> WorkerOutputSink:
        """A fresh sink for output ``name`` (the server checks the name at commit)."""
        # The file is named by a uuid: the output's name is the caller's text.
        directory = self._directory()
        path = directory / f"output-{uuid.uuid4().hex}.parquet"
        # The server can read the file itself when it launched this worker on its machine
        # (the local executor names its artifact store) and chose this directory.
        local = bool(os.environ.get(LOCAL_ARTIFACTS_ENV)) and str(directory) == os.environ.get(
            JOB_SCRATCH_ENV
        )
        return WorkerOutputSink(name, path, self._job_id, self._stub, self._metadata, local=local)

    def close(self) -> None:
        """Close the client and remove the job's directory (datasets and unsent outputs)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _copy_local_artifact(sha256: str, dest: Path) -> bool:
    """Copy the server's stored file ``sha256`` to ``dest``; whether it was.

    Only where the local executor named the store's directory. A copy, not a link: the job
    may write to its scratch files, and the store's must not change. The bytes are hashed on
    the way and must match ``sha256`` (the server's digest for the tenant's dataset); a file
    that is missing, not readable, not a regular file, a symlink or damaged is left to the
    download instead, where the server reports a damaged file as such.
    """
    blobs = os.environ.get(LOCAL_ARTIFACTS_ENV)
    if not blobs:
        return False
    partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        source = blob_path(Path(blobs), sha256)
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as src:
            if not _is_regular(src.fileno()):
                return False
            digest = hashlib.sha256()
            with open(partial, "xb") as out:
                while data := src.read(_UPLOAD_CHUNK):
                    digest.update(data)
                    out.write(data)
        if digest.hexdigest() != sha256:
            logger.warning("the stored file of %s does not match its sha256: downloading", sha256)
            return False
        os.replace(partial, dest)
        return True
    except Exception:  # any failure falls back to the download, which reports real ones
        logger.debug("dataset file %s not copied from the local store", sha256, exc_info=True)
        return False
    finally:
        partial.unlink(missing_ok=True)


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)
