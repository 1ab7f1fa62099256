"""``python -m engine.worker --db URL``: a worker process (the unit to scale out, and what crash tests kill)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from engine.durations import parse_duration
from engine.executors.resolvers import load_static_config
from engine.facade import Engine
from engine.worker.loop import WorkerConfig, default_worker_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__)
    parser.add_argument("--db", required=True, help="sqlite:////path/engine.db or postgresql+psycopg://...")
    parser.add_argument("--data-dir", help="directory for large payloads (default: next to the SQLite file)")
    parser.add_argument("--resolvers", help="JSON file with static models, connectors and secrets")
    parser.add_argument("--id", default=None, help="worker id (default: host-pid-random)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", default="30s", help="lease duration, e.g. 30s")
    parser.add_argument("--poll", default="500ms", help="idle poll interval")
    parser.add_argument("--maintenance-interval", default="1s")
    parser.add_argument("--no-maintenance", action="store_true", help="do not run the periodic sweeps")
    parser.add_argument("--sqlite-synchronous", default="FULL", help="FULL (default) or NORMAL; see Database")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    models = connectors = secrets = None
    if args.resolvers:
        models, connectors, secrets = load_static_config(args.resolvers)
    engine = Engine(
        args.db,
        data_dir=args.data_dir,
        model_resolver=models,
        connector_resolver=connectors,
        secret_resolver=secrets,
        sqlite_synchronous=args.sqlite_synchronous,
    )
    worker = engine.worker(
        WorkerConfig(
            worker_id=args.id or default_worker_id(),
            concurrency=args.concurrency,
            lease=parse_duration(args.lease),
            poll_interval=parse_duration(args.poll).total_seconds(),
            maintenance_interval=parse_duration(args.maintenance_interval).total_seconds(),
            maintenance=not args.no_maintenance,
        )
    )

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: finishing running steps, then exiting", signum)
        worker.stop_soon()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    print(f"worker {worker.id} ready", flush=True)
    try:
        worker.run_forever()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
