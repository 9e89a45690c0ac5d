#!/usr/bin/env python3
"""Self-test of deploycheck.py: each check must catch a typical mistake.

Copies the files deploycheck.py reads into a temporary tree, breaks one thing at a time
and asserts that the expected check fails with the expected reason (and that the
unbroken copy passes). Run by `scripts/check-deploy.sh --self-test`.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COPIED = ["deploy", "Dockerfile", ".dockerignore", "docs/server-interface.md", "CMakeLists.txt",
          "cli/CMakeLists.txt", "scripts/install-deps.sh", "scripts/build.sh"]


def edit(path, old, new, count=1):
    def f(root):
        p = os.path.join(root, path)
        s = open(p).read()
        if old not in s:
            raise AssertionError(f"self-test is stale: {old!r} not in {path}")
        open(p, "w").write(s.replace(old, new, count))
    return f


def append(path, text):
    def f(root):
        with open(os.path.join(root, path), "a") as fh:
            fh.write(text)
    return f


# (description, mutation, failing check, regex the failure must contain)
CASES = [
    ("root user in the image", edit("Dockerfile", "USER 10001:10001", "USER root"),
     "dockerfile", r"numeric non-root"),
    ("no gRPC health check", edit("Dockerfile", "mesaserve health", "true"),
     "dockerfile", r"HEALTHCHECK must use"),
    ("unpinned apt install", append("Dockerfile", "RUN apt-get update && apt-get install curl\n"),
     "hadolint", r"DL3008|DL3015|DL3009"),
    ("model left out of the build context", append(".dockerignore", "/models\n"),
     "dockerfile", r"excluded by \.dockerignore"),
    ("unknown MESA_ variable in the image", edit("Dockerfile", "MESA_LOG_LEVEL=info", "MESA_LOGLEVEL=info"),
     "dockerfile", r"MESA_LOGLEVEL is not a flag"),
    ("misspelt probe field", edit("deploy/k8s/base/deployment.yaml", "startupProbe:\n            grpc:",
                                  "startupProbe:\n            grcp:"),
     "kubernetes", r"invalid for Kubernetes"),
    ("HTTP readiness probe", edit("deploy/k8s/base/deployment.yaml",
                                  "readinessProbe:\n            grpc:\n              port: 50051",
                                  "readinessProbe:\n            tcpSocket:\n              port: 50051"),
     "kubernetes", r"readinessProbe must be a grpc probe"),
    ("grace period shorter than the drain", edit("deploy/k8s/base/deployment.yaml",
                                                 "terminationGracePeriodSeconds: 45",
                                                 "terminationGracePeriodSeconds: 20"),
     "kubernetes", r"terminationGracePeriodSeconds 20 must exceed"),
    ("longer drain in the ConfigMap", edit("deploy/k8s/base/kustomization.yaml",
                                           "MESA_DRAIN_TIMEOUT=30", "MESA_DRAIN_TIMEOUT=60"),
     "kubernetes", r"must exceed MESA_DRAIN_TIMEOUT 60"),
    ("Service selects nothing", edit("deploy/k8s/base/service-headless.yaml",
                                     "app.kubernetes.io/component: server\n  ports",
                                     "app.kubernetes.io/component: sever\n  ports"),
     "kubernetes", r"mesaserve-headless selects no mesaserve pod"),
    ("HPA on an unknown metric", edit("deploy/k8s/base/horizontalpodautoscaler.yaml",
                                      "name: mesa_requests_waiting", "name: mesa_request_waiting"),
     "kubernetes", r"mesa_request_waiting is not a gauge"),
    ("GPU overlay without a GPU", edit("deploy/k8s/overlays/gpu/deployment-patch.yaml",
                                       '              nvidia.com/gpu: "1"\n', "", count=2),
     "kubernetes", r"overlay gpu: no nvidia.com/gpu limit"),
    ("metric name typo in an alert", edit("deploy/prometheus/rules/mesaserve-alerts.yml",
                                          "expr: mesa_requests_waiting{", "expr: mesa_requests_waitin{"),
     "metric-names", r"mesa_requests_waitin is not in docs/server-interface.md"),
    ("histogram queried without _bucket", edit("deploy/prometheus/rules/mesaserve-alerts.yml",
                                               "mesa_time_to_first_token_seconds_bucket", "mesa_time_to_first_token_seconds"),
     "metric-names", r"is a histogram"),
    ("label value typo", edit("deploy/prometheus/rules/mesaserve-alerts.yml",
                              'outcome="rejected"', 'outcome="reject"'),
     "metric-names", r'outcome="reject"\}: value not in'),
    ("alert test that no longer holds", edit("deploy/prometheus/rules/mesaserve-alerts.yml",
                                             "mesa_requests_waiting{job=\"mesaserve\"} > 32",
                                             "mesa_requests_waiting{job=\"mesaserve\"} > 64"),
     "prometheus", r"promtool test rules"),
    ("broken Prometheus config", edit("deploy/prometheus/prometheus.yml", "scrape_interval: 5s",
                                      "scrape_interval: 5x"),
     "prometheus", r"promtool check config"),
    ("invalid PromQL on the dashboard", edit("deploy/grafana/dashboards/mesaserve.json",
                                             "sum by (outcome) (rate(", "sum by (outcome) ((rate("),
     "dashboard", r"promtool|does not parse"),
    ("dashboard JSON does not parse", edit("deploy/grafana/dashboards/mesaserve.json", '"panels": [', '"panels": [,'),
     "dashboard", r"does not parse"),
    ("unknown compose key", edit("deploy/compose.yaml", "stop_grace_period: 45s", "stop_grace_periods: 45s"),
     "compose", r"Compose specification"),
    ("compose env typo", edit("deploy/compose.yaml", "MESA_SLOTS:", "MESA_SLOT:"),
     "compose", r"MESA_SLOT is not a flag"),
    ("YAML style", edit("deploy/k8s/base/poddisruptionbudget.yaml", "maxUnavailable: 1", "maxUnavailable: 1   "),
     "yamllint", r"trailing-spaces"),
]


def make_tree(tmp):
    for rel in COPIED:
        src, dst = os.path.join(ROOT, rel), os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    os.makedirs(os.path.join(tmp, "models"), exist_ok=True)
    os.symlink(os.path.join(ROOT, "models", "mesanet-tiny-en"), os.path.join(tmp, "models", "mesanet-tiny-en"))


def run_check(tmp):
    out = subprocess.run([sys.executable, os.path.join(tmp, "deploy", "checks", "deploycheck.py"),
                          "--binary", "/nonexistent"], capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


def failure_text(output, check):
    m = re.search(rf"^FAIL {re.escape(check)} .*?(?=^(?:ok  |FAIL|check-deploy:))", output, re.S | re.M)
    return m.group(0) if m else None


def main():
    t0 = time.monotonic()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="deploycheck-selftest-") as base:
        clean = os.path.join(base, "clean")
        make_tree(clean)
        rc, out = run_check(clean)
        if rc != 0:
            print("FAIL the unmodified tree does not pass:\n" + out)
            return 1
        for i, (desc, mutate, check, pattern) in enumerate(CASES):
            tree = os.path.join(base, f"case{i}")
            shutil.copytree(clean, tree, symlinks=True)
            mutate(tree)
            rc, out = run_check(tree)
            text = failure_text(out, check)
            if rc != 0 and text and re.search(pattern, text):
                print(f"ok   caught: {desc}")
            else:
                bad += 1
                print(f"FAIL not caught: {desc} (expected check {check} to fail with /{pattern}/)\n{out}")
            shutil.rmtree(tree)
    print(f"deploycheck self-test: {len(CASES) - bad} of {len(CASES)} mistakes caught "
          f"({time.monotonic() - t0:.0f}s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
