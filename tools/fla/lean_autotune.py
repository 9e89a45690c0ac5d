"""Fewer Triton autotune configurations for fla's kernels (used by tools/fla/make_goldens.py
and tools/train/train_mesanet.py).

fla autotunes most kernels over 4-48 configurations and compiles every one before timing it:
on a fresh machine the first training step took ~230 s (H200), and each golden configuration
minutes. With the lean set each autotuned kernel keeps at most LEAN_CONFIGS configurations:
block sizes spread over fla's range, each with num_warps nearest 4 and the fewest pipeline
stages. The launch configuration changes only speed and float summation order (as autotuning
on a different GPU would), not the algorithm. Must be installed before fla is imported.
"""
import math

LEAN_CONFIGS = 3
# Every autotuner created while the lean set is installed, so the full lists can be restored.
TUNERS = []


def _score(c):
    w = max(1, int(getattr(c, 'num_warps', 4) or 4))
    st = int(getattr(c, 'num_stages', 2) or 2)
    return (abs(math.log2(w) - 2), st)


def lean_configs(configs, k=LEAN_CONFIGS):
    """The at most k configurations kept out of `configs` (fla's order)."""
    full = list(configs)
    if len(full) <= k:
        return full
    groups = {}
    for c in full:  # configurations grouped by their block sizes (kwargs), in fla's order
        groups.setdefault(tuple(sorted((getattr(c, 'kwargs', None) or {}).items())), []).append(c)
    keys = list(groups)
    if len(keys) == 1:
        return sorted(full, key=_score)[:k]  # stable: ties keep fla's order
    # Block sizes spread over fla's range, each with its best warps/stages.
    idx = sorted({round(i * (len(keys) - 1) / (k - 1)) for i in range(k)})
    return [min(groups[keys[i]], key=_score) for i in idx]


def install_lean_autotune(k=LEAN_CONFIGS):
    from triton.runtime import autotuner
    orig = autotuner.Autotuner.__init__
    if getattr(orig, '_mesanet_lean', False):
        return

    def init(self, fn, arg_names, configs, *a, **kw):
        full = list(configs)
        # Kernels with their own pruning keep fla's list: the pruner expects it.
        lean = full if kw.get('prune_configs_by') else lean_configs(full, k)
        orig(self, fn, arg_names, lean, *a, **kw)
        self._mesanet_full_configs = full
        TUNERS.append(self)

    init._mesanet_lean = True
    autotuner.Autotuner.__init__ = init


def restore_full_autotune():
    """Gives every lean autotuner its full list back (e.g. when a lean set failed to run);
    returns how many changed."""
    n = 0
    for t in TUNERS:
        full = getattr(t, '_mesanet_full_configs', None)
        if full is not None and len(full) != len(t.configs):
            t.configs = full
            t.cache.clear()
            n += 1
    return n
