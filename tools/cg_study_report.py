#!/usr/bin/env python3
"""Markdown tables from the JSON reports of tools/cg_study.sh (mesaserve perplexity --report).

    python3 tools/cg_study_report.py STUDY_DIR > tables.md
"""
import glob
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main(study):
    base = load(os.path.join(study, 'fixed30.json'))
    runs = [('fixed, 30 steps', base)]
    adaptive = sorted(glob.glob(os.path.join(study, 'adaptive_*.json')),
                      key=lambda p: -float(p.split('adaptive_')[1][:-5]))
    runs += [(f'adaptive, tol {load(p)["cg_tol"]:.0e}', load(p)) for p in adaptive]
    ppl0 = base['perplexity']
    print('| CG | perplexity | vs fixed-30 | mean iters | p50 | p90 | p99 | max | fewer than fixed-30 |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for name, r in runs:
        a = r['cg']['all']
        print(f"| {name} | {r['perplexity']:.3f} | {100 * (r['perplexity'] / ppl0 - 1):+.3f} % | "
              f"{a['mean']:.2f} | {a['p50']} | {a['p90']} | {a['p99']} | {a['max']} | "
              f"{base['cg']['all']['mean'] / max(a['mean'], 1e-9):.1f}x |")
    print()
    layers = len(base['cg']['by_layer'])
    print('Mean iterations per (token, head) by layer:')
    print()
    print('| CG | ' + ' | '.join(f'L{i}' for i in range(layers)) + ' |')
    print('|---|' + '---:|' * layers)
    for name, r in runs[1:]:
        print(f'| {name} | ' + ' | '.join(f"{l['mean']:.2f}" for l in r['cg']['by_layer']) + ' |')
    print()
    print('Mean iterations by position in the 512-token window:')
    print()
    buckets = [b['positions'] for b in base['cg']['by_position']]
    print('| CG | ' + ' | '.join(f'{lo}-{hi - 1}' for lo, hi in buckets) + ' |')
    print('|---|' + '---:|' * len(buckets))
    for name, r in runs[1:]:
        print(f'| {name} | ' + ' | '.join(f"{b['mean']:.2f}" for b in r['cg']['by_position']) + ' |')
    print()
    print('Distribution of iterations per (token, head), share of solves:')
    print()
    width = max(len(r['cg']['all']['histogram']) for _, r in runs[1:])
    shown = min(width, 16)
    print('| CG | ' + ' | '.join(str(i) for i in range(shown)) + ' |')
    print('|---|' + '---:|' * shown)
    for name, r in runs[1:]:
        h = r['cg']['all']['histogram']
        n = sum(h)
        print(f'| {name} | ' + ' | '.join(f'{100 * (h[i] if i < len(h) else 0) / n:.1f}%' for i in range(shown)) + ' |')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '.')
