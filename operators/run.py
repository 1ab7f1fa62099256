"""Runs every aiplane operator in this process against the current cluster (KUBECONFIG, or in-cluster config).

What ``aiplane operator`` and the chart's operator Deployment run. Replicas elect a leader through kopf peering
(see ``operators.peering``); the others keep their watches open but act on nothing until the leader is gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
import kubernetes

from operators import peering
from operators.connector import handlers as connector_handlers
from operators.connector.config import Config as ConnectorConfig
from operators.connector.reconciler import Reconciler as ConnectorReconciler
from operators.model import handlers as model_handlers
from operators.model.analysis import PrometheusAnalyzer
from operators.model.config import Config
from operators.model.kube import Kube, new_api_client
from operators.model.promotion import Approvals, Demands
from operators.model.reconciler import Reconciler
from operators.model.rollout import Event
from operators.policy import decisions
from operators.policy import handlers as policy_handlers
from operators.policy.reconciler import Reconciler as PolicyReconciler
from operators.workflow import handlers as workflow_handlers
from operators.workflow.reconciler import Reconciler as WorkflowReconciler

log = logging.getLogger(__name__)
KOPF_PREFIX = "operator.aiplane.io"


class PeeringMissingError(RuntimeError):
    """The peering CRDs are not installed; the message says how to install them."""


def ensure_peering(client: kubernetes.client.ApiClient) -> None:
    """Create the cluster-wide peering object if it is missing (the CRDs must be installed already)."""
    custom = kubernetes.client.CustomObjectsApi(client)
    try:
        custom.create_cluster_custom_object(peering.GROUP, "v1", "clusterkopfpeerings", peering.peering_object())
    except kubernetes.client.ApiException as error:
        if error.status == 409:
            return
        if error.status == 404:
            raise PeeringMissingError(
                "the kopf peering CRDs are not installed; install aiplane's CRDs first: "
                "aiplane crds | kubectl apply --server-side -f -"
            ) from error
        raise


def settings(peering_lifetime_s: int) -> kopf.OperatorSettings:
    config = kopf.OperatorSettings()
    # Progress and the last handled spec go in annotations: the Model's status has a schema of its own, which
    # would prune kopf's default status.kopf field. Under a prefix of their own, because kopf leaves every
    # annotation under its prefix out of change detection, and the user's aiplane.io/ controls must count.
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    config.peering.lifetime = peering_lifetime_s
    config.peering.mandatory = True
    # Reconnect watches now and then, so a watch that silently stalled (proxies, apiserver restarts) recovers.
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    # Only warnings become Kubernetes Events by themselves; the rollout posts its own (kopf.event), and an Event
    # per successful handler run would double the operator's writes.
    config.posting.level = logging.WARNING
    return config


def _post_event(body: dict[str, Any], event: Event) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=event.type, reason=event.reason, message=event.message)


def run(
    config: Config,
    *,
    peering_lifetime_s: int = 60,
    liveness_endpoint: str | None = None,
    stop_flag: threading.Event | None = None,
    record_decision: decisions.Recorder | None = None,
    approvals: Approvals | None = None,
    demands: Demands | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop_flag``); blocks. ``record_decision``: where rollout decisions go (the
    audit log), if anywhere. ``approvals``: the engine's approvals, for promotions that need one; ``demands``:
    what the Policies selecting a Model demand of its promotions."""
    # kopf logs every handler run at INFO; at a thousand Models that buries the operator's own log lines.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    client = new_api_client(pool_size=config.api_threads)
    ensure_peering(client)
    analyzer = PrometheusAnalyzer(config.prometheus_url) if config.prometheus_url else None
    post = _post_event if record_decision is None else decisions.recording(_post_event, record_decision)
    reconciler = Reconciler(
        kube=Kube(client), config=config, post_event=post, analyzer=analyzer, approvals=approvals, demands=demands
    )
    workflows = WorkflowReconciler(custom=kubernetes.client.CustomObjectsApi(client))
    connector_config = ConnectorConfig.from_env()
    connectors = ConnectorReconciler(kube=Kube(client), config=connector_config)
    policies = PolicyReconciler(
        custom=kubernetes.client.CustomObjectsApi(client),
        core=kubernetes.client.CoreV1Api(client),
        key=connector_config.consumer_pii_key,
    )
    handlers = [
        model_handlers.__name__,
        workflow_handlers.__name__,
        connector_handlers.__name__,
        policy_handlers.__name__,
    ]
    log.info(
        "operator starting",
        extra={
            "operators": ["model", "workflow", "connector", "policy"],
            "handlers": handlers,
            "prometheus": config.prometheus_url,
        },
    )
    loop = asyncio.new_event_loop()
    # Applies and status writes are blocking client calls run in threads; the default pool (cores + 4) would
    # queue them behind each other whenever many Models change at once.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=config.api_threads, thread_name_prefix="kube"))
    kopf.run(
        clusterwide=True,
        peering_name=peering.PEERING_NAME,
        priority=peering.start_priority(),
        settings=settings(peering_lifetime_s),
        memo=kopf.Memo(
            model_reconciler=reconciler,
            workflow_reconciler=workflows,
            connector_reconciler=connectors,
            policy_reconciler=policies,
        ),
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        loop=loop,
    )
