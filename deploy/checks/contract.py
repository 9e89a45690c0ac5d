"""The interface contract the deploy files must agree with, read from docs/server-interface.md."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from checklib import CheckFailed, ROOT, rel


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
