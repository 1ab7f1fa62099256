"""``python -m tests.helm.traced_worker DB DATA_DIR MODELS_JSON``: a worker that exports its spans as ``aiplane
worker`` does (``aiplane.tracing.configure_from_env``, the chart's OTEL_* variables), with models from the command
line. ``aiplane worker`` finds models only in a cluster (``--from-cluster``); this one calls a test's upstream."""

from __future__ import annotations

import json
import signal
import sys
import threading

from aiplane import tracing
from engine import Engine, StaticModelResolver


def main(argv: list[str]) -> int:
    db, data_dir, models = argv[0], argv[1], json.loads(argv[2])
    provider = tracing.configure_from_env("aiplane-worker")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    engine = Engine(db, data_dir=data_dir, model_resolver=StaticModelResolver(models))
    try:
        with engine.worker(poll_interval=0.05):
            stop.wait()
    finally:
        engine.close()
        if provider is not None:
            provider.shutdown()  # flushes the spans still batched
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
