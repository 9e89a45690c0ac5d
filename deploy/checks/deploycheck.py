#!/usr/bin/env python3
"""Checks every deploy file of mesaserve with real tools; run by scripts/check-deploy.sh.

Each check prints `ok` or `FAIL` with its reasons; the exit status is 1 if any failed.
The contract the files must agree with (ports, flags, metric names and labels) is read
from docs/server-interface.md; with --metrics FILE (the text of a real /metrics scrape)
every metric and label the dashboard, the alert rules and the autoscaler query must also
be present in that scrape.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklib import CheckFailed, DEPLOY, K8S, K8S_VERSIONS, OVERLAYS, ROOT, Result, run, tool  # noqa: E402
from compose_check import check_compose  # noqa: E402
from contract import parse_contract  # noqa: E402
from image_check import check_dockerfile, check_runtime_libs  # noqa: E402
from kubernetes_check import check_adapter, check_k8s_overlay, check_service_monitor, k8s_schema_validate, kustomize_build  # noqa: E402
from metric_refs import check_metric_refs  # noqa: E402
from observability_check import check_dashboard, check_prometheus  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics", help="text of a real /metrics scrape of `mesaserve serve`")
    ap.add_argument("--binary", default=os.environ.get("MESASERVE", os.path.join(ROOT, "build", "cli", "mesaserve")),
                    help="mesaserve binary for the runtime-libs check (default: build/cli/mesaserve)")
    args = ap.parse_args()
    if args.metrics and not os.path.isfile(args.metrics):
        print(f"check-deploy: metrics file {args.metrics} not found", file=sys.stderr)
        return 2

    results = []
    ctx = {}
    tmp = tempfile.mkdtemp(prefix="check-deploy-")
    try:
        contract = parse_contract()
    except CheckFailed as e:
        print(f"FAIL contract: {e}")
        return 1

    def check(name, fn):
        res = Result(name)
        t0 = time.monotonic()
        try:
            fn(res)
        except CheckFailed as e:
            res.error(str(e))
        except Exception as e:  # a crash is a failure with its reason, not a traceback
            res.error(f"{type(e).__name__}: {e}")
        dt = time.monotonic() - t0
        status = "ok  " if not res.errors else "FAIL"
        print(f"{status} {name} ({dt:.1f}s)")
        for n in res.notes:
            print(f"       {n}")
        for e in res.errors:
            print("       " + str(e).replace("\n", "\n       "))
        sys.stdout.flush()
        results.append(res)

    def yamllint(res):
        out = run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable",
                   "-c", os.path.join(DEPLOY, "checks", "yamllint.yaml"), DEPLOY])
        if out.returncode != 0:
            res.error((out.stdout + out.stderr).strip() or "yamllint failed")
        n = len([p for p in glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True)])
        res.note(f"{n} YAML files")

    def hadolint(res):
        out = run([tool("hadolint"), "--failure-threshold", "style", os.path.join(ROOT, "Dockerfile")])
        if out.returncode != 0:
            res.error((out.stdout + out.stderr).strip())

    def kubernetes(res):
        for overlay in OVERLAYS:
            docs = kustomize_build(os.path.join(K8S, "overlays", overlay))
            k8s_schema_validate(docs, f"overlay {overlay}", res)
            check_k8s_overlay(overlay, docs, contract, res, ctx)
        # The base and the patches are valid on their own too.
        base_docs = kustomize_build(os.path.join(K8S, "base"))
        k8s_schema_validate(base_docs, "base", res)
        check_service_monitor(contract, res, ctx)
        check_adapter(contract, res, ctx)
        res.note(f"overlays {', '.join(OVERLAYS)} rendered with kustomize and validated (strict) against "
                 f"Kubernetes {', '.join(v.rsplit('.', 1)[0] for v in K8S_VERSIONS)} schemas")

    check("yamllint", yamllint)
    check("hadolint", hadolint)
    check("dockerfile", lambda r: check_dockerfile(contract, r, ctx))
    check("runtime-libs", lambda r: check_runtime_libs(args.binary, r, ctx))
    check("kubernetes", kubernetes)
    check("prometheus", lambda r: check_prometheus(r, ctx, tmp))
    check("dashboard", lambda r: check_dashboard(contract, r, ctx, tmp))
    check("metric-names", lambda r: check_metric_refs(contract, args.metrics, r))
    check("compose", lambda r: check_compose(contract, r, ctx))
    shutil.rmtree(tmp, ignore_errors=True)

    failed = [r.name for r in results if r.errors]
    if failed:
        print(f"check-deploy: {len(failed)} of {len(results)} checks FAILED: {', '.join(failed)}")
        return 1
    print(f"check-deploy: all {len(results)} checks ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
