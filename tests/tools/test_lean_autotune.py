"""tools/fla/lean_autotune.py against a stand-in for triton.runtime.autotuner (Triton is not
installed here): which configurations the lean set keeps, and that the full lists come back."""
import os
import sys
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'tools', 'fla'))


class Config:
    def __init__(self, num_warps, num_stages, **kwargs):
        self.num_warps, self.num_stages, self.kwargs = num_warps, num_stages, kwargs

    def __repr__(self):
        return f'Config({self.kwargs}, w{self.num_warps}, s{self.num_stages})'


class Autotuner:
    def __init__(self, fn, arg_names, configs, prune_configs_by=None):
        self.configs, self.cache = list(configs), {'tuned': 1}


triton = types.ModuleType('triton')
triton.runtime = types.ModuleType('triton.runtime')
triton.runtime.autotuner = types.ModuleType('triton.runtime.autotuner')
triton.runtime.autotuner.Autotuner = Autotuner
sys.modules.update({'triton': triton, 'triton.runtime': triton.runtime,
                    'triton.runtime.autotuner': triton.runtime.autotuner})

import lean_autotune  # noqa: E402


class LeanAutotuneTest(unittest.TestCase):
    def test_block_sizes_spread_over_the_range_with_warps_nearest_four(self):
        configs = [Config(w, s, BT=bt) for bt in (16, 32, 64, 128) for w in (1, 2, 4, 8) for s in (2, 3, 4)]
        kept = lean_autotune.lean_configs(configs)
        self.assertEqual([(c.kwargs['BT'], c.num_warps, c.num_stages) for c in kept],
                         [(16, 4, 2), (64, 4, 2), (128, 4, 2)])

    def test_one_block_size_keeps_the_best_warps_and_stages_in_fla_order(self):
        configs = [Config(w, s) for w in (1, 2, 4, 8, 16) for s in (3, 2)]
        kept = lean_autotune.lean_configs(configs)
        self.assertEqual([(c.num_warps, c.num_stages) for c in kept], [(4, 2), (4, 3), (2, 2)])

    def test_short_lists_are_unchanged(self):
        configs = [Config(4, 2, BT=16), Config(8, 3, BT=32)]
        self.assertEqual(lean_autotune.lean_configs(configs), configs)

    def test_installed_autotuner_is_lean_and_can_be_restored(self):
        lean_autotune.install_lean_autotune()
        lean_autotune.install_lean_autotune()  # idempotent
        configs = [Config(w, 2, BT=bt) for bt in (16, 32, 64, 128) for w in (2, 4)]
        tuner = Autotuner(None, [], configs)
        pruned = Autotuner(None, [], configs, prune_configs_by={'early_config_prune': None})
        self.assertEqual(len(tuner.configs), 3)
        self.assertEqual(len(pruned.configs), len(configs))  # kernels with a pruner keep fla's list
        self.assertEqual(lean_autotune.restore_full_autotune(), 1)
        self.assertEqual(tuner.configs, configs)
        self.assertEqual(tuner.cache, {})


if __name__ == '__main__':
    unittest.main()
