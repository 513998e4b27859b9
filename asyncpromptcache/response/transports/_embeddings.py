"""Embeddings, input by input: each input of an embeddings request is cached on its own.

The key of one input is the request's key material with the body's ``input`` replaced by
that input: the model, ``dimensions``, ``encoding_format`` and every other field are in
it. A request whose inputs are partly cached sends only the missing ones upstream, in one
request; an input that an identical request is fetching meanwhile is joined (single-flight
per input). The answer lists every input in the caller's order, each vector as it was
first returned.

``usage`` in the answer is the upstream's usage for the inputs this request sent (the
missing ones); when every input was cached or joined it is ``{"prompt_tokens": 0,
"total_tokens": 0}``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio

from ..._core.errors import NotCachedError, ResponseFailedError
from .._cache import ResponseCache, ResponseStream
from .._keys import Chunk
from ._engine import (
    Answer,
    CutError,
    ErrorAnswer,
    Plan,
    Send,
    Unfinished,
    failed_answer,
    not_cached_answer,
    read_all,
)
from ._policy import Lookup, replayed_headers

__all__ = ["answer_embeddings", "split_inputs"]


def split_inputs(body: Mapping[str, Any]) -> tuple[list[Any], bool] | None:
    """The inputs of an embeddings body and whether it was one input (a string or one token
    array); ``None`` for an input this module does not split (sent as one answer)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [value], True  # one input given as tokens
    if all(isinstance(item, str) or (isinstance(item, list) and item and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item)) for item in value):
        return list(value), False
    return None


class _Batch:
    """The one upstream request for the inputs of a request that nobody had."""

    def __init__(self, plan: Plan, send: Send, inputs: list[Any], single: bool,
                 wall_clock: Callable[[], float]) -> None:
        self._plan = plan
        self._send = send
        self._inputs = inputs
        self._single = single
        self._wall = wall_clock
        self.missing: list[int] = []
        self.ready = anyio.Event()
        self._done = anyio.Event()
        self._started = False
        self.vectors: dict[int, Any] = {}
        self.error: BaseException | None = None
        self.usage: Any = None
        self.model: Any = None
        self.headers: list[list[str]] = []

    def producer(self, index: int) -> Callable[[], AsyncIterator[Chunk]]:
        async def produce() -> AsyncIterator[Chunk]:
            await self.ready.wait()
            await self._run()
            if self.error is not None:
                raise self.error
            if index not in self.vectors:
                raise Unfinished("the embeddings request upstream did not finish")
            yield {"embedding": self.vectors[index], "model": self.model,
                   "created": self._wall()}

        return produce

    async def _run(self) -> None:
        if self._started:
            await self._done.wait()
            return
        self._started = True
        try:
            inputs = [self._inputs[i] for i in self.missing]
            body = dict(self._plan.json)
            body["input"] = inputs[0] if self._single else inputs
            upstream = await self._send(self._plan.headers, json.dumps(body).encode())
            try:
                kept = replayed_headers(upstream.headers)
                raw = await read_all(upstream)
                if upstream.status != 200:
                    self.error = ErrorAnswer(upstream.status, [(k, v) for k, v in kept], raw)
                    return
                data = json.loads(raw)
                items = sorted(data["data"], key=lambda item: item["index"])
                if len(items) != len(inputs):
                    raise Unfinished(f"the upstream returned {len(items)} embeddings for "
                                     f"{len(inputs)} inputs")
                for index, item in zip(self.missing, items, strict=True):
                    self.vectors[index] = item["embedding"]
                self.usage, self.model, self.headers = data.get("usage"), data.get("model"), kept
            finally:
                await upstream.aclose()
        except Exception as exc:
            self.error = exc
        finally:
            self._done.set()


async def _open(cache: ResponseCache, plan: Plan, item: Any, produce: Callable[[], Any],
                mode: Any, ttl: float | None) -> ResponseStream:
    material = dict(plan.material)
    body = dict(plan.json)
    body["input"] = item
    material["body"] = body
    stream = cache.stream(material, produce, mode=mode, ttl_seconds=ttl,
                          cache_nondeterministic=True)
    await stream.start()
    return stream


async def answer_embeddings(cache: ResponseCache, plan: Plan, lookup: Lookup, send: Send,
                            cut: CutError, wall_clock: Callable[[], float] = time.time,
                            ) -> Answer | None:
    """The answer to an embeddings request, input by input; ``None`` when its input is not
    one this module splits."""
    split = split_inputs(plan.json)
    if split is None:
        return None
    inputs, single = split
    batch = _Batch(plan, send, inputs, single, wall_clock)
    streams: list[ResponseStream] = []
    first: dict[int, Chunk] = {}
    ages: list[float] = []
    try:
        try:
            for index, item in enumerate(inputs):
                stream = await _open(cache, plan, item, batch.producer(index), lookup.mode,
                                     lookup.ttl)
                if stream.source == "hit":
                    chunk = await anext(stream)
                    assert isinstance(chunk, dict)
                    age = max(0.0, wall_clock() - float(chunk["created"]))
                    if lookup.max_age is not None and age > lookup.max_age:
                        await stream.aclose()
                        stream = await _open(cache, plan, item, batch.producer(index),
                                             "refresh", lookup.ttl)
                    else:
                        first[index] = chunk
                        ages.append(age)
                streams.append(stream)
            batch.missing = [i for i, s in enumerate(streams) if s.source == "miss"]
        finally:
            batch.ready.set()
    except NotCachedError:
        for stream in streams:
            await stream.aclose()
        return not_cached_answer()
    vectors: list[Any] = []
    try:
        for index, stream in enumerate(streams):
            found = first.get(index)
            if found is not None:
                chunk = found
            else:
                try:
                    chunk = await anext(stream)
                except ResponseFailedError as exc:
                    return failed_answer(exc, stream.source, cut)
            assert isinstance(chunk, dict)
            vectors.append(chunk["embedding"])
            if batch.model is None:
                batch.model = chunk.get("model")
    finally:
        for stream in streams:
            await stream.aclose()
    sources = {stream.source for stream in streams}
    source = "miss" if "miss" in sources else "join" if "join" in sources else "hit"
    usage = batch.usage if batch.usage is not None else {"prompt_tokens": 0,
                                                         "total_tokens": 0}
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v}
                 for i, v in enumerate(vectors)],
        "model": batch.model if batch.model is not None else plan.json.get("model"),
        "usage": usage,
    }
    digest = hashlib.sha256("".join(s.key or "" for s in streams).encode()).hexdigest()
    headers = [(k, v) for k, v in batch.headers if k != "content-type"]
    headers += [("content-type", "application/json"), ("x-cache", source),
                ("x-cache-key", digest)]
    if source == "hit" and ages:
        headers.append(("age", str(int(max(ages)))))
    return Answer(200, headers, body=json.dumps(body, separators=(",", ":")).encode())
