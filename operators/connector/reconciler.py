"""One reconcile of one Connector: resolve its secrets, ask the broker, apply the consumer Deployment, fold status.

The broker is asked when the Connector changes and on the recheck timer, not when its Deployment's status moves
(pods starting would otherwise cost a broker round trip each); those reconciles reuse the last answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pydantic

from crds.connector import Connector, ConnectorSpec, ConnectorStatus
from operators.connector import broker, builders
from operators.connector import status as statuses
from operators.connector.config import Config
from operators.model.kube import Kube
from operators.statusbook import StatusBook

log = logging.getLogger(__name__)
PLURAL = "connectors"
Prober = Callable[..., broker.Probe]


class ForbiddenError(Exception):
    """The operator's ServiceAccount may not read what it checks; the message says what to grant."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Reconciler:
    kube: Kube
    config: Config
    prober: Prober = broker.partitions
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC).replace(microsecond=0))
    # Connector uid -> the broker's last answer.
    _probes: dict[str, broker.Probe] = field(default_factory=dict)
    # Connector uid -> digest of the Deployment this process last applied, and the generation that made.
    _applied: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Connector uid -> what its consumers' ServiceAccount may not do, as the apiserver last answered.
    _denied: dict[str, list[str]] = field(default_factory=dict)

    book: StatusBook = field(init=False)

    def __post_init__(self) -> None:
        self.book = StatusBook(self.kube.custom, PLURAL)

    def forget(self, namespace: str, name: str, uid: str | None) -> None:
        self.book.forget(namespace, name, uid)
        for cache in (self._probes, self._applied, self._denied):
            cache.pop(uid or "", None)

    def invalidate(self, uid: str, generation: int | None) -> None:
        """The Deployment changed (``generation``) or was deleted (None): apply it again next time, unless the
        change was the one this process made."""
        known = self._applied.get(uid)
        if known is not None and (generation is None or known[1] != generation):
            del self._applied[uid]

    async def converge(
        self, body: Mapping[str, Any], consumers: statuses.Consumers | None, *, ask_broker: bool
    ) -> None:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        key = (str(meta["namespace"]), str(meta["name"]))
        async with self.book.lock(*key):
            await self._converge(body, consumers, ask_broker=ask_broker)

    async def _converge(
        self, body: Mapping[str, Any], consumers: statuses.Consumers | None, *, ask_broker: bool
    ) -> None:
        meta = dict(body["metadata"])
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        previous = self.book.previous(body, ConnectorStatus)
        try:
            spec = ConnectorSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as error:
            # The apiserver's schema makes this rare (an older CRD, or a field the models tightened since).
            problems = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            await self._write_status(
                namespace, name, uid, statuses.invalid(previous, generation, problems, self.clock())
            )
            return
        connector = Connector(metadata=meta, spec=spec, status=previous)
        try:
            missing, credentials = await asyncio.to_thread(self._resolve, connector)
            account = builders.service_account(connector, self.config)
            account_missing = account is not None and not await asyncio.to_thread(self._exists, namespace, account)
            denied: list[str] = []
            if account is not None and not account_missing:
                cached = self._denied.get(uid)
                if ask_broker or cached is None:
                    cached = self._denied[uid] = await asyncio.to_thread(self._denied_to, namespace, account)
                denied = cached
        except ForbiddenError as error:
            # Without get on secrets or serviceaccounts (RBAC) nothing can be checked: say so rather than retry in
            # silence.
            found = statuses.Found(missing_secrets=[], forbidden=str(error), forbidden_reason=error.reason)
            folded = statuses.fold(connector, generation=generation, found=found, now=self.clock())
            await self._write_status(namespace, name, uid, folded)
            return
        kafka = spec.kafka_source or spec.kafka_sink
        probe: broker.Probe | None = None
        # Consumer pods without their Secrets or ServiceAccount would not start (or not even be created).
        if kafka is not None and not missing and not account_missing and not denied:
            probe = self._probes.get(uid)
            if ask_broker or probe is None:
                probe = await asyncio.to_thread(
                    self.prober,
                    kafka.bootstrap_servers,
                    kafka.topic,
                    dead_letter_topic=spec.kafka_source.dead_letters_to if spec.kafka_source is not None else None,
                    credentials=credentials,
                    timeout_s=self.config.broker_timeout_s,
                )
                self._probes[uid] = probe
        desired: int | None = None
        source = spec.kafka_source
        if source is not None and probe is not None and probe.partitions is not None:
            desired = builders.consumers(source.replicas, probe.partitions)
            owner = builders.Owner(name=name, namespace=namespace, uid=uid)
            await self._apply(uid, builders.deployment(connector, owner, desired, self.config))
        elif source is None and consumers is not None:
            # No longer a kafkaSource: its consumers have nothing to do.
            await asyncio.to_thread(self.kube.delete, "Deployment", namespace, builders.deployment_name(name))
            self._applied.pop(uid, None)
            consumers = None
        found = statuses.Found(
            missing_secrets=missing,
            probe=probe,
            consumers=consumers,
            desired=desired,
            account=account,
            account_missing=account_missing,
            account_denied=denied,
        )
        folded = statuses.fold(connector, generation=generation, found=found, now=self.clock())
        await self._write_status(namespace, name, uid, folded)

    def _resolve(self, connector: Connector) -> tuple[list[str], broker.Credentials | None]:
        """What is missing of the Secret keys the Connector names, and its SASL credentials when all are there."""
        namespace = str(connector.metadata["namespace"])
        secrets: dict[str, dict[str, str] | None] = {}
        missing: list[str] = []
        for where, ref in builders.secret_refs(connector, self.config):
            if ref.name not in secrets:
                secrets[ref.name] = self._secret_data(namespace, ref.name)
            data = secrets[ref.name]
            if data is None:
                missing.append(f"Secret {ref.name!r} (for {where}) does not exist")
            elif ref.key not in data:
                missing.append(f"Secret {ref.name!r} has no key {ref.key!r} (for {where})")
        kafka = connector.spec.kafka_source or connector.spec.kafka_sink
        if missing or kafka is None or kafka.auth is None:
            return missing, None
        auth = kafka.auth
        user = secrets[auth.username.name] or {}
        password = secrets[auth.password.name] or {}
        ca = _decode((secrets[auth.ca.name] or {})[auth.ca.key]) if auth.ca is not None else None
        credentials = broker.Credentials(
            mechanism=auth.mechanism,
            username=_decode(user[auth.username.key]),
            password=_decode(password[auth.password.key]),
            tls=auth.tls,
            ca=ca,
        )
        return missing, credentials

    def _exists(self, namespace: str, account: str) -> bool:
        """Whether the consumers' ServiceAccount is in the Connector's namespace. Checked, not made: making it would
        take the operator create on serviceaccounts, roles and rolebindings in every namespace, and the Secrets the
        pods need there too (the store's URL, the PII key) are not the operator's to copy where it is told to."""
        try:
            self.kube.core.read_namespaced_service_account(account, namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False
            if error.status == 403:
                raise ForbiddenError(
                    "ServiceAccountsForbidden",
                    f"the operator may not read ServiceAccount {account!r} in namespace {namespace} (403 Forbidden); "
                    "grant its ServiceAccount get on serviceaccounts",
                ) from error
            raise
        return True

    def _denied_to(self, namespace: str, account: str) -> list[str]:
        """What of its watches (``CONSUMER_RULES``) the consumers' ServiceAccount may not do in the Connector's
        namespace, as "verb resource", asked of the apiserver's authorizer (SubjectAccessReview): without them a
        governed consumer exits at start and its pod restarts over and over."""
        authorization = kubernetes.client.AuthorizationV1Api(self.kube.core.api_client)
        denied: list[str] = []
        for resource, verb in builders.CONSUMER_RULES:
            review = kubernetes.client.V1SubjectAccessReview(
                spec=kubernetes.client.V1SubjectAccessReviewSpec(
                    user=f"system:serviceaccount:{namespace}:{account}",
                    # The groups every ServiceAccount token carries, so grants to them count as they would.
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                    resource_attributes=kubernetes.client.V1ResourceAttributes(
                        namespace=namespace, verb=verb, group=builders.GROUP, resource=resource
                    ),
                )
            )
            try:
                answer = authorization.create_subject_access_review(review)
            except kubernetes.client.ApiException as error:
                if error.status == 403:
                    raise ForbiddenError(
                        "AccessReviewsForbidden",
                        f"the operator may not ask what ServiceAccount {account!r} in namespace {namespace} may do "
                        "(403 Forbidden); grant its ServiceAccount create on subjectaccessreviews "
                        "(group authorization.k8s.io)",
                    ) from error
                raise
            if answer.status is None or not answer.status.allowed:
                denied.append(f"{verb} {resource}")
        return denied

    def _secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = self.kube.core.read_namespaced_secret(name, namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            if error.status == 403:
                raise ForbiddenError(
                    "SecretsForbidden",
                    f"the operator may not read Secret {name!r} in namespace {namespace} (403 Forbidden); "
                    "grant its ServiceAccount get on secrets",
                ) from error
            raise
        return {key: value if isinstance(value, str) else value.decode() for key, value in (secret.data or {}).items()}

    async def _apply(self, uid: str, deployment: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(deployment, sort_keys=True).encode()).hexdigest()
        if self._applied.get(uid, ("", 0))[0] == digest:
            return
        stored = await asyncio.to_thread(self.kube.apply, deployment)
        self._applied[uid] = (digest, int(stored.get("metadata", {}).get("generation") or 0))
        meta = deployment["metadata"]
        log.info(
            "applied",
            extra={
                "connector": f"{meta['namespace']}/{meta['ownerReferences'][0]['name']}",
                "objects": [f"Deployment/{meta['name']}"],
                "replicas": deployment["spec"]["replicas"],
            },
        )

    async def _write_status(self, namespace: str, name: str, uid: str, status: ConnectorStatus) -> None:
        await self.book.write(namespace, name, uid, statuses.to_patch(status))


def _decode(value: str) -> str:
    return base64.b64decode(value).decode() if value else ""
