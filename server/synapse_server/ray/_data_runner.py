"""RayDataRunner: a dataset batch job as a Ray Data pipeline (the task and job modes).

The action's code is the same as in local mode (``BaseInferenceAction.map_batches``); only the
runner differs. On Ray the job's worker process (the child the Ray task or actor supervises,
connected to the cluster as a driver) builds one streaming pipeline:

    read (tasks pinned to this node: the dataset file is a local file here)
      -> map_batches on an actor pool (each actor loads the predictor, i.e. the model, once)
      -> iterated here in input order and written by the local runner's RowGroupWriter

so the output is row-aligned with the input and progress is reported from one place, in
order, after each written batch, whichever actor computed it.

Reading. The source is read by our own Ray Data datasource rather than ``read_parquet`` and
friends: its read tasks produce exactly one block per batch (``batch_size`` rows, the last one
shorter), so the actor pool is fed batch by batch (Ray Data hands a whole block to one actor:
a file of one big row group would otherwise be a single block and a single busy actor), and the
predictor sees the same batches as the local runner's, which keeps outputs identical even for
models whose arithmetic depends on the batch's shape. Read tasks run on this node (the file is
only here) and take no CPU of their own: this node's CPUs may all be held by the pool's
actors, and a read task waiting for one of them would stall the pipeline. Each format is
parsed as the local runner parses it, the actors convert batches and check and lay out the
predictor's outputs with the local runner's own helpers, and the writer writes one row group
per batch: the output file is the local run's, byte for byte.

Plugin code in the actors. A plugin's modules live in a synthetic package named after the
directory it was loaded from (see ``synapse_sdk.plugins``); an actor on another node has no
such package. So the predictor travels as a reference (plugin code digest, module path
relative to the plugin package, class name) plus the plugin's packed code in the object store
(``_plugin_package``): each actor unpacks it into its node's plugin cache, loads the plugin
and imports the class from there.

Failures and cancel. A predictor that raises fails the run with its own exception type,
message and traceback (the actor's traceback is chained as the cause). When
``is_cancelled()`` turns true the runner shuts the pipeline down (Ray Data kills the pool's
actors) and raises ``ActionCancelledError``; nothing is committed. Either way the pool's
actors are gone when ``run`` returns or soon after (Ray ends them once their handles go).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from synapse_sdk.datasets import RowGroupWriter

from synapse_server.ray._plugin_package import PluginPackage, materialize_plugin, pack_plugin

__all__ = ["PredictorRef", "RayDataRunner", "plugin_directory"]

logger = logging.getLogger(__name__)

# Prefix of the synthetic packages plugin directories are imported as (synapse_sdk.plugins).
_PLUGIN_PACKAGE_PREFIX = "_synapse_plugin_"
# Batches one read task produces: enough to amortise a task's start, few enough that the
# first batches reach the pool early and that reads spread over the pipeline.
BATCHES_PER_READ_TASK = 8
# How often the driver checks ``is_cancelled`` while it waits for the next batch.
POLL_SECONDS = 0.1
# Batches computed ahead of the writer (held in the object store, not in this process).
_AHEAD = 4


class _RemoteTraceback(Exception):
    """The predictor's traceback as text, chained as the cause of its re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class PredictorFailedError(Exception):
    """Raised in an actor when the predictor raised: carries its exception and traceback.

    ``error`` is the predictor's exception itself when it survives pickling, else None.
    """

    def __init__(
        self, type_name: str, message: str, traceback_text: str, error: BaseException | None
    ) -> None:
        super().__init__(type_name, message, traceback_text, error)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.error = error

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"

    def reraise(self) -> None:
        """Raise the predictor's exception here, its remote traceback chained as the cause."""
        error = self.error
        if error is None:
            error = RuntimeError(f"the predictor raised {self.type_name}: {self.message}")
        raise error from _RemoteTraceback(self.traceback_text)


@dataclass(frozen=True)
class PredictorRef:
    """How an actor finds the predictor class: in a plugin's packed code, or by pickle.

    ``package`` set: the class is ``module``.``qualname`` relative to the plugin package of
    that code; otherwise ``cls`` is the class itself (an importable module or pickled by value).
    """

    qualname: str
    module: str = ""
    package: PluginPackage | None = None
    cls: type | None = None

    @classmethod
    def of(cls, predictor: type) -> PredictorRef:
        """The reference of ``predictor``, packing its plugin's code when it comes from one."""
        directory = plugin_directory(predictor)
        if directory is None:
            return cls(qualname=predictor.__qualname__, cls=predictor)
        import ray

        from synapse_server.core._plugin_code import code_digest

        relative = predictor.__module__.partition(".")[2]
        payload = pack_plugin(directory)
        package = PluginPackage(
            sha256=code_digest(directory), size=len(payload), archive=[ray.put(payload)]
        )
        return cls(qualname=predictor.__qualname__, module=relative, package=package)

    def load(self) -> type:
        """The predictor class (in an actor: unpacks and loads the plugin when needed)."""
        if self.package is None:
            assert self.cls is not None
            return self.cls
        from synapse_sdk.plugins import load_plugin

        plugin = load_plugin(materialize_plugin(self.package))
        target: Any = importlib.import_module(
            f"{plugin.module_prefix}.{self.module}" if self.module else plugin.module_prefix
        )
        for part in self.qualname.split("."):
            target = getattr(target, part)
        return target  # type: ignore[no-any-return]


def plugin_directory(predictor: type) -> Path | None:
    """The directory of the plugin ``predictor`` was loaded from; None: not from a plugin."""
    top = predictor.__module__.partition(".")[0]
    if not top.startswith(_PLUGIN_PACKAGE_PREFIX):
        return None
    spec = getattr(sys.modules.get(top), "__spec__", None)
    locations = getattr(spec, "submodule_search_locations", None)
    return Path(locations[0]) if locations else None


# --- reading: one block per batch -------------------------------------------------------


def _rebatch(
    tables: Iterator[pa.Table | pa.RecordBatch], skip: int, rows: int, size: int
) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last one shorter) from ``rows`` rows of ``tables``
    after skipping ``skip`` rows."""
    pending: list[pa.Table] = []
    held = 0
    left = rows
    for piece in tables:
        table = piece if isinstance(piece, pa.Table) else pa.Table.from_batches([piece])
        if skip:
            if table.num_rows <= skip:
                skip -= table.num_rows
                continue
            table = table.slice(skip)
            skip = 0
        if table.num_rows > left:
            table = table.slice(0, left)
        left -= table.num_rows
        pending.append(table)
        held += table.num_rows
        while held >= size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, size).combine_chunks()
            rest = whole.slice(size)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
        if left == 0:
            break
    if held:
        yield pa.concat_tables(pending).combine_chunks()


def _read_parquet(
    path: str, columns: list[str] | None, start: int, stop: int, size: int
) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(path)
    groups: list[int] = []
    first_row = None
    offset = 0
    for index in range(parquet.metadata.num_row_groups):
        count = parquet.metadata.row_group(index).num_rows
        if offset + count > start and offset < stop:
            groups.append(index)
            if first_row is None:
                first_row = offset
        offset += count
    if not groups:
        return
    assert first_row is not None
    batches = parquet.iter_batches(batch_size=size, row_groups=groups, columns=columns)
    yield from _rebatch(batches, start - first_row, stop - start, size)


def _read_npy(path: str, column: str, start: int, stop: int, size: int) -> Iterator[pa.Table]:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    for begin in range(start, stop, size):
        chunk = np.ascontiguousarray(array[begin : min(begin + size, stop)])
        # The local runner's layout: rows of n-D arrays as fixed-size lists of their values.
        if chunk.ndim == 1:
            values = pa.array(chunk)
        else:
            flat = chunk.reshape(chunk.shape[0], -1)
            values = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        yield pa.table({column: values})


def _read_jsonl(
    path: str, columns: list[str] | None, begin: int, end: int, size: int
) -> Iterator[pa.Table]:
    # Parsed as the local runner parses it (json.loads, then Arrow types inferred per batch
    # from the Python values): the same batches give the same column types, so the outputs
    # are identical. (pyarrow's JSON reader infers differently, e.g. timestamps from strings.)
    import json

    rows: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        handle.seek(begin)
        position = begin
        for raw in handle:
            if position >= end:
                break
            position += len(raw)
            if not raw.strip():
                continue
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(f"{path}: a line is not a JSON object")
            rows.append(row)
            if len(rows) == size:
                yield _jsonl_table(rows, columns)
                rows = []
    if rows:
        yield _jsonl_table(rows, columns)


def _jsonl_table(rows: list[dict[str, Any]], columns: list[str] | None) -> pa.Table:
    table = pa.Table.from_pylist(rows)
    return table.select(columns) if columns is not None else table


def _jsonl_offsets(path: str, every: int) -> list[int]:
    """Byte offsets of lines 0, every, 2*every, ... and the file's end (blank lines skipped
    as the local runner skips them)."""
    offsets = [0]
    line = 0
    position = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                if line and line % every == 0:
                    offsets.append(position)
                line += 1
            position += len(raw)
    offsets.append(position)
    return offsets


def _datasource_class() -> type:
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class _BatchAlignedDatasource(Datasource):  # type: ignore[misc]
        """Reads a dataset file as one block per batch (see the module's docstring)."""

        def __init__(
            self,
            path: str,
            fmt: str,
            num_rows: int,
            columns: list[str] | None,
            npy_column: str,
            batch_size: int,
        ) -> None:
            self._path = path
            self._format = fmt
            self._rows = num_rows
            self._columns = columns
            self._npy_column = npy_column
            self._size = batch_size

        def estimate_inmemory_data_size(self) -> int | None:
            # No estimate: Ray Data would split the read tasks' blocks to match it, and the
            # blocks must stay one per batch.
            return None

        @property
        def supports_distributed_reads(self) -> bool:
            # The file is a local file of this node: Ray Data runs the reads on the node of
            # the driver (this process) then.
            return False

        def get_name(self) -> str:
            return f"Dataset{self._format.capitalize()}"

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            span = self._size * BATCHES_PER_READ_TASK
            starts = list(range(0, self._rows, span))
            offsets = _jsonl_offsets(self._path, span) if self._format == "jsonl" else []
            tasks = []
            for index, start in enumerate(starts):
                stop = min(start + span, self._rows)
                path, columns, size = self._path, self._columns, self._size
                read: Callable[[], Iterator[pa.Table]]
                if self._format == "parquet":
                    read = functools.partial(_read_parquet, path, columns, start, stop, size)
                elif self._format == "npy":
                    read = functools.partial(_read_npy, path, self._npy_column, start, stop, size)
                else:
                    begin, end = offsets[index], offsets[index + 1]
                    read = functools.partial(_read_jsonl, path, columns, begin, end, size)
                metadata = BlockMetadata(
                    num_rows=stop - start, size_bytes=None, exec_stats=None, input_files=(path,)
                )
                tasks.append(ReadTask(read, metadata))
            return tasks

    return _BatchAlignedDatasource


# --- the actors -------------------------------------------------------------------------


class _PredictorActor:
    """The body of each pool actor: loads the predictor once, then maps batch after batch."""

    def __init__(
        self,
        ref: PredictorRef,
        kwargs: Mapping[str, Any],
        batch_format: str,
        columns: Sequence[str] | None,
        carry: Sequence[str],
    ) -> None:
        try:
            predictor_cls = ref.load()
            self._predictor = predictor_cls(**dict(kwargs))
        except Exception as exc:
            raise _failure(exc) from None
        self._format = batch_format
        self._columns = list(columns) if columns is not None else None
        self._carry = tuple(carry)

    def __call__(self, table: pa.Table) -> pa.Table:
        from synapse_sdk.datasets import build_output_batch, convert_batch

        batch = _record_batch(table)
        feed = batch.select(self._columns) if self._columns is not None else batch
        try:
            outputs = self._predictor(convert_batch(feed, self._format))  # type: ignore[arg-type]
            # The local runner's own conversion and checks: the same output, the same errors.
            result = build_output_batch(batch, self._carry, outputs)
        except Exception as exc:
            raise _failure(exc) from None
        return pa.Table.from_batches([result])


def _record_batch(table: pa.Table) -> pa.RecordBatch:
    """``table``'s rows as one record batch (a block is one batch, maybe in several chunks)."""
    table = table.combine_chunks()
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_arrays(
        [column.combine_chunks() for column in table.columns], schema=table.schema
    )


def _failure(exc: BaseException) -> PredictorFailedError:
    text = "".join(traceback.format_exception(exc))
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        error: BaseException | None = exc.with_traceback(None)
    except Exception:
        error = None
    return PredictorFailedError(name, str(exc), text, error)


# --- the runner -------------------------------------------------------------------------


@dataclass
class RayDataRunner:
    """BatchRunner on Ray Data (see the module's docstring); the worker installs it on Ray.

    ``runtime_env`` is given to the pool's actors; ``plugin_environment`` (job mode) adds the
    predictor's plugin's own environment (its ``requirements.txt``, as the job's actor has it).
    ``address`` is the cluster to connect to when this process is not connected yet (None:
    ``RAY_ADDRESS``).
    """

    runtime_env: Mapping[str, Any] | None = None
    plugin_environment: bool = False
    address: str | None = None
    poll_seconds: float = POLL_SECONDS
    #: Seconds per stage of the last run (read+map is what the pool computed meanwhile).
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self, spec: Any, on_batch: Callable[[int], None], is_cancelled: Callable[[], bool]
    ) -> Any:
        """Run ``spec`` (a ``synapse_sdk.datasets.BatchSpec``); see ``BatchRunner.run``."""
        import ray
        from synapse_sdk.datasets import BatchResult

        source = spec.source
        _check_spec(spec)
        if source.num_rows == 0:
            # Nothing to map: the local runner's empty output (its carried columns, no rows).
            with pq.ParquetWriter(
                spec.sink.path, pa.schema([(name, pa.null()) for name in spec.carry_columns])
            ):
                pass
            spec.sink.commit(0)
            return BatchResult(output=spec.sink.name, rows=0, batches=0)
        if not ray.is_initialized():
            ray.init(
                address=self.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False
            )
        started = time.perf_counter()
        dataset = self._dataset(spec)
        # Started here and consumed in a thread: the first output may be long in coming (the
        # pool's actors start and load the model), and a cancel must be noticed meanwhile.
        executor, bundles = _start(dataset)
        consumer = _Consumer(bundles)
        del bundles
        self.timings = {"plan": time.perf_counter() - started}
        rows = batches = 0
        write_seconds = 0.0
        # The local runner's writer: the same row groups, so the same file byte for byte.
        writer = RowGroupWriter(spec.sink.path)
        error: BaseException | None = None
        try:
            # Output blocks are cut back into the input's batches whatever their sizes (the
            # pool may merge or split its outputs), as the local runner's batches, and
            # progress is reported after each batch.
            for piece in _batches_of(consumer.tables(is_cancelled, self.poll_seconds), spec):
                began = time.perf_counter()
                writer.write(piece)
                rows += piece.num_rows
                batches += 1
                write_seconds += time.perf_counter() - began
                on_batch(rows)
            writer.close(pa.schema([(name, pa.null()) for name in spec.carry_columns]))
        except BaseException as exc:
            writer.abort()
            error = exc  # raised below, once the pipeline and its actors are down
        # Kills the pool's actors (a cancel, an error in this process) unless Ray Data has
        # already shut the pipeline down itself (a failed batch).
        executor.shutdown(force=True)
        if error is not None:
            consumer.join()
            failure = _predictor_failure(error)
            del dataset, executor, consumer
            if failure is not None:
                error = None
            # A pipeline that failed by itself releases its actors by dropping their handles,
            # some of which sit in reference cycles (with the failure's traceback): collect
            # them now, so the actors end now and not at some later collection.
            gc.collect()
            if failure is not None:
                failure.reraise()
            assert error is not None
            raise error
        if rows != source.num_rows:
            raise RuntimeError(
                f"the pipeline produced {rows} rows for {source.num_rows} input rows"
            )
        spec.sink.commit(rows)
        self.timings["total"] = time.perf_counter() - started
        self.timings["write"] = write_seconds
        return BatchResult(output=spec.sink.name, rows=rows, batches=batches)

    def _runtime_env(self, predictor: type) -> dict[str, Any] | None:
        env = dict(self.runtime_env or {})
        directory = plugin_directory(predictor) if self.plugin_environment else None
        if directory is not None:
            from synapse_server.ray._executors import RayJobExecutor

            env.update(RayJobExecutor.runtime_env(directory))
        return env or None

    def _dataset(self, spec: Any) -> Any:
        import ray
        from ray.data import ActorPoolStrategy

        source = spec.source
        columns = (
            None
            if spec.columns is None
            else list(dict.fromkeys([*spec.carry_columns, *spec.columns]))
        )
        npy_column = source.columns[0] if source.columns else "data"
        datasource = _datasource_class()(
            source.path, source.format, source.num_rows, columns, npy_column, spec.batch_size
        )
        span = spec.batch_size * BATCHES_PER_READ_TASK
        dataset = ray.data.read_datasource(
            datasource,
            num_cpus=0,
            # Exactly the read tasks' own blocks: with fewer blocks than it wants, Ray Data
            # splits every block into pieces, and a batch would no longer be one block.
            override_num_blocks=-(-source.num_rows // span),
        )
        dataset = dataset.map_batches(
            _PredictorActor,
            fn_constructor_kwargs={
                "ref": PredictorRef.of(spec.predictor),
                "kwargs": dict(spec.predictor_kwargs),
                "batch_format": spec.batch_format,
                "columns": spec.columns,
                "carry": tuple(spec.carry_columns),
            },
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=max(1, int(spec.concurrency))),
            num_cpus=spec.num_cpus,
            num_gpus=spec.num_gpus or None,
            runtime_env=self._runtime_env(spec.predictor),
        )
        context = dataset.context
        context.execution_options.preserve_order = True
        # The predictor's own exception reaches the driver (not Ray Data's UserCodeException,
        # which keeps only its text).
        context.raise_original_map_exception = True
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        return dataset


def _batches_of(tables: Iterator[pa.Table], spec: Any) -> Iterator[pa.Table]:
    """``tables`` (the output in input order) as tables of ``spec.batch_size`` rows (the last
    one shorter), each in one chunk."""
    size = spec.batch_size
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        if table.num_rows == 0:
            continue
        if not pending and table.num_rows == size:
            yield table.combine_chunks()  # the usual case: one block, one batch
            continue
        pending.append(table)
        held += table.num_rows
        while held >= size:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, size).combine_chunks()
            rest = whole.slice(size)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(pending).combine_chunks()


def _check_spec(spec: Any) -> None:
    """The local runner's checks, made before anything starts on the cluster."""
    if spec.batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {spec.batch_size!r}")
    if spec.concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {spec.concurrency!r}")
    if spec.num_cpus < 0 or spec.num_gpus < 0:
        raise ValueError("num_cpus and num_gpus must not be negative")
    available = spec.source.columns
    missing = [c for c in (*(spec.columns or ()), *spec.carry_columns) if c not in available]
    if missing:
        raise ValueError(
            f"columns {missing[:10]} are not in dataset {spec.source.dataset_id} "
            f"(columns: {list(available)[:50]})"
        )


def _always_force_shutdown(executor: Any) -> None:
    """Make every shutdown of ``executor`` kill the pool's actors.

    A pipeline that fails by itself (a batch raised) is shut down by Ray Data without force:
    the pool only drops its actor handles, and the actors (and the CPUs and GPUs they hold)
    end whenever those handles are collected, some of which sit in reference cycles. The
    runner never needs an actor once its pipeline has ended (no lineage to rebuild: the
    output is already written), so each shutdown is made a forced one.
    """
    shutdown = executor.shutdown

    def forced(force: bool = True, exception: Any = None) -> Any:
        return shutdown(True, exception)

    executor.shutdown = forced


def _start(dataset: Any) -> tuple[Any, Iterator[Any]]:
    """Start the pipeline: its executor (to shut it down) and its ordered output bundles.

    (Ray Data's public iterators give no handle to shut a pipeline and its actors down at
    once; these private calls of Ray 2.60 do.)
    """
    executor = dataset._create_executor()
    _always_force_shutdown(executor)
    try:
        bundles = dataset._build_bundle_iterator(executor, preserve_order=True)
    except BaseException:
        executor.shutdown(force=True)
        raise
    return executor, bundles


def _predictor_failure(exc: BaseException) -> PredictorFailedError | None:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, PredictorFailedError):
            return cause
        if isinstance(current, PredictorFailedError):
            return current
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return None


class _Consumer:
    """Pulls the pipeline's output in a thread, so the driver can notice a cancel promptly.

    (Ray Data's iterator blocks until the next batch is there; a slow predictor would delay a
    cancel by a whole batch.)
    """

    _END = object()

    def __init__(self, bundles: Iterator[Any]) -> None:
        self._bundles = bundles
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pull, name="ray-data-consumer", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        import ray

        try:
            for bundle in self._bundles:
                for block_ref in bundle.block_refs:
                    table = ray.get(block_ref)
                    while not self._stop.is_set():
                        try:
                            self._queue.put(table, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
            self._put(self._END)
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def tables(self, is_cancelled: Callable[[], bool], poll_seconds: float) -> Iterator[pa.Table]:
        """The output tables in order; raises ``ActionCancelledError`` once cancelled."""
        from synapse_sdk.errors import ActionCancelledError

        while True:
            if is_cancelled():
                raise ActionCancelledError("batch run cancelled")
            try:
                item = self._queue.get(timeout=poll_seconds)
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def join(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
