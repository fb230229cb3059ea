"""The Kubernetes manifests in deploy/kubernetes/, parsed, for the tests that check them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (document,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    return document


def pod_templates() -> dict[str, dict[str, Any]]:
    """Every pod spec the manifests create, by the workload's name."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in manifests()
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    }
