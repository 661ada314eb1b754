"""The annotation page's HTTP server (Starlette on uvicorn): the page, the round's images and the model.

    GET  /                      the page (static/index.html, annotator.js, annotator.css)
    POST /api/next              {client}                          -> {"image": to annotate, or null; "progress"}
    GET  /api/image?key=K       (the image held)                  -> PNG
    POST /api/segment           {client, key, points, box, previous} -> the model's masks (PNG) and scores
    POST /api/accept            {client, key, mask, clicks, strokes, seconds, point} -> {"id"}
    POST /api/undo_accept       {client, key}                     -> the last accepted mask taken back
    POST /api/finish            {client, key, rejected}           -> the image is done
    GET  /api/progress                                            -> images finished, held, published

Images and masks are addressed by the round's sample keys only: no text from a request reaches the file
system. Request bodies are read up to ``max_request_bytes``; every field is checked, and a bad request is
answered 4xx with ``{"error": ...}``. With a token, every ``/api`` request must carry
``Authorization: Bearer <token>``; binding to anything but loopback needs ``allow_remote`` and a token.
"""

from __future__ import annotations

import hmac
import logging
import math
import socket
import threading
import urllib.parse
from collections.abc import Callable
from importlib import resources

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sam_engine.annotate.web.masks import MaskPngError, mask_to_png, png_to_mask
from sam_engine.annotate.web.options import ServeOptions
from sam_engine.annotate.web.round import RoundConflict, UnknownImage, WebRound
from sam_engine.annotate.web.segmenter import Segmenter
from sam_engine.utils.json_input import parse_json

log = logging.getLogger(__name__)

STATIC = {"index.html": "text/html", "annotator.js": "text/javascript", "annotator.css": "text/css"}
MAX_POINTS = 64
MAX_SECONDS = 24 * 3600.0
MAX_COUNT = 100_000


class BadRequest(ValueError):
    """A request the server refuses: its status and the reason for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object, read up to ``limit`` bytes (413 beyond, 400 when it is not a JSON object)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body over {limit} bytes")
    try:
        value = parse_json(bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return value


def field(body: dict, name: str, check: Callable[[object], bool], expected: str, default=...):
    """``body[name]`` if ``check`` accepts it (400 naming the field otherwise); ``default`` when absent."""
    if name not in body and default is not ...:
        return default
    value = body.get(name)
    if not check(value):
        raise BadRequest(400, f"{name}: expected {expected}, got {str(value)[:80]!r}")
    return value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _text(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _prompts(body: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Points (N x 2), labels (N) and box (4 or None) of a segment request, checked against the image size."""
    height, width = size

    def inside(x, y) -> bool:
        return _number(x) and _number(y) and 0 <= x <= width and 0 <= y <= height

    points = field(body, "points", lambda v: isinstance(v, list) and len(v) <= MAX_POINTS and all(
        isinstance(p, list) and len(p) == 3 and inside(p[0], p[1]) and p[2] in (0, 1) for p in v),
        f"a list of at most {MAX_POINTS} [x, y, label] inside the {width}x{height} image, label 0 or 1", [])
    box = field(body, "box", lambda v: v is None or (isinstance(v, list) and len(v) == 4 and inside(*v[:2])
                                                     and inside(*v[2:]) and v[0] <= v[2] and v[1] <= v[3]),
                f"null or [x0, y0, x1, y1] inside the {width}x{height} image", None)
    if not points and box is None:
        raise BadRequest(400, "no prompt: give points or a box")
    coords = np.array([p[:2] for p in points], dtype=np.float64).reshape(-1, 2)
    labels = np.array([p[2] for p in points], dtype=np.int64)
    return coords, labels, None if box is None else np.array(box, dtype=np.float64)


def create_app(round_: WebRound, segmenter: Segmenter, options: ServeOptions) -> Starlette:
    """The Starlette application serving ``round_`` with ``segmenter``'s model."""
    limit = int(options.max_request_mb * 2**20)

    def authorised(request: Request) -> bool:
        if options.token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {options.token}".encode())

    def api(handler):
        """Token check, and BadRequest/RoundConflict/UnknownImage answered as JSON errors."""
        async def endpoint(request: Request) -> Response:
            if not authorised(request):
                return JSONResponse({"error": "missing or wrong token"}, status_code=401)
            try:
                return await handler(request)
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except RoundConflict as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
            except UnknownImage as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
        return endpoint

    async def held(request: Request) -> tuple[dict, str, int]:
        body = await read_json(request, limit)
        client = field(body, "client", _text, "the page's client id")
        key = field(body, "key", _text, "an image key of the round")
        return body, client, round_.holder_check(client, key)

    def describe(n: int) -> dict:
        prefilled, prefilled_masks, manual, manual_masks = round_.masks(n)
        height, width = round_.image(n).shape[:2]
        segmenter.embed(round_.samples[n].key, lambda: round_.image(n))  # the first click does not wait for it
        return {
            "key": round_.samples[n].key, "width": width, "height": height, "stage": round_.stage,
            "prefilled": [{"id": a["id"], "png": mask_to_png(m), "score": a["predicted_iou"]}
                          for a, m in zip(prefilled, prefilled_masks, strict=True)],
            "accepted": [{"id": a["id"], "png": mask_to_png(m)} for a, m in zip(manual, manual_masks, strict=True)],
        }

    async def next_image(request: Request) -> Response:
        body = await read_json(request, limit)
        client = field(body, "client", _text, "the page's client id")
        n = await run_in_threadpool(round_.claim, client)
        image = None if n is None else await run_in_threadpool(describe, n)
        return JSONResponse({"image": image, "progress": round_.progress()})

    async def image(request: Request) -> Response:
        key = request.query_params.get("key", "")
        n = round_.index_of(key)
        return Response(await run_in_threadpool(round_.image_png, n), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    async def segment(request: Request) -> Response:
        body, _, n = await held(request)
        size = round_.image(n).shape[:2]
        points, labels, box = _prompts(body, size)
        previous = field(body, "previous", lambda v: v is None or _text(v), "null or a mask token", None)
        key = round_.samples[n].key

        def run() -> list[dict]:
            candidates = segmenter.segment(key, lambda: round_.image(n), points, labels, box, previous)
            return [{"png": mask_to_png(c.mask), "score": c.score, "token": c.token} for c in candidates]

        return JSONResponse({"candidates": await run_in_threadpool(run)})

    async def accept(request: Request) -> Response:
        body, _, n = await held(request)
        size = round_.image(n).shape[:2]
        try:
            mask = png_to_mask(field(body, "mask", lambda v: isinstance(v, str), "a base64 PNG"), size)
        except MaskPngError as exc:
            raise BadRequest(400, f"mask: {exc}") from None
        if not mask.any():
            raise BadRequest(400, "mask: empty; nothing to accept")
        clicks = field(body, "clicks", _count, f"an integer in 0..{MAX_COUNT}")
        strokes = field(body, "strokes", _count, f"an integer in 0..{MAX_COUNT}")
        seconds = field(body, "seconds", lambda v: _number(v) and 0 <= v <= MAX_SECONDS,
                        f"seconds in 0..{MAX_SECONDS:g}")
        point = field(body, "point", lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(
            _number(c) for c in v) and 0 <= v[0] <= size[1] and 0 <= v[1] <= size[0]), "null or [x, y] in the image",
                      None)
        new_id = await run_in_threadpool(round_.accept, n, mask, clicks, strokes, float(seconds), point)
        return JSONResponse({"id": new_id})

    async def undo_accept(request: Request) -> Response:
        _, _, n = await held(request)
        await run_in_threadpool(round_.undo_accept, n)
        return JSONResponse({"ok": True})

    async def finish(request: Request) -> Response:
        body, _, n = await held(request)
        rejected = field(body, "rejected", lambda v: isinstance(v, list) and len(v) <= MAX_COUNT and all(
            _count(i) for i in v), "a list of pre-filled mask ids", [])
        try:
            await run_in_threadpool(round_.finish, n, rejected)
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from None
        return JSONResponse(round_.progress())

    async def progress(request: Request) -> Response:
        return JSONResponse(round_.progress())

    def static(name: str):
        async def endpoint(request: Request) -> Response:
            text = resources.files("sam_engine.annotate.web").joinpath("static", name).read_bytes()
            return Response(text, media_type=STATIC[name], headers={"Cache-Control": "no-store"})
        return endpoint

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [Route("/", static("index.html")), Route("/favicon.ico", no_icon),
              *[Route(f"/static/{name}", static(name)) for name in STATIC],
              Route("/api/next", api(next_image), methods=["POST"]),
              Route("/api/image", api(image)),
              Route("/api/segment", api(segment), methods=["POST"]),
              Route("/api/accept", api(accept), methods=["POST"]),
              Route("/api/undo_accept", api(undo_accept), methods=["POST"]),
              Route("/api/finish", api(finish), methods=["POST"]),
              Route("/api/progress", api(progress))]
    return Starlette(routes=routes)


def bind(options: ServeOptions) -> socket.socket:
    """A listening socket at ``options.host:port`` (raises OSError naming them when the port is taken)."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve on {options.host}:{options.port}: {exc.strerror}; choose another port=") from None
    sock.listen(128)
    return sock


def serve(round_: WebRound, segmenter: Segmenter, options: ServeOptions,
          on_ready: Callable[[str], None] = lambda url: None, stop: threading.Event | None = None) -> bool:
    """Serve the round until its shard is published (True), or until the server is stopped (Ctrl+C, or
    ``stop`` set: False; the drafts keep what was accepted). ``on_ready`` gets the page's address once the
    port is bound."""
    options.check()
    sock = bind(options)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    if options.token is not None:
        url += f"#token={urllib.parse.quote(options.token, safe='')}"
    server = uvicorn.Server(uvicorn.Config(create_app(round_, segmenter, options), log_level="warning",
                                           timeout_graceful_shutdown=5))
    stop = stop or threading.Event()
    ended = threading.Event()

    def stop_when_published() -> None:
        while not ended.wait(0.2):
            if round_.published or stop.is_set():
                server.should_exit = True
                return

    threading.Thread(target=stop_when_published, daemon=True).start()
    on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        ended.set()
        sock.close()
    return round_.published
