"""RayDataRunner: a dataset batch job as a Ray Data pipeline (the task and job modes).

The action's code is the same as in local mode (``BaseInferenceAction.map_batches``); only the
runner differs. On Ray the job's worker process (the child the Ray task or actor supervises,
connected to the cluster as a driver) builds one streaming pipeline:

    read (tasks pinned to this node: the dataset file is a local file here)
      -> map_batches on an actor pool (each actor loads the predictor, i.e. the model, once)
      -> iterated here in input order and written with one ParquetWriter

so the output is row-aligned with the input and progress is reported from one place, in
order, after each written batch, whichever actor computed it.

Reading. The source is read by our own Ray Data datasource rather than ``read_parquet`` and
friends: its read tasks produce exactly one block per batch (``batch_size`` rows, the last one
shorter), so the actor pool is fed batch by batch (Ray Data hands a whole block to one actor:
a file of one big row group would otherwise be a single block and a single busy actor), and the
predictor sees the same batches as the local runner's, which keeps outputs identical even for
models whose arithmetic depends on the batch's shape. Read tasks run on this node (the file is
only here) and take no CPU of their own: this node's CPUs may all be held by the pool's
actors, and a read task waiting for one of them would stall the pipeline.

Plugin code in the actors. A plugin's modules live in a synthetic package named after the
directory it was loaded from (see ``synapse_sdk.plugins``); an actor on another node has no
such package. So the predictor travels as a reference (plugin code digest, module path
relative to the plugin package, class name) plus the plugin's packed code in the object store
(``_plugin_package``): each actor unpacks it into its node's plugin cache, loads the plugin
and imports the class from there.

Failures and cancel. A predictor that raises fails the run with its own exception type,
message and traceback (the actor's traceback is chained as the cause). When
``is_cancelled()`` turns true the runner shuts the pipeline down (Ray Data kills the pool's
actors) and raises ``ActionCancelledError``; nothing is committed.
"""

from __future__ import annotations

import contextlib
import functools
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

from synapse_server.ray._plugin_package import PluginPackage, materialize_plugin, pack_plugin

__all__ = ["PredictorRef", "RayDataRunner"]

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
        module_name = predictor.__module__
        top, _, relative = module_name.partition(".")
        package_module = sys.modules.get(top)
        locations = getattr(
            getattr(package_module, "__spec__", None), "submodule_search_locations", None
        )
        if not top.startswith(_PLUGIN_PACKAGE_PREFIX) or not locations:
            return cls(qualname=predictor.__qualname__, cls=predictor)
        import ray

        from synapse_server.core._plugin_code import code_digest

        directory = Path(locations[0])
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
        yield pa.table({column: _arrow_array(np.asarray(array[begin : min(begin + size, stop)]))})


def _read_jsonl(
    path: str, columns: list[str] | None, begin: int, end: int, rows: int, size: int
) -> Iterator[pa.Table]:
    import io

    import pyarrow.json as pj

    with open(path, "rb") as handle:
        handle.seek(begin)
        data = handle.read(end - begin)
    table = pj.read_json(io.BytesIO(data))
    if columns is not None:
        table = table.select(columns)
    yield from _rebatch(iter([table]), 0, rows, size)


def _jsonl_offsets(path: str, every: int) -> list[int]:
    """Byte offsets of lines 0, every, 2*every, ... and the file's end (blank lines skipped
    as pyarrow skips them)."""
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


def _arrow_array(values: Any) -> pa.Array:
    """An Arrow column of ``values`` (numpy or torch, 1-D or n-D: n-D as fixed-size lists)."""
    if hasattr(values, "detach") and hasattr(values, "numpy"):
        values = values.detach().cpu().numpy()
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    array = np.asarray(values)
    if array.ndim <= 1:
        return pa.array(array)
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    for width in reversed(array.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, width)
    return flat


def _numpy_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numpy array of an Arrow column (fixed-size lists become extra dimensions)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    shape: list[int] = [len(column)]
    while pa.types.is_fixed_size_list(column.type):
        shape.append(column.type.list_size)
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False).reshape(shape)


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
            return os.path.getsize(self._path)

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
                    read = functools.partial(
                        _read_jsonl, path, columns, begin, end, stop - start, size
                    )
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
        self._carry = list(carry)

    def __call__(self, table: pa.Table) -> pa.Table:
        names = self._columns if self._columns is not None else table.column_names
        try:
            outputs = self._predictor(_to_format(table.select(names), self._format))
            predicted = _to_table(outputs, table.num_rows)
        except Exception as exc:
            raise _failure(exc) from None
        # Carry columns first, then the predictor's (the runner's output layout).
        arrays = [table.column(name) for name in self._carry] + list(predicted.columns)
        return pa.table(arrays, names=self._carry + predicted.column_names)


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


def _to_format(table: pa.Table, batch_format: str) -> Any:
    if batch_format == "pyarrow":
        return table
    if batch_format == "dicts":
        return table.to_pylist()
    arrays = {name: _numpy_column(table.column(name)) for name in table.column_names}
    if batch_format == "torch":
        import torch

        return {
            name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()
        }
    return arrays


def _to_table(outputs: Any, rows: int) -> pa.Table:
    if isinstance(outputs, (pa.Table, pa.RecordBatch)):
        table = outputs if isinstance(outputs, pa.Table) else pa.Table.from_batches([outputs])
    elif isinstance(outputs, Mapping):
        table = pa.table({str(name): _arrow_array(values) for name, values in outputs.items()})
    else:
        raise TypeError(
            "a predictor must return a mapping of column name to values, not "
            f"{type(outputs).__name__}"
        )
    if table.num_rows != rows:
        raise ValueError(f"the predictor returned {table.num_rows} rows for a batch of {rows}")
    return table


# --- the runner -------------------------------------------------------------------------


@dataclass
class RayDataRunner:
    """BatchRunner on Ray Data (see the module's docstring); the worker installs it on Ray.

    ``runtime_env`` is given to the pool's actors (job mode: the plugin's own environment);
    ``address`` is the cluster to connect to when this process is not connected yet (None:
    ``RAY_ADDRESS``).
    """

    runtime_env: Mapping[str, Any] | None = None
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
        from synapse_sdk.errors import ActionCancelledError

        if not ray.is_initialized():
            ray.init(
                address=self.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False
            )
        started = time.perf_counter()
        source = spec.source
        dataset = self._dataset(spec)
        try:
            # Ray Data runs the pipeline up to its first output here: a failure may come now.
            bundles, executor = _start(dataset)
        except Exception as exc:
            failure = _predictor_failure(exc)
            if failure is not None:
                failure.reraise()
            raise
        self.timings = {"plan": time.perf_counter() - started}
        rows = batches = 0
        writer: pq.ParquetWriter | None = None
        consumer = _Consumer(bundles)
        write_seconds = 0.0
        try:
            for table in consumer.tables(is_cancelled, self.poll_seconds):
                # A block holds the outputs of one or more whole batches (the pool's actors
                # merge their outputs): written and reported batch by batch.
                for offset in range(0, table.num_rows, spec.batch_size):
                    began = time.perf_counter()
                    piece = table.slice(offset, spec.batch_size)
                    if writer is None:
                        writer = pq.ParquetWriter(spec.sink.path, piece.schema)
                    writer.write_table(piece)
                    rows += piece.num_rows
                    batches += 1
                    write_seconds += time.perf_counter() - began
                    on_batch(rows)
            if consumer.cancelled:
                raise ActionCancelledError()
        except BaseException as exc:
            executor.shutdown(force=True)
            consumer.join()
            failure = _predictor_failure(exc)
            if failure is not None:
                failure.reraise()
            raise
        finally:
            if writer is not None:
                writer.close()
        executor.shutdown(force=True)
        if writer is None:
            # An empty dataset: an empty file with the columns carried from the input.
            pq.write_table(
                pa.table({name: pa.array([], type=pa.null()) for name in spec.carry_columns}),
                spec.sink.path,
            )
        if rows != source.num_rows:
            raise RuntimeError(
                f"the pipeline produced {rows} rows for {source.num_rows} input rows"
            )
        spec.sink.commit(rows)
        self.timings["total"] = time.perf_counter() - started
        self.timings["write"] = write_seconds
        return BatchResult(output=spec.sink.name, rows=rows, batches=batches)

    def _dataset(self, spec: Any) -> Any:
        import ray
        from ray.data import ActorPoolStrategy
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
        node = ray.get_runtime_context().get_node_id()
        dataset = ray.data.read_datasource(
            datasource,
            num_cpus=0,
            ray_remote_args={
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)
            },
        )
        options: dict[str, Any] = {}
        if self.runtime_env:
            options["runtime_env"] = dict(self.runtime_env)
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
            max_restarts=0,
            max_task_retries=0,
            **options,
        )
        context = dataset.context
        context.execution_options.preserve_order = True
        # The predictor's own exception reaches the driver (not Ray Data's UserCodeException,
        # which keeps only its text).
        context.raise_original_map_exception = True
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        return dataset


def _start(dataset: Any) -> tuple[Iterator[Any], Any]:
    """The pipeline's ordered stream of output bundles and its executor (to shut it down)."""
    bundles, _, executor = dataset._execute_to_iterator()
    return bundles, executor


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
        self.cancelled = False
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
        while True:
            if is_cancelled():
                self.cancelled = True
                return
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
