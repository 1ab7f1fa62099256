"""``python -m connectors.kafka source``, as a kafkaSource's consumer pod runs it (the container the Connector
operator builds, its command and arguments expanded from its env as the kubelet does), against a broker that
requires SASL over TLS: the Connector's ``auth`` is read from the files the operator mounts under
``AIPLANE_SECRETS_DIR``, and both the consumer and the dead-letter producer authenticate with it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from connectors.kafka import clients
from connectors.kafka.clients import security_settings
from crds.connector import Connector, KafkaAuth
from engine import Engine
from engine.executors.resolvers import DirectorySecretResolver
from operators.connector import builders
from operators.connector.config import Config
from tests.connectors.test_kafka_sasl import PASSWORD, USER, SaslBroker, sasl_broker
from tests.fixtures.polling import assert_eventually

__all__ = ["sasl_broker"]  # the broker fixture, shared with the SASL client tests

WORKFLOW: dict[str, Any] = {
    "inputSchema": {"type": "object", "required": ["claimId"], "properties": {"claimId": {"type": "string"}}},
    "steps": [{"name": "decide", "type": "rules", "rules": {"set": {"seen": "true"}}}],
}
AUTH = {
    "mechanism": "SCRAM-SHA-512",
    "username": {"name": "kafka-user", "key": "user"},
    "password": {"name": "kafka-user", "key": "password"},
    "ca": {"name": "kafka-ca", "key": "ca.crt"},
}


def mount_secrets(root: Path, ca_pem: str) -> Path:
    """The keys as the Connector operator mounts them: ``<dir>/<secret>/<key>``."""
    for secret, key, value in [
        ("kafka-user", "user", USER),
        ("kafka-user", "password", PASSWORD),
        ("kafka-ca", "ca.crt", ca_pem),
    ]:
        (root / secret).mkdir(parents=True, exist_ok=True)
        (root / secret / key).write_text(value)
    return root


def source_command(connector: str, spec: dict[str, Any], db_url: str, data_dir: Path) -> list[str]:
    """The consumer container's command line, as the kubelet runs it in the aiplane image."""
    resource = Connector.model_validate(
        {"metadata": {"name": connector, "namespace": "acme"}, "spec": {"type": "kafkaSource", "kafkaSource": spec}}
    )
    deployment = builders.deployment(resource, builders.Owner(connector, "acme", "u-1"), 1, Config())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The image's entrypoint is `aiplane` (Containerfile): the container must replace it, not hand it arguments.
    assert container["command"][0] == "python"
    env = {e["name"]: e.get("value") for e in container["env"]} | {"AIPLANE_DATABASE_URL": db_url}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: str(env[m.group(1)]), arg) for arg in container["args"]]
    return [sys.executable, *container["command"][1:], *argv, "--data-dir", str(data_dir), "--session-timeout", "6"]


def test_the_consumer_pod_authenticates_its_consumer_and_dead_letter_producer(
    sasl_broker: SaslBroker, tmp_path: Path
) -> None:
    secrets_dir = mount_secrets(tmp_path / "secrets", sasl_broker.ca_pem)
    settings = security_settings(KafkaAuth.model_validate(AUTH), DirectorySecretResolver(secrets_dir))
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    engine = Engine(db_url, data_dir=tmp_path)
    engine.register_workflow("claims", WORKFLOW)
    topic = f"claims-{uuid.uuid4().hex[:8]}"
    # Written before the consumer starts (earliest): the topic exists by the time it joins.
    producer = clients.producer(sasl_broker.sasl_ssl, client_id="test", ack_timeout=30, **settings)
    try:
        producer.send(topic, value=json.dumps({"claimId": "C-1"}).encode()).get(timeout=30)
        producer.send(topic, value=b"not json").get(timeout=30)
    finally:
        producer.close(timeout=5)
    spec = {"bootstrapServers": sasl_broker.sasl_ssl, "topic": topic, "workflow": "claims", "auth": AUTH}
    log = (tmp_path / "source.log").open("wb")
    process = subprocess.Popen(
        source_command("claims-intake", spec, db_url, tmp_path),
        env={**os.environ, "AIPLANE_SECRETS_DIR": str(secrets_dir)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    dead_letters = KafkaConsumer(
        f"{topic}.dlq", bootstrap_servers=sasl_broker.sasl_ssl, auto_offset_reset="earliest", **settings
    )
    try:

        def task_made() -> None:
            assert process.poll() is None, (tmp_path / "source.log").read_text()[-3000:]
            tasks = engine.list("acme", workflow="claims", include_payloads=True).items
            assert [task.input for task in tasks] == [{"claimId": "C-1"}]

        assert_eventually(task_made, timeout=90, message="the message became a task")
        received: list[bytes] = []

        def dead_lettered() -> None:
            for records in dead_letters.poll(timeout_ms=500).values():
                received.extend(record.value for record in records)
            assert received == [b"not json"]

        assert_eventually(dead_lettered, timeout=60, interval=0, message="the malformed message was dead-lettered")
    finally:
        dead_letters.close()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()
        engine.close()


def test_a_secret_key_not_mounted_is_named_and_the_consumer_exits(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "kafka-user").mkdir(parents=True)
    (secrets_dir / "kafka-user" / "user").write_text(USER)
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    Engine(db_url, data_dir=tmp_path).close()
    spec = {"bootstrapServers": "127.0.0.1:9", "topic": "claims", "workflow": "claims", "auth": AUTH}
    done = subprocess.run(
        source_command("claims-intake", spec, db_url, tmp_path),
        env={**os.environ, "AIPLANE_SECRETS_DIR": str(secrets_dir)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "auth.password needs secret kafka-user/password" in done.stderr
    assert str(secrets_dir) in done.stderr
