"""The pure builders: what a Model turns into, checked without a cluster."""

from __future__ import annotations

from crds.model import Model
from operators.model import builders, naming, validation
from operators.model.builders import LiveVersion, Owner
from tests.operators.models import claims_manifest, model

OWNER = Owner(name="claims-extractor", namespace="team-a", uid="0000-1111")


def claims() -> Model:
    return Model.model_validate(claims_manifest())


def test_gpu_model_deployment_requests_gpus_on_the_declared_product_and_tolerates_the_taint() -> None:
    live = LiveVersion("1.0.0", "service:ClaimsExtractor", "img:1", None)
    dep = builders.deployment(claims(), OWNER, live)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    # The example declares the toleration itself, so it is not added twice.
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "args" not in container
    assert container["command"] == [
        "bentoml",
        "serve",
        "service:ClaimsExtractor",
        "--host",
        "0.0.0.0",
        "--port",
        "3000",
    ]
    assert container["image"] == "img:1"
    # The autoscaler owns the replica count: it must not be in what the operator applies.
    assert "replicas" not in dep["spec"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_gpu_toleration_is_added_when_the_model_declares_none() -> None:
    dep = builders.deployment(model(resources={"gpu": {"count": 2}}), OWNER, LiveVersion("1.0.0", "b", "i", 1))
    pod = dep["spec"]["template"]["spec"]
    assert pod["tolerations"] == [builders.GPU_TOLERATION]
    assert "nodeSelector" not in pod  # no GPU type: any GPU will do
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_cpu_model_has_no_gpu_limit_toleration_or_selector() -> None:
    dep = builders.deployment(model(), OWNER, LiveVersion("1.0.0", "b", "i", 3))
    pod = dep["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod
    assert "nodeSelector" not in pod
    assert dep["spec"]["replicas"] == 3


def test_children_carry_the_controller_owner_reference_and_version_labels() -> None:
    m = claims()
    objects = [
        builders.deployment(m, OWNER, LiveVersion("1.0.0", "b", "i", None)),
        builders.service(m, OWNER, "1.0.0"),
        builders.pod_disruption_budget(OWNER, "1.0.0"),
        builders.horizontal_pod_autoscaler(m, OWNER, "1.0.0"),
    ]
    for obj in objects:
        assert obj is not None
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "aiplane.io/v1alpha1",
                "kind": "Model",
                "name": "claims-extractor",
                "uid": "0000-1111",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert obj["metadata"]["labels"][naming.LABEL_MODEL] == "claims-extractor"
        assert obj["metadata"]["labels"][naming.LABEL_MANAGED_BY] == "aiplane-operator"


def test_service_and_budget_select_exactly_the_versions_pods() -> None:
    dep = builders.deployment(claims(), OWNER, LiveVersion("1.0.0", "b", "i", None))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (
        builders.service(claims(), OWNER, "1.0.0")["spec"]["selector"],
        builders.pod_disruption_budget(OWNER, "1.0.0")["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"],
    ):
        assert selector == {"aiplane.io/model": "claims-extractor", "aiplane.io/version": "1.0.0"}
        assert selector.items() <= pod_labels.items()


def test_hpa_scales_on_concurrency_as_the_example_declares() -> None:
    hpa = builders.horizontal_pod_autoscaler(claims(), OWNER, "1.0.0")
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["maxReplicas"] == 4
    assert hpa["spec"]["scaleTargetRef"]["name"] == naming.child_name("claims-extractor", "1.0.0")
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": builders.CONCURRENCY_METRIC},
                "target": {"type": "AverageValue", "averageValue": "8"},
            },
        }
    ]


def test_hpa_on_cpu_and_none_when_scaled_to_zero() -> None:
    hpa = builders.horizontal_pod_autoscaler(model(scaleTarget=70, maxReplicas=5), OWNER, "1.0.0")
    assert hpa is not None
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert builders.horizontal_pod_autoscaler(model(minReplicas=0), OWNER, "1.0.0") is None
    # A fixed size needs no autoscaler: the Deployment gets the count itself.
    assert builders.horizontal_pod_autoscaler(model(minReplicas=3, maxReplicas=3), OWNER, "1.0.0") is None


def test_child_names_are_dns_labels_unique_per_version_and_at_most_63_characters() -> None:
    versions = ["1.4.0", "1-4-0", "V2_rc", "v2-rc", "x" * 63]
    names = [naming.child_name("a" * 50, v) for v in versions]
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= 63
        assert name == name.lower()
        assert all(c.isalnum() or c == "-" for c in name)
        assert name[0].isalnum()
        assert name[-1].isalnum()
    assert naming.child_name("m", "v2-rc") == "m-v2-rc"


def test_service_url_is_the_in_cluster_dns_name() -> None:
    assert builders.service_url(claims(), OWNER, "1.0.0") == (
        f"http://{naming.child_name('claims-extractor', '1.0.0')}.team-a.svc:3000"
    )


def test_validation_names_each_field_the_schema_cannot_check() -> None:
    problems = validation.problems(
        model(resources={"cpu": "two", "memory": "1.2.3", "gpu": {"count": 0, "type": "NVIDIA-A100"}}), None
    )
    assert len(problems) == 4
    assert any(p.startswith("spec.resources.cpu: 'two'") for p in problems)
    assert any(p.startswith("spec.resources.memory: '1.2.3'") for p in problems)
    assert any(p.startswith("spec.resources.gpu.type") for p in problems)
    assert any(p.startswith("spec.image") for p in problems)
    assert validation.problems(claims(), "img") == []
