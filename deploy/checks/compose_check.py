"""The Docker Compose files."""

from __future__ import annotations

import glob
import os
import re

from checklib import COMPOSE_FILES, DEPLOY, ROOT, load_yaml, run, tool


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
