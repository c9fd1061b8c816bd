"""Online serving on Ray Serve (``icn-rt serve``): an image in, its instances out as JSON.

Two deployments. The **ingress** (FastAPI) checks a request, decodes the image and makes
its proposals (or reads them from a folder by the request's id) in a thread, and hands it
to the **model** deployment, whose replicas each hold one predictor (pipeline or student,
any backend) and answer requests in dynamic batches (``@serve.batch``: up to
``max_batch_size`` images, waiting at most ``batch_wait_s`` for them). Endpoints:

- ``POST /predict?id=NAME`` — body: the encoded image (``Content-Type`` ``image/*`` or
  ``application/octet-stream``). 200: ``{"image_id", "size": [H, W], "instances": [...]}``,
  each instance a COCO result as ``icn-rt infer`` writes it (the same instances for the
  same image). 400 (not an image, an empty body, a bad id), 413 (over ``max_pixels`` or
  ``max_body_mb``), 415 (another content type): ``{"error": one line}``; the server goes on.
- ``GET /healthz`` (the ingress answers), ``GET /readyz`` (a model replica answers: 503
  until then), ``GET /stats`` (one model replica's counts: requests, batches, batch sizes).

A model replica that dies is replaced by Serve; a request it held is sent once more, then
answered 503, and no request waits past ``timeout_s`` (503). Serve's own metrics and
``icn_rt_serve_images`` / ``icn_rt_serve_batch_size`` go to Ray's Prometheus endpoint.
"""

import asyncio  # no `from __future__ import annotations`: FastAPI reads the endpoints' annotations
import re
from dataclasses import dataclass
from pathlib import Path

from icn_rt.errors import InputError, TooLarge
from icn_rt.models.store import student_settings
from icn_rt.runtime.infer import PredictorSpec
from icn_rt.runtime.loading import MAX_PIXELS, LoadSettings, load_bytes

APP = "icn-rt"
ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True)
class ServeSettings:
    """``replicas`` model replicas with ``gpus_per_replica`` / ``cpus_per_replica`` each
    (as many ingress replicas, one CPU each); a batch is ``max_batch_size`` images or what
    came in ``batch_wait_s``; ``proposals``: a folder of ``<id>.mat``/``.json`` proposals
    (None: selective search per request; the student needs none)."""

    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_pixels: int = MAX_PIXELS
    max_body_mb: float = 64.0
    proposals: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.replicas < 1:
            raise ValueError("--max-batch-size and --replicas must be at least 1")
        if self.batch_wait_s < 0 or self.timeout_s <= 0:
            raise ValueError("--batch-wait must be at least 0 and --timeout above 0")


def _serve():
    from icn_rt import extras

    extras.require("fastapi")  # with Ray Serve's other requirements: `pip install 'icn-rt[serve]'`
    extras.require("ray")
    from ray import serve

    return serve


def build_app(spec: PredictorSpec, settings: ServeSettings):
    """The Serve application (ingress bound to the model deployment)."""
    serve = _serve()
    from fastapi import FastAPI

    api = FastAPI(title="icn-rt", description="Instance masks for an image: POST its bytes to /predict.")
    drain = {"graceful_shutdown_timeout_s": settings.timeout_s + 10}  # a replica taken down finishes its requests
    model = _model_deployment(serve, spec, settings, drain)
    ingress = _ingress_deployment(serve, api, spec, settings, drain)
    return ingress.bind(model.bind())


def _model_deployment(serve, spec: PredictorSpec, settings: ServeSettings, drain: dict):
    """The deployment that holds the predictor and batches the requests."""
    @serve.deployment(name="model", num_replicas=settings.replicas, max_ongoing_requests=4 * settings.max_batch_size,
                      ray_actor_options={"num_cpus": settings.cpus_per_replica,
                                         "num_gpus": settings.gpus_per_replica}, **drain)
    class Model:
        def __init__(self) -> None:
            from ray.serve.metrics import Counter, Histogram

            from icn_rt.runtime.ray_infer import actor_device

            self.predictor = spec.build(actor_device(settings.gpus_per_replica, max(1, int(settings.cpus_per_replica))))
            self.segment.set_max_batch_size(settings.max_batch_size)
            self.segment.set_batch_wait_timeout_s(settings.batch_wait_s)
            self.counts = {"requests": 0, "batches": 0, "batch_sizes": {}}
            self.images = Counter("icn_rt_serve_images", description="Images segmented.")
            self.batch_size = Histogram("icn_rt_serve_batch_size", description="Images per batch.",
                                        boundaries=[1, 2, 4, 8, 16, 32, 64])

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def segment(self, items: list) -> list[dict]:
            n = len(items)
            self.counts["requests"] += n
            self.counts["batches"] += 1
            self.counts["batch_sizes"][n] = self.counts["batch_sizes"].get(n, 0) + 1
            self.images.inc(n)
            self.batch_size.observe(n)
            return await asyncio.to_thread(answers, self.predictor, items)

        def input_size(self) -> int:
            return self.predictor.input_size

        def stats(self) -> dict:
            return {**self.counts, "batch_sizes": {str(k): v for k, v in sorted(self.counts["batch_sizes"].items())},
                    "backend": self.predictor.backend}

    return Model


def _ingress_deployment(serve, api, spec: PredictorSpec, settings: ServeSettings, drain: dict):
    """The HTTP ingress: checks and decodes each request, asks the model, answers 4xx/5xx with why."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    # as many requests in flight through an ingress as its model replica can batch (Serve's default is 5)
    @serve.deployment(name="ingress", num_replicas=settings.replicas, max_ongoing_requests=4 * settings.max_batch_size,
                      ray_actor_options={"num_cpus": 1}, **drain)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, model) -> None:
            self.model = model
            needs_proposals = not spec.student or student_settings(spec.model_dir).refine == "proposals"
            self.load = LoadSettings(0, Path(settings.proposals) if settings.proposals and needs_proposals else None,
                                     settings.max_pixels, make_proposals=needs_proposals)

        @api.post("/predict")
        async def predict(self, request: Request, id: str = "image"):
            problem = request_problem(request.headers.get("content-type"), request.headers.get("content-length"),
                                      id, settings.max_body_mb)
            if problem:
                return JSONResponse({"error": problem[1]}, problem[0])
            body = await request.body()
            if not body:
                return JSONResponse({"error": "empty body: send the image's bytes"}, 400)
            if len(body) > settings.max_body_mb * 1e6:
                return JSONResponse({"error": f"body over --max-body-mb {settings.max_body_mb:g}"}, 413)
            try:
                loaded = await asyncio.to_thread(load_bytes, body, Path(id), await self._load_settings())
            except InputError as e:
                return JSONResponse({"error": str(e)}, 413 if isinstance(e, TooLarge) else 400)
            status, answer = await self._segment(loaded)
            return JSONResponse(answer, status)

        async def _load_settings(self) -> LoadSettings:
            if self.load.input_size == 0:  # the model's, asked once
                size = await self.model.input_size.remote()
                self.load = LoadSettings(size, self.load.proposals, self.load.max_pixels,
                                         make_proposals=self.load.make_proposals)
            return self.load

        async def _segment(self, loaded) -> tuple[int, dict]:
            """The model's answer; a replica that dies with the request: once more, on the
            replica that replaces it; past ``timeout_s`` in all: 503."""
            import time

            from ray.exceptions import ActorUnavailableError, RayActorError

            deadline = time.monotonic() + settings.timeout_s
            for attempt in (1, 2):
                try:
                    call = _awaited(self.model.segment.remote(loaded))
                    return 200, await asyncio.wait_for(call, max(0.0, deadline - time.monotonic()))
                except (RayActorError, ActorUnavailableError):
                    if attempt == 2:
                        return 503, {"error": "the model replica died twice with this request; retry later"}
                except asyncio.TimeoutError:
                    return 503, {"error": f"no answer within {settings.timeout_s:g} s (--timeout); retry later"}
                except Exception as e:  # the predictor failed on this batch: say why, keep serving
                    return 500, {"error": one_line(e)}
            raise AssertionError("unreachable")

        @api.get("/healthz")
        def healthz(self):
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz(self):
            try:
                await asyncio.wait_for(_awaited(self.model.input_size.remote()), 5)
            except Exception:
                return JSONResponse({"ready": False}, 503)
            return {"ready": True}

        @api.get("/stats")
        async def stats(self):
            return await self.model.stats.remote()

    return Ingress


async def _awaited(response):
    return await response


def answers(predictor, items: list) -> list[dict]:
    """The answers for loaded images (:class:`~icn_rt.runtime.loading.Loaded`), one batch: as
    :func:`~icn_rt.runtime.infer.predict_batch` predicts, on the network inputs the ingress
    made and without the maps (they are for pictures)."""
    from icn_rt.data.results import result_entry

    predictions = predictor.predict([i.image for i in items], [i.proposals for i in items], [i.x for i in items],
                                    keep_maps=False)
    return [{"image_id": item.path.name, "size": list(item.image.shape[:2]),
             "instances": [result_entry(item.path.name, inst.class_id, inst.score, inst.mask, predictor.classes)
                           for inst in pred.instances]}
            for item, pred in zip(items, predictions)]


def request_problem(content_type: str | None, content_length: str | None, image_id: str,
                    max_body_mb: float) -> tuple[int, str] | None:
    """(HTTP status, one line) for a request the endpoint does not take, or None."""
    kind = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind == "application/octet-stream"):
        return 415, f"Content-Type {kind} is not taken: send the image's bytes as image/* or application/octet-stream"
    if not ID.match(image_id):
        return 400, f"id {image_id[:40]!r} must be 1-200 letters, digits, '.', '_' or '-'"
    if content_length is not None and content_length.isdigit() and int(content_length) > max_body_mb * 1e6:
        return 413, f"body of {int(content_length) / 1e6:.1f} MB is over --max-body-mb {max_body_mb:g}"
    return None


def one_line(e: BaseException) -> str:
    """The last non-empty line of an error's text (Ray wraps errors in tracebacks)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def start(spec: PredictorSpec, settings: ServeSettings, address: str = "auto") -> tuple[str, bool]:
    """Start Serve on the cluster (``auto``: one running here, else a new local one;
    ``local``; or an address) and deploy the application; its URL, and whether this
    process started Ray (then :func:`stop` shuts it down)."""
    serve = _serve()
    from icn_rt.runtime.ray_infer import connect

    ours = connect(address)
    # the proxy's own limit a little later than the ingress's, so a request held too long gets our 503 and reason
    serve.start(http_options={"host": settings.host, "port": settings.port,
                              "request_timeout_s": settings.timeout_s + 10})
    serve.run(build_app(spec, settings), name=APP, route_prefix="/", blocking=False)
    return f"http://{settings.host}:{settings.port}", ours


def stop(ours: bool) -> None:
    """Take the application down, letting requests in flight finish: deleting it drains its
    replicas while Serve's HTTP proxy stays up to carry their answers; then Serve and Ray go
    too when this process started them."""
    serve = _serve()
    import ray

    serve.delete(APP)
    if ours:
        serve.shutdown()
        ray.shutdown()


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (a server's foreground)."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass


def request(url: str, path: Path, timeout: float = 300.0) -> tuple[int, dict]:
    """POST one image file to a server's ``/predict`` (its stem as the id): (HTTP status,
    answer). A connection that fails is status 0 with the reason."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    endpoint = url.rstrip("/") + "/predict?" + urllib.parse.urlencode({"id": path.stem})
    try:
        data = path.read_bytes()
    except OSError as e:
        return 0, {"error": f"{path}: cannot read ({e.strerror})"}
    req = urllib.request.Request(endpoint, data=data, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {"error": f"HTTP {e.code} {e.reason}"}
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        return 0, {"error": f"{url}: {getattr(e, 'reason', e)}"}


def client(url: str, paths: list[Path], concurrency: int = 4, timeout: float = 300.0):
    """``(path, status, answer)`` for each image, in order, ``concurrency`` requests at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for path, (status, answer) in zip(paths, pool.map(lambda p: request(url, p, timeout), paths)):
            yield path, status, answer
