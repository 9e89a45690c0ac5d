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
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
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


# ---------------------------------------------------------------------------
# The interface contract: docs/server-interface.md
# ---------------------------------------------------------------------------
@dataclass
class Contract:
    ports: dict          # "grpc" / "metrics" -> port
    flags: dict          # MESA_NAME -> default text
    metrics: dict        # name -> {"type": ..., "labels": {label: set(values) or None}}


def parse_contract():
    path = os.path.join(ROOT, "docs", "server-interface.md")
    text = open(path).read()
    sections = re.split(r"^## ", text, flags=re.M)

    def table_rows(title_prefix):
        for s in sections:
            if s.startswith(title_prefix):
                for line in s.splitlines():
                    if line.startswith("|") and not re.match(r"^\|\s*-", line):
                        cells = [c.strip() for c in line.strip().strip("|").split("|")]
                        yield cells
                return
        raise CheckFailed(f"{rel(path)}: no section '## {title_prefix}'")

    ports = {}
    for cells in table_rows("Ports"):
        if cells[0].isdigit():
            ports["grpc" if "gRPC" in cells[1] else "metrics"] = int(cells[0])
    flags = {}
    for cells in table_rows("Flags"):
        m = re.match(r"`--([a-z0-9-]+)`", cells[0])
        if m:
            flags["MESA_" + m.group(1).upper().replace("-", "_")] = cells[1]
    metrics = {}
    for cells in table_rows("Metrics"):
        m = re.match(r"`(mesa_[a-z0-9_]+)`", cells[0])
        if not m:
            continue
        labels = {}
        # "`outcome` = ok, cancelled" or "`layer`, `phase` = prefill, decode"
        for part in re.finditer(r"`([a-z_]+)`(?:\s*=\s*([a-z_, ]+))?", cells[2]):
            values = None
            if part.group(2):
                values = {v.strip() for v in part.group(2).split(",") if v.strip()}
            labels[part.group(1)] = values
        mtype = cells[1].split()[0]
        metrics[m.group(1)] = {"type": mtype, "labels": labels}
    if set(ports) != {"grpc", "metrics"} or not flags or not metrics:
        raise CheckFailed(f"{rel(path)}: could not read ports, flags and metrics tables")
    return Contract(ports, flags, metrics)


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


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instrs: list = field(default_factory=list)   # (INSTR, args text, line)


def parse_dockerfile(path):
    lines = open(path).read().split("\n")
    logical, buf, start = [], "", 0
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if not buf:
            start = i
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        logical.append((buf.strip(), start))
        buf = ""
    args, stages = {}, []
    for text, ln in logical:
        instr, _, rest = text.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
        elif instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = re.sub(r"\$\{?(\w+)\}?", lambda mm: args.get(mm.group(1), mm.group(0)), m.group(1))
            stages.append(Stage(m.group(2) or f"stage{len(stages)}", base))
        elif stages:
            stages[-1].instrs.append((instr, rest, ln))
    return args, stages


def dockerignore_patterns():
    path = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(path):
        return []
    pats = []
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line)
    return pats


def dockerignored(relpath, pats):
    """Docker's .dockerignore rules, enough for our patterns: the last matching wins."""
    ignored = False
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in pats:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.lstrip("/").rstrip("/")
        for cand in prefixes:
            if fnmatch.fnmatchcase(cand, p) or (p.startswith("**/") and (
                    fnmatch.fnmatchcase(cand, p[3:]) or fnmatch.fnmatchcase(cand.split("/")[-1], p[3:]))):
                ignored = not neg
                break
    return ignored


def env_pairs(rest):
    """ENV a=b c="d e" -> dict."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', rest):
        out[m.group(1)] = m.group(2).strip('"')
    return out


def check_dockerfile(contract, res, ctx):
    path = os.path.join(ROOT, "Dockerfile")
    args, stages = parse_dockerfile(path)
    by_name = {s.name: s for s in stages}
    ctx["dockerfile_stages"] = list(by_name)
    for want in ("cpu", "gpu"):
        if want not in by_name:
            res.error(f"Dockerfile: no stage '{want}'")
    if stages and stages[-1].name != "gpu":
        res.error("Dockerfile: the default (last) stage should be 'gpu'; 'cpu' is the variant")
    for s in stages:
        if s.base in by_name:
            continue
        if ":" not in s.base.split("/")[-1] or s.base.endswith(":latest") or "$" in s.base:
            res.error(f"Dockerfile: stage {s.name}: base image {s.base!r} is not pinned to a tag")

    def chain(stage):
        out = []
        while stage is not None:
            out.append(stage)
            stage = by_name.get(stage.base)
        return out

    pats = dockerignore_patterns()
    for s in stages:
        for instr, rest, ln in s.instrs:
            if instr in ("COPY", "ADD") and "--from=" not in rest:
                parts = [p for p in rest.split() if not p.startswith("--")]
                for src in parts[:-1]:
                    if src in (".", "./"):
                        continue
                    if not glob.glob(os.path.join(ROOT, src)):
                        res.error(f"Dockerfile:{ln}: COPY source {src} does not exist")
                    elif dockerignored(src.rstrip("/"), pats):
                        res.error(f"Dockerfile:{ln}: COPY source {src} is excluded by .dockerignore")
    # The files a build needs must reach the context.
    for needed in ("CMakeLists.txt", "scripts/install-deps.sh", "scripts/build.sh",
                   "models/mesanet-tiny-en/model.safetensors", "cli/CMakeLists.txt"):
        if dockerignored(needed, pats):
            res.error(f".dockerignore excludes {needed}, which the image build needs")

    # Same scripts as the README and CI.
    runs = " ".join(rest for s in stages for instr, rest, _ in s.instrs if instr == "RUN")
    if not re.search(r"MESA_DEPS_MINIMAL=1\s+bash scripts/install-deps\.sh", runs):
        res.error("Dockerfile: no build stage runs `MESA_DEPS_MINIMAL=1 bash scripts/install-deps.sh`")
    if len(re.findall(r"bash scripts/build\.sh --target mesaserve", runs)) < 2:
        res.error("Dockerfile: the cpu and gpu builds must both run `bash scripts/build.sh --target mesaserve`")

    for final in ("cpu", "gpu"):
        if final not in by_name:
            continue
        ch = chain(by_name[final])
        instrs = [i for st in reversed(ch) for i in st.instrs]

        def last(kind):
            vals = [rest for instr, rest, _ in instrs if instr == kind]
            return vals[-1] if vals else None
        user = last("USER")
        uid = (user or "").split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            res.error(f"Dockerfile stage {final}: USER must be a numeric non-root uid (got {user!r})")
        else:
            ctx.setdefault("image_uid", int(uid))
        ep = last("ENTRYPOINT")
        try:
            ep_list = json.loads(ep) if ep else None
        except json.JSONDecodeError:
            ep_list = None
        if ep_list != ["mesaserve", "serve"]:
            res.error(f"Dockerfile stage {final}: ENTRYPOINT must be [\"mesaserve\", \"serve\"] (got {ep})")
        exposed = {int(p.split("/")[0]) for instr, rest, _ in instrs if instr == "EXPOSE" for p in rest.split()}
        if exposed != set(contract.ports.values()):
            res.error(f"Dockerfile stage {final}: EXPOSE {sorted(exposed)} != contract ports "
                      f"{sorted(contract.ports.values())}")
        hc = last("HEALTHCHECK")
        if not hc or "mesaserve health" not in hc:
            res.error(f"Dockerfile stage {final}: HEALTHCHECK must use `mesaserve health` (gRPC health)")
        env = {}
        for instr, rest, _ in instrs:
            if instr == "ENV":
                env.update(env_pairs(rest))
        for k, v in env.items():
            if k.startswith("MESA_") and k not in contract.flags:
                res.error(f"Dockerfile stage {final}: ENV {k} is not a flag of `mesaserve serve`")
        for key, port in (("MESA_LISTEN", "grpc"), ("MESA_METRICS_LISTEN", "metrics")):
            if key in env and not env[key].endswith(f":{contract.ports[port]}"):
                res.error(f"Dockerfile stage {final}: {key}={env[key]} does not use port {contract.ports[port]}")
        model = env.get("MESA_MODEL")
        copied = [rest.split()[-1] for instr, rest, _ in instrs if instr == "COPY"]
        if not model or model not in copied:
            res.error(f"Dockerfile stage {final}: MESA_MODEL ({model}) is not a directory COPY'd into the image")

    # The runtime packages (checked against the binary by the runtime-libs check).
    rt = by_name.get("runtime-base")
    pkgs = []
    if rt is None:
        res.error("Dockerfile: no stage 'runtime-base'")
    else:
        for instr, rest, _ in rt.instrs:
            if instr == "RUN":
                for m in re.finditer(r"apt-get install((?:\s+[^&;|]+)+)", rest):
                    pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    if not pkgs:
        res.error("Dockerfile: no `apt-get install` of runtime packages in stage runtime-base")
    ctx["runtime_packages"] = pkgs
    ctx["drain_default"] = int(contract.flags.get("MESA_DRAIN_TIMEOUT", "30").strip("` ") or 30)


# ---------------------------------------------------------------------------
# Runtime libraries: ldd of the real binary vs. the runtime stage's packages.
# ---------------------------------------------------------------------------
def check_runtime_libs(binary, res, ctx):
    if not binary or not os.path.exists(binary):
        res.note(f"skipped: no binary at {binary} (build it, or pass --binary)")
        return
    pkgs = ctx.get("runtime_packages")
    if not pkgs:
        raise CheckFailed("no runtime package list (Dockerfile check failed)")
    out = run(["ldd", binary])
    if out.returncode != 0:
        raise CheckFailed(f"ldd {binary}: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if m and m.group(2) == "not":
            if not m.group(1).startswith("libcuda.so"):
                res.error(f"{binary} needs {m.group(1)}, which is not found on this machine")
            continue
        if m:
            libs.append((m.group(1), m.group(2)))
    cands = {}
    for soname, path in libs:
        if path.startswith("/usr/local/cuda") or "/cuda" in os.path.realpath(path):
            continue  # the gpu stage copies these out of the CUDA toolkit (ldd at build time)
        real = os.path.realpath(path)
        c = {real, path}
        for x in list(c):
            if x.startswith("/usr/lib/"):
                c.add(x[4:])
            elif x.startswith("/lib/"):
                c.add("/usr" + x)
        cands[soname] = (real, c)
    # One dpkg-query for all of them ("pkg:arch[, pkg2]: /path" lines; misses go to stderr).
    allpaths = sorted({x for _, c in cands.values() for x in c})
    found = {}
    for line in run(["dpkg-query", "-S"] + allpaths).stdout.splitlines():
        if line.startswith("diversion "):
            continue
        pkgpart, _, fpath = line.rpartition(": ")
        found[fpath.strip()] = pkgpart.split(",")[0].split(":")[0].strip()
    owners = {}
    for soname, (real, c) in cands.items():
        owner = next((found[x] for x in sorted(c) if x in found), None)
        if owner is None:
            res.error(f"{soname} ({real}) belongs to no Debian package: the image would lack it")
        else:
            owners[soname] = owner
    # Everything the runtime stage installs, with dependencies, plus the slim base image
    # (Debian's 'required' packages and theirs).
    required = run(["dpkg-query", "-W", "-f", "${Package} ${Priority} ${Essential}\n"]).stdout
    base = [l.split()[0] for l in required.splitlines() if " required " in f" {l} " or l.endswith(" yes")]
    closure_cmd = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                   "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"]
    have = set()
    for group in (pkgs, base):
        out = run(closure_cmd + group)
        if out.returncode != 0:
            raise CheckFailed(f"apt-cache depends failed: {out.stderr.strip()[:300]}")
        for l in out.stdout.splitlines():
            name = l.strip().split(":")[-1].strip() if ":" in l else l.strip()
            name = name.strip("<>").split(":")[0]
            if name:
                have.add(name)
    for soname, owner in sorted(owners.items()):
        if owner not in have:
            res.error(f"{soname} comes from Debian package {owner}, which the runtime stage does not "
                      f"install (add it to runtime-base's apt-get install)")
    shown = rel(binary) if binary.startswith(ROOT) else binary
    res.note(f"{len(owners)} shared libraries of {shown} come from {len(set(owners.values()))} Debian packages"
             + ("" if res.errors else ", all in the runtime image"))


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------
def kustomize_build(path):
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kubectl:
        cmd = [kubectl, "kustomize", path]
    elif kustomize:
        cmd = [kustomize, "build", path]
    else:
        raise CheckFailed("neither kubectl nor kustomize is installed: cannot render the overlays")
    out = run(cmd)
    if out.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:2])} {rel(path)} failed:\n{out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def k8s_schema_validate(docs, where, res):
    import kubernetes_validate
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                res.error(f"{where}: {name}: no Kubernetes {v} schema for {d.get('apiVersion')} "
                          f"{d.get('kind')} (custom resources are checked separately)")
                break
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
                res.error(f"{where}: {name}: invalid for Kubernetes {v}: {e.message} {path}")
                break


def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def container_env(dep, docs):
    """MESA_* settings a container sees: envFrom ConfigMaps, then env."""
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for ef in c.get("envFrom", []):
        ref = ef.get("configMapRef", {}).get("name")
        if ref is not None:
            if ref not in cms:
                raise CheckFailed(f"envFrom ConfigMap {ref} is not in the rendered manifests")
            env.update(cms[ref])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def check_k8s_overlay(overlay, docs, contract, res, ctx):
    where = f"overlay {overlay}"
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    for want in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                 "ConfigMap", "ServiceAccount"):
        if want not in kinds:
            res.error(f"{where}: no {want}")
    if "Deployment" not in kinds:
        return
    dep = kinds["Deployment"][0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    plabels = spec["template"]["metadata"].get("labels", {})
    if not selector_matches(spec["selector"].get("matchLabels"), plabels):
        res.error(f"{where}: Deployment selector does not match its pod labels")
    if "replicas" in spec and "HorizontalPodAutoscaler" in kinds:
        res.error(f"{where}: Deployment sets replicas while an HPA owns the count")
    c = next((c for c in pod["containers"] if c["name"] == "mesaserve"), None)
    if c is None:
        res.error(f"{where}: no container named mesaserve")
        return
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports != contract.ports:
        res.error(f"{where}: container ports {ports} != contract {contract.ports}")
    env = container_env(dep, docs)
    for k in env:
        if k.startswith("MESA_") and k not in contract.flags:
            res.error(f"{where}: environment {k} is not a flag of `mesaserve serve`")
    for key, port in (("MESA_LISTEN", "grpc"), ("MESA_METRICS_LISTEN", "metrics")):
        if key in env and isinstance(env[key], str) and not env[key].endswith(f":{contract.ports[port]}"):
            res.error(f"{where}: {key}={env[key]} does not listen on the {port} port {contract.ports[port]}")
    # Probes: native gRPC health checks on the gRPC port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p:
            res.error(f"{where}: no {probe}")
        elif p.get("grpc", {}).get("port") != contract.ports["grpc"]:
            res.error(f"{where}: {probe} must be a grpc probe on port {contract.ports['grpc']}")
    # Drain: SIGTERM -> drain timeout -> SIGKILL after the grace period.
    drain = int(env.get("MESA_DRAIN_TIMEOUT", ctx.get("drain_default", 30)))
    pre = 0
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if cmd[:1] == ["sleep"]:
        pre = int(cmd[1])
    pre += int(c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < drain + pre + 5:
        res.error(f"{where}: terminationGracePeriodSeconds {grace} must exceed MESA_DRAIN_TIMEOUT {drain} "
                  f"+ preStop {pre} s by at least 5 s")
    lp = c.get("livenessProbe", {})
    if lp and lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3) <= drain:
        res.error(f"{where}: livenessProbe would restart a draining pod (period x failureThreshold "
                  f"<= drain timeout {drain} s)")
    # Security context.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        res.error(f"{where}: runAsNonRoot is not set")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if ctx.get("image_uid") is not None and uid != ctx["image_uid"]:
        res.error(f"{where}: runAsUser {uid} differs from the image's USER {ctx['image_uid']}")
    if csc.get("allowPrivilegeEscalation") is not False:
        res.error(f"{where}: allowPrivilegeEscalation must be false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        res.error(f"{where}: capabilities must drop ALL")
    if not (psc.get("seccompProfile") or csc.get("seccompProfile")):
        res.error(f"{where}: no seccompProfile")
    if csc.get("readOnlyRootFilesystem"):
        if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
            res.error(f"{where}: read-only root filesystem without a writable /tmp")
    else:
        res.error(f"{where}: readOnlyRootFilesystem should be true")
    # Resources.
    r = c.get("resources", {})
    for kind in ("requests", "limits"):
        for k in ("cpu", "memory"):
            if k not in r.get(kind, {}):
                res.error(f"{where}: resources.{kind}.{k} is not set")
    gpu = r.get("limits", {}).get("nvidia.com/gpu")
    if overlay == "gpu" and not gpu:
        res.error(f"{where}: no nvidia.com/gpu limit")
    if overlay == "cpu" and gpu:
        res.error(f"{where}: the cpu overlay requests a GPU")
    tag = c["image"].rsplit(":", 1)[-1] if ":" in c["image"].split("/")[-1] else None
    if tag not in ctx.get("dockerfile_stages", []) and overlay in ctx.get("dockerfile_stages", []):
        res.note(f"{where}: image {c['image']} (tag is not a Dockerfile target; fine for a registry tag)")
    ann = spec["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") != str(contract.ports["metrics"]):
        res.error(f"{where}: prometheus.io/port annotation is not the metrics port")
    # Services.
    headless = False
    for svc in kinds.get("Service", []):
        sname = svc["metadata"]["name"]
        if not selector_matches(svc["spec"].get("selector"), plabels) or not svc["spec"].get("selector"):
            res.error(f"{where}: Service {sname} selects no mesaserve pod")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if tp not in ports and tp not in ports.values():
                res.error(f"{where}: Service {sname} port {p.get('name')} targets {tp}, no container port")
        if svc["spec"].get("clusterIP") == "None":
            headless = True
            if not any(p.get("targetPort") in ("grpc", contract.ports["grpc"]) for p in svc["spec"]["ports"]):
                res.error(f"{where}: headless Service {sname} has no gRPC port")
    if not headless:
        res.error(f"{where}: no headless Service for client-side gRPC load balancing")
    ctx.setdefault("services", {})[overlay] = kinds.get("Service", [])
    for pdb in kinds.get("PodDisruptionBudget", []):
        if not selector_matches(pdb["spec"]["selector"].get("matchLabels"), plabels):
            res.error(f"{where}: PodDisruptionBudget does not select the pods")
    for hpa in kinds.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
            res.error(f"{where}: HPA targets {ref['kind']}/{ref['name']}, not the Deployment")
        for m in hpa["spec"].get("metrics", []):
            if m["type"] in ("Pods", "Object", "External"):
                name = m[m["type"].lower()]["metric"]["name"]
                ctx.setdefault("hpa_metrics", set()).add(name)
                spec_m = contract.metrics.get(name)
                if spec_m is None or spec_m["type"] != "gauge":
                    res.error(f"{where}: HPA metric {name} is not a gauge of the contract")


def check_service_monitor(contract, res, ctx):
    docs = load_yaml_docs(SERVICE_MONITOR)
    for d in docs:
        if d.get("apiVersion") != "monitoring.coreos.com/v1" or d.get("kind") != "ServiceMonitor":
            res.error(f"{rel(SERVICE_MONITOR)}: unexpected {d.get('apiVersion')} {d.get('kind')}")
            continue
        allowed = {"jobLabel", "selector", "endpoints", "namespaceSelector", "targetLabels",
                   "podTargetLabels", "sampleLimit"}
        extra = set(d["spec"]) - allowed
        if extra:
            res.error(f"{rel(SERVICE_MONITOR)}: unknown spec fields {sorted(extra)}")
        for svc_list in ctx.get("services", {}).values():
            svc = next((s for s in svc_list if s["metadata"]["name"] == "mesaserve"), None)
            if svc is None:
                continue
            if not selector_matches(d["spec"]["selector"]["matchLabels"], svc["metadata"].get("labels", {})):
                res.error(f"{rel(SERVICE_MONITOR)}: selector does not match Service mesaserve's labels")
            names = {p.get("name") for p in svc["spec"]["ports"]}
            for ep in d["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    res.error(f"{rel(SERVICE_MONITOR)}: endpoint port {ep.get('port')} is not a Service port")
            job = svc["metadata"].get("labels", {}).get(d["spec"].get("jobLabel", ""), svc["metadata"]["name"])
            if job != "mesaserve":
                res.error(f"{rel(SERVICE_MONITOR)}: scraped series would get job={job}, the rules expect mesaserve")
            break


def check_adapter(contract, res, ctx):
    values = load_yaml(ADAPTER_VALUES)
    served = set()
    for r in values.get("rules", {}).get("custom", []):
        for key in ("seriesQuery", "resources", "name", "metricsQuery"):
            if key not in r:
                res.error(f"{rel(ADAPTER_VALUES)}: rule without {key}")
        served.add(r.get("name", {}).get("as"))
        over = r.get("resources", {}).get("overrides", {})
        if over.get("pod", {}).get("resource") != "pod" or over.get("namespace", {}).get("resource") != "namespace":
            res.error(f"{rel(ADAPTER_VALUES)}: a Pods metric needs the namespace and pod overrides")
    for m in sorted(ctx.get("hpa_metrics", set())):
        if m not in served:
            res.error(f"HPA metric {m} is not served by a prometheus-adapter rule in {rel(ADAPTER_VALUES)}")


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


# ---------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------
def check_compose(contract, res, ctx):
    out = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"] + COMPOSE_FILES)
    if out.returncode != 0:
        res.error(f"compose files do not match the Compose specification:\n{out.stdout}{out.stderr}")
    base = load_yaml(COMPOSE_FILES[0])
    gpu = load_yaml(COMPOSE_FILES[1])
    services = base.get("services", {})
    for name in ("mesaserve", "prometheus", "grafana"):
        if name not in services:
            res.error(f"compose.yaml: no service {name}")
    if res.errors:
        return
    stages = ctx.get("dockerfile_stages", [])
    for f, svc in (("compose.yaml", services["mesaserve"]), ("compose.gpu.yaml", gpu["services"]["mesaserve"])):
        b = svc.get("build", {})
        target = b.get("target")
        if target not in stages:
            res.error(f"{f}: build target {target} is not a Dockerfile stage")
    b = services["mesaserve"]["build"]
    df = os.path.normpath(os.path.join(DEPLOY, b.get("context", "."), b.get("dockerfile", "Dockerfile")))
    if df != os.path.join(ROOT, "Dockerfile"):
        res.error(f"compose.yaml: builds {df}, not the repository's Dockerfile")
    if gpu["services"]["mesaserve"].get("build", {}).get("target") != "gpu":
        res.error("compose.gpu.yaml: must build the gpu target")
    for f, svc in (("compose.yaml", services["mesaserve"]), ("compose.gpu.yaml", gpu["services"]["mesaserve"])):
        env = svc.get("environment", {})
        for k in env:
            if k.startswith("MESA_") and k not in contract.flags:
                res.error(f"{f}: environment {k} is not a flag of `mesaserve serve`")
    for name, svc in services.items():
        image = svc.get("image", "")
        if name != "mesaserve" and (":" not in image or image.endswith(":latest")):
            res.error(f"compose.yaml: service {name}: image {image!r} is not pinned")
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                if not os.path.exists(os.path.join(DEPLOY, src)):
                    res.error(f"compose.yaml: service {name} mounts {src}, which does not exist")
    # Drain before SIGKILL.
    m = re.match(r"(\d+)s$", str(services["mesaserve"].get("stop_grace_period", "10s")))
    drain_env = str(services["mesaserve"].get("environment", {}).get("MESA_DRAIN_TIMEOUT", "30"))
    drain = int(re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", drain_env))
    if not m or int(m.group(1)) <= drain:
        res.error(f"compose.yaml: stop_grace_period must be longer than MESA_DRAIN_TIMEOUT ({drain} s)")

    def mounted(svc, container_path):
        """Host path (in deploy/) behind a container path, through the bind mounts."""
        for v in services[svc].get("volumes", []):
            parts = v.split(":")
            if len(parts) < 2 or not parts[0].startswith("."):
                continue
            if container_path == parts[1]:
                return os.path.normpath(os.path.join(DEPLOY, parts[0]))
            if container_path.startswith(parts[1].rstrip("/") + "/"):
                return os.path.normpath(os.path.join(DEPLOY, parts[0], os.path.relpath(container_path, parts[1])))
        return None
    # Prometheus: its config, rule files and scrape target.
    cfg_host = mounted("prometheus", "/etc/prometheus/prometheus.yml")
    if cfg_host is None or not os.path.isfile(cfg_host):
        res.error("compose.yaml: prometheus does not mount deploy/prometheus/prometheus.yml")
        return
    conf = load_yaml(cfg_host)
    for rf in conf.get("rule_files", []):
        host = mounted("prometheus", rf)
        if host is None or not glob.glob(host):
            res.error(f"compose.yaml: Prometheus rule_files {rf} matches no mounted file")
    targets = [t for sc in conf.get("scrape_configs", []) if sc.get("job_name") == "mesaserve"
               for s in sc.get("static_configs", []) for t in s.get("targets", [])]
    if targets != [f"mesaserve:{contract.ports['metrics']}"]:
        res.error(f"prometheus.yml: job mesaserve scrapes {targets}, expected mesaserve:{contract.ports['metrics']}")
    # Grafana: data source URL, dashboard provider path, home dashboard.
    ds_dir = mounted("grafana", "/etc/grafana/provisioning/datasources")
    dsp = load_yaml(os.path.join(ds_dir, "prometheus.yml")) if ds_dir else None
    if not dsp or dsp["datasources"][0].get("url") != "http://prometheus:9090":
        res.error("grafana data source must point at http://prometheus:9090 (the compose service)")
    dp_dir = mounted("grafana", "/etc/grafana/provisioning/dashboards")
    dp = load_yaml(os.path.join(dp_dir, "mesaserve.yml")) if dp_dir else None
    path = dp["providers"][0]["options"]["path"] if dp else None
    host = mounted("grafana", path) if path else None
    if not host or not os.path.exists(os.path.join(host, "mesaserve.json")):
        res.error(f"grafana dashboard provider path {path} does not hold the mounted mesaserve.json")
    home = services["grafana"].get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not (mounted("grafana", home) and os.path.isfile(mounted("grafana", home))):
        res.error(f"compose.yaml: Grafana home dashboard {home} is not a mounted file")


# ---------------------------------------------------------------------------
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
