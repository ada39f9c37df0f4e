"""The HTTP side of `charrnn serve`: a FastAPI app over one charrnn.serve.pool.ModelPool.

    GET  /health            {"status": "ok", "admitted": requests running or waiting}
    GET  /info              model kind, sizes, best validation loss, engines, limits
    POST /generate          JSON settings -> {text, settings, characters, seconds, engine}
    POST /generate/stream   the same as server-sent events (also /generate with "stream": true):
                            `event: piece` {"text"} as drawn, then `event: done` with the
                            answer /generate gives, or `event: error` {"detail"}

Errors are JSON {"detail": one sentence, "field": the request field at fault}: 400 for a
body that is not JSON, 422 for unknown fields, wrong types, values out of range and
characters outside the vocabulary, 503 with Retry-After when the queue is full.
Generation runs on the pool's worker threads; the event loop only parses and relays.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from charrnn.config import Weights
from charrnn.errors import CharRNNError
from charrnn.serve.pool import Busy, ModelPool, Request, RequestError


class GenerateBody(BaseModel):
    """POST /generate: every field optional; unknown fields and loose types are refused
    ("5" is not a number, 1 is not true)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prime: str = Field("", description="Text to start from (not repeated in the answer).")
    length: Optional[int] = Field(
        None, ge=0, description="New characters (default 500), at most the server's --max-length."
    )
    temperature: float = Field(0.8, ge=0, description="Softmax temperature; 0 = greedy.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely characters; 0 = all.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus: the smallest set with this much probability.")
    seed: Optional[int] = Field(None, ge=0, lt=2**63, description="Same seed, same text; none = a fresh one.")
    stop: str = Field("", description="End once the text ends with this string.")
    weights: Weights = Field("fp32", description="Weights to compute with (int8 needs charrnn[int8]).")
    stream: bool = Field(False, description="Answer as server-sent events, as /generate/stream does.")


def make_app(pool: ModelPool) -> FastAPI:
    """The app answering from `pool`; the pool's threads stop with the app."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(title="charrnn", summary="Text from a trained character-level model.", lifespan=lifespan)
    app.state.pool = pool

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse({"detail": "the body is not valid JSON: send a JSON object.", "field": None}, 400)
        field = _where(problems[0]) if problems else "body"
        message = "; ".join(f"{_where(p)}: {p.get('msg', 'invalid')}" for p in problems[:5])
        return JSONResponse({"detail": message, "field": field}, 422)

    @app.exception_handler(RequestError)
    async def refused(_request: Any, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "field": exc.field}, exc.status)

    @app.exception_handler(Busy)
    async def busy(_request: Any, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "field": None}, 503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(CharRNNError)
    async def failed(_request: Any, exc: CharRNNError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "field": None}, 422)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "admitted": pool.admitted}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return pool.info()

    @app.post("/generate", response_model=None)
    async def generate(body: GenerateBody) -> Any:
        request = pool.check(**body.model_dump(exclude={"stream"}))
        if body.stream:
            return _stream(pool, request)
        return await asyncio.wrap_future(pool.submit(request.weights, pool.generate(request)))

    @app.post("/generate/stream", response_model=None)
    async def generate_stream(body: GenerateBody) -> StreamingResponse:
        return _stream(pool, pool.check(**body.model_dump(exclude={"stream"})))

    return app


def _where(problem: dict) -> str:
    return ".".join(str(part) for part in problem.get("loc", ())[1:]) or "body"


_END = object()


def _event(kind: str, data: Any) -> str:
    """One server-sent event; JSON data keeps newlines in the text off the wire format."""
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _stream(pool: ModelPool, request: Request) -> StreamingResponse:
    """The generation as events. Raises Busy before any byte is sent when the queue is full;
    a client that leaves stops the drawing at its next character."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[Any] = asyncio.Queue()
    left = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody listens
            left.set()

    def emit(piece: str) -> bool:
        if left.is_set():
            return False
        put(piece)
        return True

    future = pool.submit(request.weights, pool.generate(request, emit))
    future.add_done_callback(lambda _f: put(_END))

    async def events() -> AsyncIterator[str]:
        try:
            done = False
            while not done:
                batch = [await pieces.get()]
                while not pieces.empty():  # send what piled up as one event
                    batch.append(pieces.get_nowait())
                done = batch[-1] is _END
                text = "".join(p for p in batch if p is not _END)
                if text:
                    yield _event("piece", {"text": text})
            try:
                yield _event("done", future.result())
            except CharRNNError as exc:
                yield _event("error", {"detail": str(exc)})
            except Exception as exc:  # noqa: BLE001 - the stream has begun: report, don't drop
                yield _event("error", {"detail": f"internal error ({type(exc).__name__})"})
        finally:
            left.set()
            future.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
