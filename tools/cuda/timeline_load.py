#!/usr/bin/env python3
"""Where a serving load's GPU time goes, from a kernel timeline (tools/cuda/kernel_timeline.cc)
of `mesaserve bench --engine-concurrency C` or of `mesaserve serve` under `mesaserve loadtest`:
the timeline is cut at every embedding kernel (each decode step and each prefill launch starts
with one); a piece is a decode step when it runs the decode kernel, a prefill when it runs the
chunk pass. Per kind: count, mean span (this embedding to the next), mean time some kernel ran,
and the idle rest; then the whole window's busy share. Only pieces inside [--from, --to] seconds
of the first kernel count (to leave out start-up and warm-up).

    python3 tools/cuda/timeline_load.py TIMELINE.csv [--from S] [--to S] [--max-gap-ms 50] [--gaps N]

Gaps longer than --max-gap-ms (the load generator between runs, an idle server) end a piece
and are not counted as idle. --gaps N: per kind, the N kernel pairs (the kernel before an idle
gap, the one after) with the most idle time between them, the last one of a piece paired with
the next piece's first: where the GPU waits for the host.
"""
import collections
import argparse
import csv


def busy_time(kernels):
    """Time in ns during which at least one of the (start, end) intervals runs."""
    total = 0
    cur_s = cur_e = None
    for s, e in sorted(kernels):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--from", dest="t_from", type=float, default=0.0)
    ap.add_argument("--to", dest="t_to", type=float, default=1e9)
    ap.add_argument("--max-gap-ms", type=float, default=50.0)
    ap.add_argument("--gaps", type=int, default=0)
    a = ap.parse_args()
    rows = []
    with open(a.csv) as f:
        for r in csv.DictReader(f):
            rows.append((int(r["start_ns"]), int(r["end_ns"]), r["name"]))
    rows.sort()
    if not rows:
        print("no kernels")
        return
    t0 = rows[0][0]
    lo, hi = t0 + a.t_from * 1e9, t0 + a.t_to * 1e9
    rows = [r for r in rows if lo <= r[0] <= hi]
    starts = [i for i, k in enumerate(rows) if "Embed" in k[2]]
    max_gap = a.max_gap_ms * 1e6
    stats = {}
    gaps = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    window_busy = window_span = 0
    for n, (s, e) in enumerate(zip(starts, starts[1:] + [len(rows)])):
        piece = rows[s:e]
        kind = ("decode" if any("MesaDecode" in k[2] for k in piece)
                else "prefill" if any("MesaPrefillChunkPass" in k[2] for k in piece) else "other")
        end = rows[e][0] if e < len(rows) else max(k[1] for k in piece)
        last_end = max(k[1] for k in piece)
        if end - last_end > max_gap:  # the load paused: count the piece up to its last kernel
            end = last_end
        span = end - piece[0][0]
        busy = busy_time([(k[0], k[1]) for k in piece])
        st = stats.setdefault(kind, [0, 0, 0, 0])
        st[0] += 1
        st[1] += span
        st[2] += busy
        st[3] += len(piece)
        window_busy += busy
        window_span += span
        if a.gaps:
            seq = piece + ([rows[e]] if e < len(rows) and rows[e][0] - last_end <= max_gap else [])
            run_end = seq[0][1]
            for prev, nxt in zip(seq, seq[1:]):
                if nxt[0] > run_end:
                    g = gaps[kind][(prev[2][:48], nxt[2][:48])]
                    g[0] += 1
                    g[1] += nxt[0] - run_end
                run_end = max(run_end, nxt[1])
    print(f"{'kind':8} {'count':>7} {'kernels':>8} {'mean span us':>13} {'mean busy us':>13} "
          f"{'mean idle us':>13} {'share of span':>14}")
    for kind, (count, span, busy, kernels) in sorted(stats.items()):
        print(f"{kind:8} {count:7d} {kernels / count:8.1f} {span / count / 1e3:13.1f} "
              f"{busy / count / 1e3:13.1f} {(span - busy) / count / 1e3:13.1f} "
              f"{100 * span / max(window_span, 1):13.1f}%")
    print(f"window: {window_span / 1e9:.3f} s of pieces, a kernel running {100 * window_busy / max(window_span, 1):.1f} %")
    for kind, pairs in sorted(gaps.items()):
        count = stats[kind][0]
        print(f"idle gaps in {kind} pieces (per piece: us, times):")
        for (before, after), (times, total) in sorted(pairs.items(), key=lambda x: -x[1][1])[: a.gaps]:
            print(f"  {total / count / 1e3:9.1f} {times / count:6.2f}  {before} -> {after}")


if __name__ == "__main__":
    main()
