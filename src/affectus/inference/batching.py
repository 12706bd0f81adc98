"""Dynamic batching for the service (inference/service.py): requests that arrive within a few
milliseconds share one forward, as Triton's and Ray Serve's dynamic batchers do.

One `Batcher` per server process. Requests hand it validated `Split`s (the run's widths, already
re-encoded where the run reads transcripts) and await a `Prediction` for exactly their samples. A single
asyncio task takes the first waiting split, then gathers more for up to `max_wait_ms` or until
`max_batch` samples, runs one forward per group in a thread, and splits the outputs back.

Batched and unbatched answers are the same: only splits whose sequence lengths (and BERT token shape,
and whether they carry an availability mask) are equal share a forward, so no sample is ever padded to
another request's length and a model whose forward depends on the padded length sees what it would see
alone. A split larger than `max_batch` runs by itself, in chunks.

The queue is bounded in samples (`max_queue`): beyond it `submit` raises `QueueFull` at once (the
service answers 503 with Retry-After), so a request is never dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from affectus.data.types import MODALITIES, Split
from affectus.errors import AffectusError

_ATTENTION_BUDGET = 1 << 22  # batch x L^2 attention entries per forward chunk (memory grows with both)


class QueueFull(Exception):
    """The batcher holds `max_queue` samples already; retry shortly."""


@dataclass
class _Job:
    split: Split
    future: asyncio.Future
    key: tuple
    queued: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return len(self.split)


def group_key(split: Split) -> tuple:
    """What must be equal for two splits to share a forward without changing either one's answer."""
    bert = None if split.text_bert is None else tuple(split.text_bert.shape[1:])
    return (*(split.features(m).shape[1] for m in MODALITIES), bert, split.available is None)


class Batcher:
    def __init__(self, predictor: Any, max_batch: int = 32, max_wait_ms: float = 2.0, max_queue: int = 1024,
                 metrics: Any = None) -> None:
        self.predictor = predictor
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.metrics = metrics
        self.queued = 0  # samples waiting (not yet in a forward)
        # a deque and an Event rather than an asyncio.Queue: a get() cancelled by a timeout can never take
        # (and lose) a job, since jobs are only ever popped by the batcher itself
        self._jobs: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, split: Split) -> Any:
        """The Prediction for `split`'s samples. Raises QueueFull when the queue is full, AffectusError for
        a sample the model cannot predict (NaN outputs)."""
        n = len(split)
        # an empty queue takes any split (one larger than the bound runs alone); otherwise the bound holds
        if self.queued and self.queued + n > self.max_queue:
            raise QueueFull(f"{self.queued} samples are waiting (the queue holds {self.max_queue}); retry shortly")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            # a new event loop (a test client's), or the first request: jobs of a loop that is gone can never
            # be answered, so they leave the queue
            self._jobs.clear()
            self.queued = 0
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._run(), name="affectus-batcher")
        job = _Job(split, loop.create_future(), group_key(split))
        self.queued += n
        self._gauge()
        self._jobs.append(job)
        assert self._arrived is not None
        self._arrived.set()
        return await job.future  # cancelled (timeout, client gone): the batcher skips the job

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # its cancellation is the only way it ends
            self._task = None

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued)

    def _take(self, job: _Job) -> None:
        self.queued -= job.n
        self._gauge()

    async def _next(self, deadline: float | None) -> _Job | None:
        """The oldest waiting job; waits until `deadline` (loop time; None: for ever) and gives None then."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while not self._jobs:
            self._arrived.clear()
            if deadline is None:
                await self._arrived.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return None
        return self._jobs[0]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            self._jobs.popleft()
            self._take(first)
            jobs, total = [first], first.n
            deadline = loop.time() + self.max_wait_s
            while total < self.max_batch:
                job = await self._next(deadline)
                if job is None or total + job.n > self.max_batch:
                    break  # a job that does not fit stays first in line for the next batch
                self._jobs.popleft()
                self._take(job)
                jobs.append(job)
                total += job.n
            live = [j for j in jobs if not j.future.done()]  # a cancelled request's job is skipped
            groups: dict[tuple, list[_Job]] = {}
            for job in live:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                try:
                    results = await asyncio.to_thread(self._forward, [j.split for j in group])
                except Exception as err:  # noqa: BLE001 - each request answers for itself (500, logged there)
                    results = [err] * len(group)
                for job, result in zip(group, results):
                    if job.future.done():
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)

    def _forward(self, splits: list[Split]) -> list[Any]:
        """One forward over the concatenated splits (chunked when large); each split's Prediction, or the
        AffectusError that its own samples raise (NaN outputs)."""
        from affectus.evaluation.evaluate import predict_split
        from affectus.inference.predictor import _to_prediction

        p = self.predictor
        merged = splits[0] if len(splits) == 1 else _concat(splits)
        longest = max(merged.features(m).shape[1] for m in MODALITIES)
        chunk = max(1, min(max(self.max_batch, 1), _ATTENTION_BUDGET // (longest * longest)))
        if len(splits) == 1 and len(merged) > self.max_batch:
            chunk = max(1, min(256, _ATTENTION_BUDGET // (longest * longest)))
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(merged))
        res = predict_split(p.model, merged, chunk, p.device)
        experts = p.can.experts  # what Predictor.predict names, so the service explains as `predict` does
        zero_filled = not p.can.excludes_absent
        if len(splits) > 1 and np.isfinite(res["logits"]).all():
            # every row finite: one Prediction for the batch, cut into each request's rows (softmax, argmax
            # and the scheme's rules work row by row, so each part equals that request's own Prediction)
            whole = _to_prediction(res, p.run_dir, p.scheme, merged.available, experts)
            whole.zero_filled = zero_filled
            out, start = [], 0
            for split in splits:
                out.append(_rows(whole, slice(start, start + len(split))))
                start += len(split)
            return out
        out: list[Any] = []
        start = 0
        for split in splits:
            rows = slice(start, start + len(split))
            start += len(split)
            try:
                pred = _to_prediction({k: v[rows] for k, v in res.items()}, p.run_dir, p.scheme,
                                      split.available, experts)
                pred.zero_filled = zero_filled
                out.append(pred)
            except AffectusError as err:
                out.append(err)
        return out


def _rows(pred: Any, rows: slice) -> Any:
    """`pred` (a Prediction) for `rows` only: every per-sample array cut, the rest shared."""
    import dataclasses

    return dataclasses.replace(pred, **{f.name: getattr(pred, f.name)[rows] for f in dataclasses.fields(pred)
                                        if isinstance(getattr(pred, f.name), np.ndarray)})


def _concat(splits: list[Split]) -> Split:
    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(s, name) for s in splits]
        return None if parts[0] is None else np.concatenate(parts)

    def tokens() -> tuple[np.ndarray | None, np.ndarray | None]:
        # a fine-tuned text encoder's input (features/text_finetune.py): each split is as wide as its own
        # longest transcript, so they are zero-padded to the widest (the tuned layers mask the padding)
        if splits[0].text_tokens is None:
            return None, None
        width = max(s.text_tokens.shape[1] for s in splits)
        padded = [np.pad(s.text_tokens, ((0, 0), (0, width - s.text_tokens.shape[1]), (0, 0))) for s in splits]
        return np.concatenate(padded), cat("text_token_lengths")

    text_tokens, text_token_lengths = tokens()
    n = sum(len(s) for s in splits)
    return Split(name="batch", text=cat("text"), audio=cat("audio"), vision=cat("vision"),
                 text_lengths=cat("text_lengths"), audio_lengths=cat("audio_lengths"),
                 vision_lengths=cat("vision_lengths"), labels=np.zeros(n, np.float32),
                 ids=[str(i) for i in range(n)], text_bert=cat("text_bert"), available=cat("available"),
                 text_tokens=text_tokens, text_token_lengths=text_token_lengths)
