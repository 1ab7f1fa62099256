"""Reads aiplane manifests (YAML files or folders) into the typed resource models, with errors a user can act on."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aiplane import admission
from crds import API_GROUP, RESOURCES, Resource, Workflow, checks

KINDS: dict[str, type[Resource]] = {resource.KIND: resource for resource in RESOURCES}


# Not frozen: raising sets __traceback__ on the exception, which a frozen dataclass refuses (FrozenInstanceError in
# place of the error, seen when it is raised inside a contextmanager).
@dataclass(eq=False)
class ManifestError(Exception):
    """A manifest that cannot be used, with where it is and what to fix."""

    source: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


def files(paths: Iterable[Path]) -> Iterator[Path]:
    """The manifest files of ``paths``: files as given, and the YAML files under folders, in name order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        else:
            yield path


def field_path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location written as Kubernetes writes field paths: spec.steps[0].type."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<root>"


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{field_path(item['loc'])}: {item['msg']}" for item in error.errors())


def parse(document: dict[str, Any], source: str) -> Resource | None:
    """Validate one document; documents of other API groups are not ours and are skipped (None)."""
    api_version = str(document.get("apiVersion", ""))
    if not api_version.startswith(API_GROUP + "/"):
        return None
    kind = document.get("kind")
    resource = KINDS.get(str(kind))
    if resource is None:
        raise ManifestError(source, f"unknown kind {kind!r}; aiplane.io kinds are {', '.join(KINDS)}")
    try:
        parsed = resource.model_validate(document)
    except ValidationError as error:
        raise ManifestError(source, _describe(error)) from None
    problems = admission.violations(parsed)
    if isinstance(parsed, Workflow):
        # What the Workflow operator would report as Valid=False (cycles, CEL that does not compile).
        problems += [f"spec.{p.field}: {p.message}" for p in checks.problems(parsed.spec)]
    if problems:
        raise ManifestError(source, "; ".join(problems))
    return parsed


def load(paths: Iterable[Path]) -> list[Resource]:
    """All aiplane resources in the given files and folders, in file order; the first bad one raises."""
    resources: list[Resource] = []
    for file in files(paths):
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as error:
            raise ManifestError(str(file), f"cannot read YAML: {error}") from None
        for index, document in enumerate(documents):
            if document is None:
                continue
            name = document.get("metadata", {}).get("name", "?") if isinstance(document, dict) else "?"
            source = f"{file}#{index} ({name})"
            if not isinstance(document, dict):
                raise ManifestError(source, "a manifest must be a mapping")
            resource = parse(document, source)
            if resource is not None:
                resources.append(resource)
    return resources
