"""Prometheus configuration and rules (promtool) and the Grafana dashboard."""

from __future__ import annotations

import json
import os
import shutil

import yaml

from checklib import CheckFailed, DASHBOARD, DEPLOY, HISTOGRAM_SUFFIXES, RULE_FILES, RULE_TESTS, load_yaml, rel, run
from metric_refs import dashboard_exprs, promql_refs


# ---------------------------------------------------------------------------
# Prometheus (promtool)
# ---------------------------------------------------------------------------
def promtool():
    p = shutil.which("promtool")
    if not p:
        raise CheckFailed("promtool not found: run scripts/install-deploy-tools.sh")
    return p


def check_prometheus(res, ctx, tmp):
    pt = promtool()
    rules_dir = os.path.join(DEPLOY, "prometheus", "rules")
    for cfg in ("prometheus.yml", "prometheus-kubernetes.yml"):
        path = os.path.join(DEPLOY, "prometheus", cfg)
        conf = load_yaml(path)
        # Rule files are mounted at /etc/prometheus/rules; check the repository's copies.
        for rf in conf.get("rule_files", []):
            if not rf.startswith("/etc/prometheus/rules/"):
                res.error(f"{rel(path)}: rule file {rf} is not under /etc/prometheus/rules/ (the mount)")
        conf["rule_files"] = [os.path.join(rules_dir, os.path.basename(rf)) for rf in conf.get("rule_files", [])]
        # Debian's promtool is built without Kubernetes service discovery: check that block
        # here and let promtool check the rest (relabelling, rules) with a static target.
        for sc in conf.get("scrape_configs", []):
            sds = sc.pop("kubernetes_sd_configs", None)
            if sds is not None:
                for sd in sds:
                    if sd.get("role") not in ("node", "service", "pod", "endpoints", "endpointslice", "ingress"):
                        res.error(f"{rel(path)}: kubernetes_sd_configs role {sd.get('role')!r} is invalid")
                    extra = set(sd) - {"role", "namespaces", "selectors", "api_server", "kubeconfig_file",
                                       "attach_metadata", "basic_auth", "authorization", "oauth2",
                                       "tls_config", "proxy_url", "follow_redirects", "enable_http2"}
                    if extra:
                        res.error(f"{rel(path)}: unknown kubernetes_sd_configs fields {sorted(extra)}")
                sc["static_configs"] = [{"targets": ["placeholder:9090"]}]
                res.note(f"{cfg}: kubernetes_sd_configs checked structurally (Debian's promtool lacks it)")
        out_path = os.path.join(tmp, cfg)
        with open(out_path, "w") as f:
            yaml.safe_dump(conf, f)
        out = run([pt, "check", "config", out_path])
        if out.returncode != 0:
            res.error(f"promtool check config {rel(path)}:\n{out.stdout}{out.stderr}")
    out = run([pt, "check", "rules"] + RULE_FILES)
    if out.returncode != 0:
        res.error(f"promtool check rules:\n{out.stdout}{out.stderr}")
    tested = set()
    for t in RULE_TESTS:
        out = run([pt, "test", "rules", t])
        if out.returncode != 0:
            res.error(f"promtool test rules {rel(t)}:\n{out.stdout}{out.stderr}")
        for test in load_yaml(t).get("tests", []):
            for a in test.get("alert_rule_test", []):
                if a.get("exp_alerts"):
                    tested.add(a["alertname"])
    for path in RULE_FILES:
        for g in load_yaml(path)["groups"]:
            for r in g["rules"]:
                if "alert" in r and r["alert"] not in tested:
                    res.error(f"{rel(path)}: alert {r['alert']} has no unit test that makes it fire")
    res.note(f"{len(tested)} alerts unit-tested")


# ---------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------
def check_dashboard(contract, res, ctx, tmp):
    try:
        dash = json.load(open(DASHBOARD))
    except json.JSONDecodeError as e:
        raise CheckFailed(f"{rel(DASHBOARD)} does not parse: {e}")
    for k in ("uid", "title", "schemaVersion", "panels", "templating"):
        if k not in dash:
            res.error(f"{rel(DASHBOARD)}: no '{k}'")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        res.error(f"{rel(DASHBOARD)}: needs a Prometheus data source variable 'datasource'")
    ids = set()

    def walk(ps):
        for p in ps:
            yield p
            yield from walk(p.get("panels", []))
    n = 0
    for p in walk(dash.get("panels", [])):
        n += 1
        pid = p.get("id")
        if not isinstance(pid, int) or pid in ids:
            res.error(f"{rel(DASHBOARD)}: panel '{p.get('title')}' has a missing or duplicate id {pid}")
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            res.error(f"{rel(DASHBOARD)}: panel {pid} has a bad gridPos {g}")
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            res.error(f"{rel(DASHBOARD)}: panel {pid} does not use the $datasource variable")
        targets = p.get("targets", [])
        if not targets:
            res.error(f"{rel(DASHBOARD)}: panel {pid} '{p.get('title')}' has no query")
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids):
            res.error(f"{rel(DASHBOARD)}: panel {pid} has duplicate refIds")
    # Every query must be valid PromQL for Prometheus itself: promtool parses them as
    # recording rules.
    exprs = dashboard_exprs(dash)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}
    path = os.path.join(tmp, "dashboard-queries.yml")
    with open(path, "w") as f:
        yaml.safe_dump(rules, f)
    out = run([promtool(), "check", "rules", path])
    if out.returncode != 0:
        res.error(f"dashboard queries rejected by promtool:\n{out.stdout}{out.stderr}")
    shown = set()
    for where, e in exprs:
        for r in promql_refs(e, where):
            base = r.name
            for s in HISTOGRAM_SUFFIXES:
                if base.endswith(s) and base[: -len(s)] in contract.metrics:
                    base = base[: -len(s)]
            shown.add(base)
    missing = sorted(set(contract.metrics) - shown)
    if missing:
        res.note(f"metrics of the contract not on the dashboard: {', '.join(missing)}")
    res.note(f"{n} panels, {len(exprs)} queries")
