"""Where independent tasks run: local worker processes, or a Ray cluster (docs/media.md, "Executors").

An executor calls `fn(*args)` for every task of a batch and hands each result back to the calling
process as soon as that task finishes (`on_done`), so the caller can save it at once: whatever has
been handed back survives a worker, or the caller itself, being killed afterwards. Tasks must be
independent; `fn` is pickled into the workers, by reference when it is a module-level function (so
the workers import it from their own installed affectus).

* `LocalExecutor(workers)`: a pool of spawned processes on this machine (1: in this process).
* `RayExecutor(address)`: one Ray task per item, on a local Ray instance (`"local"`) or an existing
  cluster (`"ray://host:10001"`, `"host:6379"`, `"auto"`). `ray` is an optional extra and is imported
  only here, only when a RayExecutor is made: `import affectus` never loads it.

A worker that dies (killed, out of memory, its node gone) never ends in a traceback: `run` returns the
indices of the tasks it could not finish, and the caller says what to do (run again to resume).
The reverse holds too: a local worker ends when the process that started it dies, even by `kill -9`
(`_die_with_parent`), instead of waiting forever on a task queue nobody feeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from affectus.errors import AffectusError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

OnDone = Callable[[int, Any], None]  # (task index, fn's result), called in the calling process

# thread pools of numeric libraries, one thread each in workers: the processes are the parallelism
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class Executor(ABC):
    """Runs a batch of independent tasks in parallel; a context manager that frees its workers."""

    @abstractmethod
    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], on_done: OnDone) -> list[int]:
        """fn(*tasks[i]) for every i; on_done(i, result) here as each finishes (any order).

        Returns the indices of the tasks lost because a worker process died, [] when all finished.
        An exception raised by fn, or by on_done, stops the batch (the rest is cancelled) and is
        raised here."""

    @property
    @abstractmethod
    def describe(self) -> str:
        """A few words for messages: '2 local processes', 'Ray at host:6379'."""

    def close(self) -> None:
        """Free what the executor holds between batches (nothing, for local processes)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Spawned children copy os.environ when they start, before they load numpy: set it around the
    pool's start (a user's own setting wins) and restore the parent's afterwards."""
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    for k in THREAD_VARS:
        os.environ.setdefault(k, "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0  # how often the fallback watchdog looks at the parent


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when `parent` (the process that started the pool) dies.

    A killed parent (`kill -9`, the OOM killer) runs no cleanup, and a worker waiting on the pool's task
    queue never sees it end: each worker holds a copy of the queue's write end, so its read never gets
    EOF. On Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG; nothing of the
    worker's is worth saving then: results go to the parent, which is gone). The death signal fires when
    the *thread* that spawned us ends; `LocalExecutor.run` spawns the workers and shuts the pool down in
    the same call, so that thread outlives them. Elsewhere, or if prctl fails, a daemon thread polls
    the parent pid (a dead parent's children are adopted by another process, so getppid changes)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc / no prctl: the watchdog still runs
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="affectus-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(1)  # no cleanup: nothing here outlives the parent usefully


class LocalExecutor(Executor):
    """`workers` spawned processes on this machine (spawn: no forked library state); 1 runs here."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise AffectusError(f"--workers must be >= 1 (got {workers})")
        self.workers = workers

    @property
    def describe(self) -> str:
        return "this process" if self.workers == 1 else f"{self.workers} local processes"

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], on_done: OnDone) -> list[int]:
        if self.workers <= 1 or len(tasks) <= 1:
            for i, args in enumerate(tasks):
                on_done(i, fn(*args))
            return []
        pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        lost: list[int] = []
        try:
            with single_threaded_children():  # the pool spawns its processes during the submits
                pending: dict[Future, int] = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        # a dead process breaks the whole pool: it fails every task not finished yet at
                        # once, while the ones that did finish are still handed back
                        lost.append(i)
                        continue
                    on_done(i, result)
        except BaseException:
            # stop at once; every result handed back so far is already the caller's
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return sorted(lost)


def import_ray() -> Any:
    """The `ray` module, or one clear line when the optional extra is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise AffectusError("--ray needs the ray package: pip install 'affectus[ray]' (docs/media.md)")
    import ray

    return ray


def _check_reachable(address: str) -> None:
    """One line at once when nothing listens at a cluster's host:port: ray.init itself keeps retrying
    such an address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise AffectusError(f"--ray {address}: expected 'local', 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise AffectusError(f"--ray {address}: no Ray cluster answers there ({err.strerror or err})") from None


class RayExecutor(Executor):
    """One Ray task per item. address "local" starts a Ray instance in this process with `num_cpus`
    CPUs (shut down by close); any other address connects to a running cluster (disconnected by close).

    Ray is started or connected only when the first batch runs, so a bad input file, or a batch whose
    results are all saved already, never waits for it. A task whose worker dies is retried `retries`
    times (Ray's own retry: a killed worker, a lost node); the other tasks carry on meanwhile, and a
    task that still fails is returned as lost."""

    def __init__(self, address: str, num_cpus: int | None = None, retries: int = 2) -> None:
        if not address:
            raise AffectusError("--ray needs an address: 'local', or a cluster's (host:6379, ray://host:10001)")
        if num_cpus is not None and num_cpus < 1:
            raise AffectusError(f"--workers must be >= 1 (got {num_cpus})")
        self._ray = import_ray()
        self.address = address
        self.num_cpus = num_cpus
        self.retries = retries
        self._started = False  # whether this executor called ray.init (and so must call ray.shutdown)

    @property
    def describe(self) -> str:
        return "a local Ray instance" if self.address == "local" else f"the Ray cluster at {self.address}"

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():  # a caller's own ray.init (a notebook): use it, leave it running
            return
        if self.address not in ("local", "auto"):
            _check_reachable(self.address)
        # workers get the same single-thread settings as local processes (a user's own setting wins)
        env = {k: os.environ.get(k, "1") for k in THREAD_VARS}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator variables
                if self.address == "local":
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, logging_level="WARNING",
                             runtime_env={"env_vars": env})
                else:
                    ray.init(address=self.address, logging_level="WARNING", runtime_env={"env_vars": env})
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AffectusError(f"--ray {self.address}: cannot start or reach Ray ({' '.join(str(err).split())})") from None
        self._started = True

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], on_done: OnDone) -> list[int]:
        if not tasks:
            return []
        self._connect()
        ray = self._ray
        remote = ray.remote(fn).options(num_cpus=1, max_retries=self.retries)
        index = {remote.remote(*args): i for i, args in enumerate(tasks)}
        pending = list(index)
        lost: list[int] = []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = index.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayTaskError as err:  # fn itself raised, on a worker
                    if isinstance(err.cause, AffectusError):
                        raise err.cause from None
                    # e.g. affectus missing, or another version, on a cluster's node: one line here (the
                    # traceback is in the worker's log, in Ray's session folder)
                    cause = err.cause if isinstance(err.cause, Exception) else err
                    raise AffectusError(
                        f"a task failed on {self.describe}: {type(cause).__name__}: {' '.join(str(cause).split())[:300]}"
                    ) from None
                except ray.exceptions.RayError:  # worker or node died on every try (Ray logged why)
                    lost.append(i)
                    continue
                on_done(i, result)
        finally:
            for ref in pending:  # stopped early: cancel what is still queued or running
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        return sorted(lost)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
