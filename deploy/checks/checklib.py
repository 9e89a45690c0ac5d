"""Paths, the result type and small helpers shared by the deploy checks (deploycheck.py)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field

import yaml


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
OVERLAYS = ["cpu", "gpu"]
# Kubernetes versions every manifest is validated against: 1.30 (the oldest supported;
# native gRPC probes are GA since 1.27) and a recent one.
K8S_VERSIONS = ["1.30.0", "1.33.0"]
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "mesaserve.json")
RULE_FILES = sorted(glob.glob(os.path.join(DEPLOY, "prometheus", "rules", "*.yml")))
RULE_TESTS = sorted(glob.glob(os.path.join(DEPLOY, "prometheus", "tests", "*.yml")))
ADAPTER_VALUES = os.path.join(K8S, "monitoring", "prometheus-adapter-values.yaml")
SERVICE_MONITOR = os.path.join(K8S, "monitoring", "servicemonitor.yaml")
COMPOSE_FILES = [os.path.join(DEPLOY, "compose.yaml"), os.path.join(DEPLOY, "compose.gpu.yaml")]

# Series Prometheus itself adds to every target, and labels it attaches to every series.
SYNTHETIC_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                     "scrape_samples_post_metric_relabeling", "scrape_series_added",
                     "ALERTS", "ALERTS_FOR_STATE"}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "node", "container", "service",
                 "endpoint"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class CheckFailed(Exception):
    pass


@dataclass
class Result:
    name: str
    errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def error(self, msg):
        self.errors.append(msg)

    def note(self, msg):
        self.notes.append(msg)


def rel(path):
    return os.path.relpath(path, ROOT)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def tool(name):
    """Finds a console script: next to this Python's own scripts (where pip put it), or on PATH."""
    candidate = os.path.join(sysconfig.get_path("scripts"), name)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found:
        return found
    raise CheckFailed(f"`{name}` not found: run scripts/install-deploy-tools.sh")


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)
