"""Checks a Model's spec for what the CRD schema cannot express, so a bad spec becomes a condition that says
what to fix instead of an apply the apiserver refuses on every retry."""

from __future__ import annotations

import re

from crds.model import Model

# Kubernetes' own quantity grammar (resource.Quantity); the CRD's pattern is looser so its error can be friendlier.
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$")


def problems(model: Model, default_image: str | None) -> list[str]:
    """Everything wrong with the spec, each naming the field; empty when the Model can be served."""
    found: list[str] = []
    spec = model.spec
    for field, value in (("spec.resources.cpu", spec.resources.cpu), ("spec.resources.memory", spec.resources.memory)):
        if not _QUANTITY.match(str(value)):
            found.append(f"{field}: {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    gpu = spec.resources.gpu
    if gpu is not None and gpu.count == 0 and gpu.type is not None:
        found.append("spec.resources.gpu.type is set but gpu.count is 0; set a count or remove the gpu block")
    if spec.min_replicas > spec.max_replicas:
        found.append(f"spec.minReplicas ({spec.min_replicas}) is above spec.maxReplicas ({spec.max_replicas})")
    if spec.image is None and default_image is None:
        found.append("spec.image is not set and the operator has no default serving image (AIPLANE_SERVING_IMAGE)")
    if spec.canary is not None:
        if spec.canary.version == spec.version:
            found.append("spec.canary.version must differ from spec.version")
        if spec.rollout is not None:
            # The CRD refuses both at once; a Model stored under an older CRD can still hold them.
            found.append(
                "spec.canary and spec.rollout are both set: set one (with spec.rollout, change spec.version to roll "
                "a version out)"
            )
    for field, strategy in (("spec.canary", spec.canary), ("spec.rollout", spec.rollout)):
        if strategy is not None and len(set(strategy.steps)) != len(strategy.steps):
            found.append(f"{field}.steps {strategy.steps} repeats a weight")
    return found
