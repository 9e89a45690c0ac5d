#!/usr/bin/env python3
"""Where a decode step's time goes, from a kernel timeline (tools/cuda/kernel_timeline.cc) of
`mesaserve-bench model --steps N`: for each batch size and CG mode, the mean step span (first
kernel's start to the logits' rounding), the time some kernel was running (overlaps counted
once), the idle rest, and the kernels by total time.

    python3 tools/cuda/timeline_steps.py TIMELINE.csv --steps N [--top 12]

A step starts with the embedding kernel; its grid (blocks) tells the batch apart. The bench
runs, per batch, 3 warm-up and N timed steps with 30 fixed CG steps, then the same adaptive:
the last N steps of a batch are the adaptive ones, the N before their warm-up the fixed ones.
"""
import argparse
import collections
import csv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    rows = []
    with open(a.csv) as f:
        for r in csv.DictReader(f):
            rows.append((int(r["start_ns"]), int(r["end_ns"]), int(r["blocks"]), r["name"]))
    rows.sort()
    starts = [i for i, k in enumerate(rows) if "Embed" in k[3]]
    steps = [rows[s:e] for s, e in zip(starts, starts[1:] + [len(rows)])]
    by_batch = collections.OrderedDict()
    for s in steps:
        by_batch.setdefault(s[0][2], []).append(s)
    n = a.steps
    for blocks, group in by_batch.items():
        if len(group) < 2 * n + 3:
            continue
        for mode, sel in (("fixed 30", group[-(2 * n + 3):-(n + 3)]), ("adaptive", group[-n:])):
            span = busy = 0.0
            tot = collections.defaultdict(float)
            cnt = collections.Counter()
            for s in sel:
                ends = [i for i, k in enumerate(s) if "RoundInPlace" in k[3]]
                s = s[: ends[-1] + 1] if ends else s
                span += (s[-1][1] - s[0][0]) / 1e3
                cur_s, cur_e = s[0][0], s[0][1]
                for k in s[1:]:
                    if k[0] > cur_e:
                        busy += (cur_e - cur_s) / 1e3
                        cur_s, cur_e = k[0], k[1]
                    else:
                        cur_e = max(cur_e, k[1])
                busy += (cur_e - cur_s) / 1e3
                for k in s:
                    name = k[3][:70]
                    tot[name] += (k[1] - k[0]) / 1e3
                    cnt[name] += 1
            g = len(sel)
            print(f"embedding blocks {blocks}, {mode}: {g} steps, span {span / g:.1f} us, "
                  f"some kernel running {busy / g:.1f} us, idle {(span - busy) / g:.1f} us, "
                  f"{sum(cnt.values()) / g:.0f} kernels per step")
            for name, v in sorted(tot.items(), key=lambda x: -x[1])[: a.top]:
                print(f"  {v / g:8.1f} us  {cnt[name] / g:5.0f} x {v / cnt[name]:6.2f} us  {name}")


if __name__ == "__main__":
    main()
