"""A Connector's Kafka ``auth`` against a real broker that requires it: SASL PLAIN and SCRAM over TLS (the CA from
a Secret), and PLAIN without TLS.

The shared test broker (``hack/kafka.sh``) is plaintext, and reconfiguring it would disturb every other test, so
this module starts its own single-node broker from the same cached jars, with a CA and a server certificate made
by openssl and SCRAM users created when its storage is formatted. It costs one JVM start (about 15-30 s).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from aiplane.processes import stop_process_group
from connectors.kafka import clients
from crds.connector import KafkaAuth
from engine import StaticSecretResolver
from tests.fixtures.polling import assert_eventually

pytestmark = pytest.mark.integration

KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.1.1")
LIBS = Path(os.environ.get("AIPLANE_CACHE_DIR", Path.home() / ".cache" / "aiplane")) / f"kafka-{KAFKA_VERSION}" / "libs"
USER, PASSWORD = "claims-app", "claims-secret"


@dataclass(frozen=True)
class SaslBroker:
    sasl_ssl: str
    sasl_plaintext: str
    ca_pem: str


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(folder: Path) -> None:
    """A CA, and a server certificate it signs for 127.0.0.1 (kafka-python checks the host name)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=aiplane-test-ca",
             "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(folder / "server.key"), "-out", str(folder / "server.csr"))  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(folder / "ca.crt"),
             "-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-days", "1",
             "-extfile", str(folder / "san.ext"), "-out", str(folder / "server.crt"))  # fmt: skip
    # Kafka's PEM keystore: the (unencrypted PKCS#8) key and the certificate chain in one file.
    (folder / "server.pem").write_text((folder / "server.key").read_text() + (folder / "server.crt").read_text())


def _config(folder: Path, internal: int, sasl_ssl: int, sasl_plain: int, controller: int) -> str:
    plain = (
        'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="admin" '
        f'user_admin="admin" user_{USER}="{PASSWORD}";'
    )
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return f"""
process.roles=broker,controller
node.id=1
listeners=INTERNAL://127.0.0.1:{internal},SASL_SSL://127.0.0.1:{sasl_ssl},SASL_PLAINTEXT://127.0.0.1:{sasl_plain},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=INTERNAL://127.0.0.1:{internal},SASL_SSL://127.0.0.1:{sasl_ssl},SASL_PLAINTEXT://127.0.0.1:{sasl_plain}
listener.security.protocol.map=INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
log.dirs={folder / "data"}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config={plain}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={plain}
ssl.keystore.type=PEM
ssl.keystore.location={folder / "server.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={folder / "ca.crt"}
"""


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    java = shutil.which("java")
    if java is None or shutil.which("openssl") is None or not (LIBS / ".complete").exists():
        pytest.skip(f"needs java, openssl and the Kafka jars in {LIBS} (hack/kafka.sh fetch)")
    folder = tmp_path_factory.mktemp("sasl-kafka")
    _certificates(folder)
    internal, sasl_ssl, sasl_plain, controller = _free_ports(4)
    (folder / "server.properties").write_text(_config(folder, internal, sasl_ssl, sasl_plain, controller))
    common = ["-Djava.awt.headless=true", f"-Dkafka.logs.dir={folder}", "-cp", f"{LIBS}/*"]
    users = [f"{m}=[name={USER},password={PASSWORD}]" for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")]
    subprocess.run(
        [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", *common,
         "kafka.tools.StorageTool", "format", "--standalone", "--cluster-id", uuid.uuid4().hex[:22],
         "--config", str(folder / "server.properties"),
         *[arg for user in users for arg in ("--add-scram", user)]],
        check=True,
        capture_output=True,
    )  # fmt: skip
    log = (folder / "kafka.log").open("wb")
    broker = subprocess.Popen(
        [
            java,
            "-Xms64m",
            "-Xmx384m",
            "-XX:TieredStopAtLevel=1",
            *common,
            "kafka.Kafka",
            str(folder / "server.properties"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def listening() -> None:
            if broker.poll() is not None:  # not worth waiting for: say why at once
                raise RuntimeError((folder / "kafka.log").read_text()[-3000:])
            with socket.create_connection(("127.0.0.1", sasl_ssl), timeout=1):
                pass

        assert_eventually(listening, timeout=120, interval=0.5, retry_on=(AssertionError, OSError))
        yield SaslBroker(f"127.0.0.1:{sasl_ssl}", f"127.0.0.1:{sasl_plain}", (folder / "ca.crt").read_text())
    finally:
        stop_process_group(broker, 30)
        log.close()


def _settings(broker: SaslBroker, password: str = PASSWORD, **auth: Any) -> dict[str, Any]:
    secrets = StaticSecretResolver(
        {"kafka-user": {"user": USER, "password": password}, "kafka-ca": {"ca.crt": broker.ca_pem}}
    )
    spec = KafkaAuth.model_validate(
        {"username": {"name": "kafka-user", "key": "user"}, "password": {"name": "kafka-user", "key": "password"}}
        | auth
    )
    return clients.security_settings(spec, secrets)


def _round_trip(bootstrap: str, settings: dict[str, Any]) -> None:
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    producer = clients.producer(bootstrap, client_id="sasl-test", ack_timeout=30, **settings)
    try:
        producer.send(topic, key=b"k", value=b"hello").get(timeout=30)
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **settings)
    try:
        received: list[bytes] = []

        def read() -> None:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(record.value for record in records)
            assert received == [b"hello"]

        assert_eventually(read, timeout=30, interval=0)
    finally:
        consumer.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_with_the_ca_from_a_secret(sasl_broker: SaslBroker, mechanism: str) -> None:
    settings = _settings(sasl_broker, mechanism=mechanism, ca={"name": "kafka-ca", "key": "ca.crt"})
    _round_trip(sasl_broker.sasl_ssl, settings)


def test_plain_without_tls(sasl_broker: SaslBroker) -> None:
    _round_trip(sasl_broker.sasl_plaintext, _settings(sasl_broker, mechanism="PLAIN", tls=False))


def test_a_wrong_password_is_refused(sasl_broker: SaslBroker) -> None:
    settings = _settings(
        sasl_broker, password="wrong", mechanism="SCRAM-SHA-512", ca={"name": "kafka-ca", "key": "ca.crt"}
    )
    with pytest.raises(KafkaError):
        clients.producer(sasl_broker.sasl_ssl, client_id="sasl-test", ack_timeout=5, **settings).close()


def test_an_untrusted_broker_certificate_is_refused(sasl_broker: SaslBroker) -> None:
    # No ca: the system CAs, which did not sign the test broker's certificate.
    settings = _settings(sasl_broker, mechanism="SCRAM-SHA-512")
    with pytest.raises(KafkaError):
        clients.producer(sasl_broker.sasl_ssl, client_id="sasl-test", ack_timeout=5, **settings).close()
