"""A Connector's Kafka ``auth`` as kafka-python settings: SASL mechanism and credentials from Secrets, TLS with the
CA from a Secret, and a clear error naming a Secret key that is missing."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from connectors.kafka.clients import SecretMissingError, security_settings
from crds.connector import KafkaAuth
from engine import StaticSecretResolver
from engine.executors.resolvers import DirectorySecretResolver

CREDENTIALS = {"kafka-user": {"username": "claims-app", "password": "pw"}}


def auth(**fields: Any) -> KafkaAuth:
    return KafkaAuth.model_validate(
        {"username": {"name": "kafka-user", "key": "username"}, "password": {"name": "kafka-user", "key": "password"}}
        | fields
    )


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A self-signed CA certificate, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a CA certificate")
    folder: Path = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=aiplane-test-kafka-ca",
            "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return (folder / "ca.crt").read_text()


def test_no_auth_is_plaintext() -> None:
    assert security_settings(None, None) == {}


def test_scram_over_tls_with_the_ca_from_a_secret(ca_pem: str) -> None:
    secrets = StaticSecretResolver({**CREDENTIALS, "kafka-ca": {"ca.crt": ca_pem}})
    settings = security_settings(auth(mechanism="SCRAM-SHA-256", ca={"name": "kafka-ca", "key": "ca.crt"}), secrets)
    context = settings.pop("ssl_context")
    assert settings == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "claims-app",
        "sasl_plain_password": "pw",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # Only the Secret's CA is trusted, not the system's.
    (trusted,) = context.get_ca_certs()
    assert (("commonName", "aiplane-test-kafka-ca"),) in trusted["subject"]


def test_tls_without_a_ca_trusts_the_system_cas() -> None:
    settings = security_settings(auth(), StaticSecretResolver(CREDENTIALS))
    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert settings["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_plain_without_tls() -> None:
    settings = security_settings(auth(mechanism="PLAIN", tls=False), StaticSecretResolver(CREDENTIALS))
    assert settings == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "claims-app",
        "sasl_plain_password": "pw",
    }


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"kafka-user": {"username": "claims-app"}}, "auth.password needs secret kafka-user/password"),
        ({**CREDENTIALS}, "auth.ca needs secret kafka-ca/ca.crt"),
    ],
)
def test_a_missing_secret_is_named(secrets: dict[str, dict[str, str]], message: str) -> None:
    with pytest.raises(SecretMissingError, match=message):
        security_settings(auth(ca={"name": "kafka-ca", "key": "ca.crt"}), StaticSecretResolver(secrets))


def test_a_ca_that_is_not_pem_is_refused() -> None:
    secrets = StaticSecretResolver({**CREDENTIALS, "kafka-ca": {"ca.crt": "not a certificate"}})
    with pytest.raises(ValueError, match="is not PEM certificates"):
        security_settings(auth(ca={"name": "kafka-ca", "key": "ca.crt"}), secrets)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_python_accepts_the_settings(mechanism: str, ca_pem: str) -> None:
    secrets = StaticSecretResolver({**CREDENTIALS, "kafka-ca": {"ca.crt": ca_pem}})
    settings = security_settings(auth(mechanism=mechanism, ca={"name": "kafka-ca", "key": "ca.crt"}), secrets)
    # api_version given: the client does not contact the (absent) broker to construct itself.
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", api_version=(3, 0), **settings)
    consumer.close()


def test_secrets_mounted_as_files(tmp_path: Path, ca_pem: str) -> None:
    # The Connector operator mounts each named key at <AIPLANE_SECRETS_DIR>/<secret>/<key>.
    for secret, key, value in [
        ("kafka-user", "username", "claims-app"),
        ("kafka-user", "password", "pw"),
        ("kafka-ca", "ca.crt", ca_pem),
    ]:
        (tmp_path / secret).mkdir(exist_ok=True)
        (tmp_path / secret / key).write_text(value)
    secrets = DirectorySecretResolver(tmp_path)
    settings = security_settings(auth(ca={"name": "kafka-ca", "key": "ca.crt"}), secrets)
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("claims-app", "pw")
    assert len(settings["ssl_context"].get_ca_certs()) == 1
    assert secrets.secret("kafka-user", "missing") is None
    assert secrets.secret("..", "kafka-user") is None
