"""Build and run cogserve on Ray Serve.

``cogserve serve --ray``, or ``serve run cogserve.scaleout.app:build replicas=2``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from cogserve.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "cogserve"
# Quiet, local-only Ray (see the reference recipe): no usage stats, loopback binds, no auth token file.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
}


def application(settings: Settings, replicas: int, gpus_per_replica: float, ingress_replicas: int = 1) -> Any:
    """The Serve application: ingress deployment(s) bound to the model deployment."""
    from ray import serve

    from cogserve.api.app import create_app
    from cogserve.scaleout.remote import RemoteEngine, RemoteScheduler
    from cogserve.scaleout.replica import ModelReplica

    scheduler = settings.scheduler
    model = serve.deployment(
        name="ModelReplica",
        num_replicas=replicas,
        # Enough requests inside a replica for its scheduler to queue and batch them.
        max_ongoing_requests=scheduler.max_queue + (scheduler.max_batch_size or 4),
        ray_actor_options={"num_gpus": gpus_per_replica, "num_cpus": 0 if gpus_per_replica else 1},
        health_check_period_s=5,
    )(ModelReplica)

    @serve.ingress()
    class Ingress:
        def __init__(self, settings: Settings, model_handle: Any) -> None:
            self._settings = settings
            self._model = model_handle

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(
                self._settings,
                engine=RemoteEngine(self._model),
                scheduler=RemoteScheduler(self._model, self._settings, replicas),
            )

    ingress = serve.deployment(
        name="Ingress",
        num_replicas=ingress_replicas,
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": 0},
    )(Ingress)
    return ingress.bind(settings, model.bind(settings))


def build(args: dict[str, str]) -> Any:
    """``serve run cogserve.scaleout.app:build replicas=2 gpus_per_replica=1``: settings from COGSERVE_*."""
    return application(
        Settings(),
        replicas=int(args.get("replicas", 1)),
        gpus_per_replica=float(args.get("gpus_per_replica", 0)),
        ingress_replicas=int(args.get("ingress_replicas", 1)),
    )


def run(settings: Settings, replicas: int, gpus_per_replica: float, address: str | None) -> None:
    """Start (or join) a Ray cluster, deploy, serve on settings.server.host:port until SIGINT/SIGTERM."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    if address:
        ray.init(address=address, include_dashboard=False)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
    serve.run(application(settings, replicas, gpus_per_replica), name=APP_NAME, route_prefix="/")
    log.info(
        "serving on http://%s:%d with %d model replica(s) on Ray",
        settings.server.host,
        settings.server.port,
        replicas,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: draining the Serve application")
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
