"""The four aiplane resources (API group aiplane.io/v1alpha1) as pydantic models.

These classes are the one source of truth: the CRD YAML beside them is generated from them, and the engine,
gateway and operators parse manifests with them.
"""

from crds.base import API_GROUP, API_VERSION, Condition, Resource
from crds.connector import Connector, ConnectorSpec, ConnectorStatus
from crds.model import Model, ModelSpec, ModelStatus
from crds.policy import Policy, PolicySpec, PolicyStatus
from crds.workflow import Step, Workflow, WorkflowSpec, WorkflowStatus

RESOURCES: tuple[type[Resource], ...] = (Model, Workflow, Connector, Policy)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "RESOURCES",
    "Condition",
    "Connector",
    "ConnectorSpec",
    "ConnectorStatus",
    "Model",
    "ModelSpec",
    "ModelStatus",
    "Policy",
    "PolicySpec",
    "PolicyStatus",
    "Resource",
    "Step",
    "Workflow",
    "WorkflowSpec",
    "WorkflowStatus",
]
