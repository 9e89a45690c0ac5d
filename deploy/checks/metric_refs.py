"""Metric names and labels used by PromQL (alert rules, dashboard, autoscaler) against the
contract and a real scrape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from checklib import ADAPTER_VALUES, CheckFailed, DASHBOARD, HISTOGRAM_SUFFIXES, RULE_FILES, SYNTHETIC_METRICS, TARGET_LABELS, load_yaml, rel


# ---------------------------------------------------------------------------
# PromQL: metric references
# ---------------------------------------------------------------------------
GRAFANA_VAR = re.compile(r"\$__(rate_interval|interval|range)|\$\{[^}]+\}|\$[A-Za-z_]\w*|\[\[[^\]]+\]\]")


def grafana_to_promql(expr):
    """Replaces Grafana variables so that the expression is plain PromQL."""
    def sub(m):
        if m.group(1):
            return "5m"
        return "grafana_var"
    return GRAFANA_VAR.sub(sub, expr)


@dataclass
class MetricRef:
    name: str
    matchers: list   # (label, op, value)
    where: str


def promql_refs(expr, where):
    import promql_parser
    try:
        ast = promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError with the reason
        raise CheckFailed(f"{where}: PromQL does not parse: {e}\n      {expr}")
    refs = []

    def pre(node):
        if isinstance(node, promql_parser.VectorSelector):
            ms = [(m.name, str(m.op).split(".")[-1], m.value) for m in node.matchers.matchers]
            name = node.name or next((v for n, op, v in ms if n == "__name__" and op == "Equal"), None)
            if name is None:
                raise CheckFailed(f"{where}: selector without a metric name: {expr}")
            refs.append(MetricRef(name, [m for m in ms if m[0] != "__name__"], where))
    promql_parser.walk(ast, pre)
    return refs


def check_refs_against_contract(refs, contract, res):
    for r in refs:
        if r.name in SYNTHETIC_METRICS:
            continue
        base, suffix = r.name, ""
        if r.name not in contract.metrics:
            for s in HISTOGRAM_SUFFIXES:
                if r.name.endswith(s) and r.name[: -len(s)] in contract.metrics:
                    base, suffix = r.name[: -len(s)], s
        spec = contract.metrics.get(base)
        if spec is None:
            res.error(f"{r.where}: metric {r.name} is not in docs/server-interface.md")
            continue
        if spec["type"] == "histogram" and not suffix:
            res.error(f"{r.where}: {r.name} is a histogram: query {r.name}_bucket/_sum/_count")
            continue
        if spec["type"] != "histogram" and suffix:
            res.error(f"{r.where}: {r.name}: {base} is a {spec['type']}, not a histogram")
            continue
        allowed = set(spec["labels"]) | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        for label, op, value in r.matchers:
            if label not in allowed:
                res.error(f"{r.where}: {r.name} has no label {label!r} (contract: {sorted(spec['labels'])})")
            elif op == "Equal" and spec["labels"].get(label) and value not in spec["labels"][label]:
                res.error(f"{r.where}: {r.name}{{{label}=\"{value}\"}}: value not in "
                          f"{sorted(spec['labels'][label])}")


def parse_scrape(path):
    """Prometheus text format -> {sample name: {label: set(values)}} and # TYPE lines."""
    samples, types = {}, {}
    label_re = re.compile(r'([a-zA-Z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"')
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
            if m:
                types[m.group(1)] = m.group(2)
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        labels = samples.setdefault(m.group(1), {})
        for lm in label_re.finditer(m.group(3) or ""):
            labels.setdefault(lm.group(1), set()).add(lm.group(2))
    return samples, types


def check_refs_against_scrape(refs, samples, res):
    for r in refs:
        if r.name in SYNTHETIC_METRICS:
            continue
        if r.name not in samples:
            res.error(f"{r.where}: {r.name} is not on the scraped /metrics")
            continue
        have = samples[r.name]
        for label, op, value in r.matchers:
            if label in TARGET_LABELS:
                continue
            if label not in have:
                res.error(f"{r.where}: {r.name} has no label {label!r} on /metrics "
                          f"(it has {sorted(have)})")
            elif op == "Equal" and value not in have[label]:
                res.error(f"{r.where}: {r.name}{{{label}=\"{value}\"}} is not on /metrics "
                          f"(values: {sorted(have[label])})")


def dashboard_exprs(dash):
    """(where, PromQL) for every panel target and every query variable."""
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))
    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"dashboard panel {p.get('id')} '{p.get('title')}' {t.get('refId')}",
                            grafana_to_promql(t["expr"])))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.match(r"^\s*label_values\((.*),\s*([a-zA-Z_]\w*)\s*\)\s*$", q)
        if m:
            q = m.group(1)
        m = re.match(r"^\s*(?:query_result|metrics)\((.*)\)\s*$", q)
        if m:
            q = m.group(1)
        if q.strip():
            out.append((f"dashboard variable ${v.get('name')}", grafana_to_promql(q)))
    return out


def rule_exprs():
    out = []
    for path in RULE_FILES:
        for g in load_yaml(path).get("groups", []):
            for r in g.get("rules", []):
                name = r.get("alert") or r.get("record")
                out.append((f"{rel(path)} {name}", r["expr"]))
    return out


def adapter_exprs():
    out = []
    values = load_yaml(ADAPTER_VALUES)
    for i, r in enumerate(values.get("rules", {}).get("custom", [])):
        out.append((f"{rel(ADAPTER_VALUES)} rule {i} seriesQuery", r["seriesQuery"]))
    return out


def check_metric_refs(contract, metrics_file, res):
    refs = []
    for group in (dashboard_exprs(json.load(open(DASHBOARD))), rule_exprs(), adapter_exprs()):
        for where, e in group:
            refs += promql_refs(e, where)
    check_refs_against_contract(refs, contract, res)
    names = sorted({r.name for r in refs})
    if metrics_file:
        samples, types = parse_scrape(metrics_file)
        if not any(n.startswith("mesa_") for n in samples):
            raise CheckFailed(f"{metrics_file} holds no mesa_ metric: is it a /metrics scrape of mesaserve?")
        check_refs_against_scrape(refs, samples, res)
        # The contract's types must be what the server exports.
        for name, spec in contract.metrics.items():
            if name not in types:
                res.error(f"/metrics does not export {name} (docs/server-interface.md lists it)")
            elif types[name] != spec["type"]:
                res.error(f"/metrics exports {name} as {types[name]}, the contract says {spec['type']}")
        res.note(f"{len(names)} metrics referenced" + ("" if res.errors else f", all on {metrics_file}"))
    else:
        res.note(f"{len(names)} metrics referenced, all in docs/server-interface.md "
                 f"(pass a /metrics scrape to check them against a running server)")
