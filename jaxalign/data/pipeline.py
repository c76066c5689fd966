"""The streaming input pipeline: batches prepared ahead in Grain threads and placed on the
devices in the background, in exactly :class:`~jaxalign.data.stream.BatchStream`'s order.

Batch ``j`` after a start state is a pure function of ``j`` (the epoch order is
``np.random.default_rng([seed, epoch]).permutation(n)``, tail batches dropped), so the
pipeline is a Grain ``MapDataset`` over batch numbers, mapped to collated batches and read
ahead by ``threads`` threads (``prefetch`` batches buffered). Threads, not Grain's worker
processes: collating a batch from a memory-mapped cache is about a millisecond of NumPy copies
(``benchmarks/input_pipeline.py``), which worker processes, pickling every batch back, could
not make cheaper.

:class:`Pipeline` yields this process's rows of each global batch, as NumPy arrays or, with
``shardings``, as global ``jax.Array`` s made by ``jax.make_array_from_process_local_data`` in
a background thread, so the training loop picks up batches already on the devices.

Its :attr:`Pipeline.state` is the :class:`~jaxalign.data.stream.StreamState` after the last
batch *consumed* (never the read-ahead), so a checkpoint of it resumes exactly; setting it
repositions the pipeline (discarding what was read ahead). Grain's own iterator state is not
what is saved: the stream state is, so checkpoints are the in-memory path's, and a run can
resume on either path and on any number of processes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import grain
import jax
import numpy as np

from jaxalign.data.stream import StreamState, check_batching, epoch_order, local_rows, to_global
from jaxalign.sharding.rules import named_sharding

_END = 2**62  # batch numbers are unbounded: the training loop decides when to stop


class Pipeline:
    """Global batches of ``batch_size`` of ``num_examples`` rows; ``make_batch(rows, local)``
    collates the global batch's row indices ``rows`` [batch_size] into this process's arrays
    (``local`` selects its rows), as the in-memory collate functions do."""

    def __init__(self, num_examples: int, batch_size: int, make_batch: Callable[[np.ndarray, slice], dict], *,
                 seed: int = 0, shuffle: bool = True, process_index: int | None = None,
                 process_count: int | None = None, threads: int = 2, prefetch: int = 2, shardings: dict | None = None):
        self.num_examples, self.batch_size = num_examples, batch_size
        self.make_batch = make_batch
        self.seed, self.shuffle = seed, shuffle
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        check_batching(num_examples, batch_size, self.process_count)
        self.threads, self.prefetch, self.shardings = threads, prefetch, shardings
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._state = StreamState()
        self._reader: _Reader | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def local(self) -> slice:
        return local_rows(self.batch_size, self.process_index, self.process_count)

    @property
    def state(self) -> StreamState:
        return self._state

    @state.setter
    def state(self, state: StreamState) -> None:
        self.close()
        self._state = StreamState(state.epoch, state.position)

    def place_on(self, shardings: dict) -> None:
        """From now on, :meth:`next` returns global arrays sharded by ``shardings``."""
        self.close()
        self.shardings = shardings

    def _order(self, epoch: int) -> np.ndarray:
        with self._orders_lock:  # Grain's threads ask for it concurrently
            if epoch not in self._orders:
                order = epoch_order(self.num_examples, self.seed, epoch, self.shuffle)
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = order
            return self._orders[epoch]

    def _batch_start(self, start: StreamState, j: int) -> tuple[int, int]:
        """(epoch, position) where the ``j``-th batch after ``start`` begins (BatchStream's
        rule: a new epoch when fewer than a batch of examples are left)."""
        n, b = self.num_examples, self.batch_size
        first = (n - start.position) // b  # batches left in the start epoch
        if j < first:
            return start.epoch, start.position + j * b
        j -= first
        return start.epoch + 1 + j // self.batches_per_epoch, (j % self.batches_per_epoch) * b

    def _element(self, start: StreamState, j: int) -> tuple[dict, StreamState]:
        epoch, position = self._batch_start(start, j)
        rows = self._order(epoch)[position : position + self.batch_size]
        return self.make_batch(rows, self.local), StreamState(epoch, position + self.batch_size)

    def host_batches(self, start: StreamState) -> Iterator[tuple[dict, StreamState]]:
        """(batch, state after it) from ``start`` on, read ahead by Grain's threads."""
        dataset = grain.MapDataset.range(0, _END).map(lambda j: self._element(start, j))
        if self.threads:
            options = grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=max(self.prefetch, 1))
            return iter(dataset.to_iter_dataset(options))
        return (dataset[j] for j in range(_END))

    def next(self) -> dict:
        """This process's arrays of the next global batch (global jax.Arrays with ``shardings``)."""
        if self._reader is None:
            place = (lambda b: to_global(b, self.shardings)) if self.shardings is not None else (lambda b: b)
            self._reader = _Reader(self.host_batches(self._state), place, self.prefetch)
        batch, self._state = self._reader.next()
        return batch

    def close(self) -> None:
        """Stops the read-ahead (the next :meth:`next` restarts it from :attr:`state`)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class _Reader:
    """Pulls (batch, state) pairs from ``source`` in a daemon thread, applies ``place`` (the
    host-to-device transfer) there and keeps up to ``depth`` results ready; with ``depth``
    0, everything happens in the caller's thread."""

    def __init__(self, source: Iterator, place: Callable[[dict], dict], depth: int):
        self.source, self.place = source, place
        self.stop = threading.Event()
        self.thread = None
        if depth > 0:
            self.ready: queue.Queue = queue.Queue(depth)
            self.thread = threading.Thread(target=self._run, daemon=True, name="jaxalign-input")
            self.thread.start()

    def _put(self, item) -> bool:
        """Waits for room, unless stopped; False once stopped."""
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self) -> None:
        try:
            for batch, state in self.source:
                if not self._put((self.place(batch), state)):
                    return
        except BaseException as e:  # handed to the consumer, raised by next()
            self._put(e)

    def next(self) -> tuple[dict, StreamState]:
        if self.thread is None:
            batch, state = next(self.source)
            return self.place(batch), state
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


def streaming_pipeline(task, num_examples: int, make_batch: Callable[[np.ndarray, slice], dict]) -> Pipeline:
    """The pipeline a task's ``data`` config asks for (``prefetch`` batches ahead, by as many
    threads), placing its batches as the trainer shards them (the task's ``batch_axes``)."""
    cfg = task.cfg
    shardings = {k: named_sharding(task.mesh, axes) for k, axes in task.batch_axes().items()}
    return Pipeline(num_examples, cfg.data.batch_size, make_batch, seed=cfg.seed, shuffle=cfg.data.shuffle,
                    threads=cfg.data.prefetch, prefetch=cfg.data.prefetch, shardings=shardings)
