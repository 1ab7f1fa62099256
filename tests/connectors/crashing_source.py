"""A source process that dies (``os._exit``, as under kill -9) right after its Nth batch is stored in the engine
and before that batch's offsets are committed: the window in which a crash must neither lose nor duplicate.

``python -m tests.connectors.crashing_source CONFIG_JSON``; the Kafka source and the store are the real ones.
"""

from __future__ import annotations

import json
import os
import sys

from connectors.kafka import KafkaSource, SourceSettings
from crds.connector import KafkaSource as KafkaSourceSpec
from engine import Engine
from engine.runtime.bulk import Batch, BatchOutcome

CRASH_EXIT = 137


def main(config_json: str) -> None:
    config = json.loads(config_json)
    engine = Engine(config["db_url"], data_dir=config["data_dir"], migrate_on_start=False)
    settings = SourceSettings(
        connector=config["connector"],
        tenant=config["tenant"],
        spec=KafkaSourceSpec.model_validate(config["spec"]),
        batch_size=config["batch_size"],
        session_timeout=config["session_timeout"],
    )
    source = KafkaSource(engine, settings)
    submit_batch = engine.submit_batch
    batches = 0

    def submit_then_die(batch: Batch) -> list[BatchOutcome]:
        nonlocal batches
        outcomes = submit_batch(batch)
        batches += 1
        if batches == config["crash_after_batches"]:
            os._exit(CRASH_EXIT)
        return outcomes

    engine.submit_batch = submit_then_die  # type: ignore[method-assign]
    source.run()


if __name__ == "__main__":
    main(sys.argv[1])
