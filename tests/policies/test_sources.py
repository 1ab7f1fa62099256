"""The policy set enforcement points read: cached effective policies, and a change visible to the next call."""

from __future__ import annotations

from crds.policy import Policy
from policies.effective import Target
from policies.sources import PolicySet

TARGET = Target("Workflow", "claims", "default", {"team": "claims"})


def residency(name: str, *regions: str) -> Policy:
    return Policy.model_validate(
        {"metadata": {"name": name, "namespace": "default"}, "spec": {"residency": {"regions": list(regions)}}}
    )


def test_effective_policies_are_cached_until_a_change() -> None:
    policies = PolicySet([residency("eu", "eu-west", "eu-central")])
    first = policies.effective(TARGET)
    assert first.regions == frozenset({"eu-west", "eu-central"})
    assert policies.effective(TARGET) is first  # cached

    policies.put(residency("strict", "eu-west"))
    assert policies.effective(TARGET).regions == frozenset({"eu-west"})
    policies.put(residency("strict", "eu-central"))  # the same policy, changed
    assert policies.effective(TARGET).regions == frozenset({"eu-central"})
    policies.remove(("default", "strict"))
    assert policies.effective(TARGET).regions == frozenset({"eu-west", "eu-central"})
    policies.replace([])
    assert policies.effective(TARGET).sources == ()
    assert policies.revision == 4
    policies.remove(("default", "absent"))
    assert policies.revision == 4


def test_listeners_see_every_change() -> None:
    policies = PolicySet([residency("eu", "eu-west")])
    calls = [0]

    def breaks_after_the_first_call(_: tuple[Policy, ...]) -> None:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("consumer bug")

    seen: list[list[str]] = []
    policies.on_change(breaks_after_the_first_call)
    policies.on_change(lambda current: seen.append([p.metadata["name"] for p in current]))
    policies.put(residency("strict", "eu-west"))
    policies.remove(("default", "absent"))  # no change, no call
    policies.remove(("default", "eu"))
    assert seen == [["eu"], ["eu", "strict"], ["strict"]]
    assert calls[0] == 3
