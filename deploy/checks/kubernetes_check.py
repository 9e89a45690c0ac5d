"""The Kubernetes overlays (kustomize build, schema validation at two versions, probes, ports,
drain), the ServiceMonitor and the prometheus-adapter values."""

from __future__ import annotations

import shutil

import yaml

from checklib import ADAPTER_VALUES, CheckFailed, K8S_VERSIONS, SERVICE_MONITOR, load_yaml, load_yaml_docs, rel, run


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
