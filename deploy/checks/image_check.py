"""The Dockerfile and .dockerignore, and the runtime libraries of the real binary against the
image's runtime stage."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
from dataclasses import dataclass, field

from checklib import CheckFailed, ROOT, rel, run


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
