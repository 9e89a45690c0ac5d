#!/usr/bin/env python3
"""Parity goldens for mesaserve, produced by flash-linear-attention (fla) itself.

For each of a few small MesaNet configurations this script builds
``fla.models.MesaNetForCausalLM`` on CUDA in bfloat16 with random, deliberately
"loud" weights (see ``randomize``), runs fla's own prefill (chunked Triton path)
and decode (one-step Triton path through fla's cache), and writes one folder per
configuration:

    config.json                 MesaNetConfig serialised (model_type "mesa_net")
    model.safetensors           weights exactly as the run used them (bf16; the
                                fp32 parameters fla creates in fp32 stay fp32:
                                every ``lambda_params`` and, without output gate,
                                every ``attn.o_norm.weight``)
      or model-0000X-of-00002.safetensors + model.safetensors.index.json (sharded)
    input_ids.npy               int32 [T]; input_ids[0] = bos = 1
    logits_prefill.npy          float32 [T, vocab]: one forward over all T tokens, no cache
    logits_decode.npy           float32 [T, vocab]: prefill of the first N tokens with
                                use_cache=True (rows 0..N-1), then tokens N..T-1 one at a
                                time through the cache (rows N..T-1, fla's decode kernel)
    logits_continue.npy         (config 'nofuse' only) float32 [T, vocab]: prefill of tokens 0..99,
                                then tokens 100..169 as ONE call on the non-empty cache, then
                                tokens 170..T-1 one at a time
    greedy.npy                  int32 [P + G]: prompt (first P input ids) + G tokens generated
                                greedily (prefill the prompt, then decode token by token)
    greedy_margins.npy          float32 [G]: top1 - top2 logit at each greedy step
    golden.json                 versions, GPU, sizes, fla's own prefill-vs-decode gap, ...

Usage on the GPU machine (see tools/fla/README.md):

    python3 tools/fla/make_goldens.py --out /tmp/fla_goldens --tar $OUT/fla_goldens.tar

``--cpu-smoke-test`` exercises everything except fla's forward on a machine without
a GPU: the model forward is REPLACED BY A FAKE that returns pseudo-random logits.
Files written in that mode are NOT goldens (golden.json says so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import time
import traceback
from types import SimpleNamespace

import numpy as np
import torch

T_TOTAL = 200          # tokens in input_ids
N_PREFILL = 130        # tokens prefilled before switching to one-token decode
PROMPT_LEN = 40        # greedy prompt length
GEN_LEN = 32           # greedy tokens generated
GREEDY_CANDIDATES = 24     # random inputs tried for a clear greedy continuation
GREEDY_MIN_MARGIN = 0.25   # stop searching once every greedy step has at least this top1-top2 margin
CONT_SEGMENTS = (100, 170)  # logits_continue.npy: prefill [0,100), one call [100,170), then decode
TARGET_LOGIT_RMS = 4.0
MODEL_DTYPE = torch.bfloat16  # --dtype; fla's own model test runs float16
FOLDER_BUDGET = 1.6e6  # bytes; warn above this (folders are committed)

# Small configurations. Every value not given here is MesaNetConfig's default.
# Notes on the choices:
#  * head_dim 32 is not used: fla 0.6.0's chunked CG kernel (chunk_fwd_mesa_cg_dim64_kernel)
#    hits "illegal memory access" with head_dim 32 on H200 (K = 48, 50, 64 work).
#  * decay_range: sigmoid(a_proj.bias) is spread (in logit space) over all heads of all layers
#    between these bounds.
#  * With these "loud" random weights fla's own prefill and decode paths differ by ~1e-2
#    (relative RMS of the logits; ~3e-3 for a small trained model), and two prefills of the
#    same tokens that split the chunks differently also differ by ~1e-2 (nofuse,
#    logits_continue.npy). Compare each path with its own golden and expect tolerances of
#    that order; golden.json records the gaps.
CONFIGS = [
    dict(
        name='base',
        shards=1,
        decay_range=(0.5, 0.995),
        config=dict(hidden_size=128, num_hidden_layers=2, num_heads=2, head_dim=64, conv_size=4,
                    vocab_size=512, intermediate_size=128, use_output_gate=False,
                    tie_word_embeddings=False, lambda_lower_bound=0.25),
    ),
    dict(
        name='gate_tied',
        shards=1,
        decay_range=(0.5, 0.995),
        # intermediate_size left None: fla derives 256 * ceil(int(96 * 2 * 2 / 3) / 256) = 256
        config=dict(hidden_size=96, num_hidden_layers=2, num_heads=2, head_dim=48, conv_size=4,
                    vocab_size=509, hidden_ratio=2, use_output_gate=True,
                    tie_word_embeddings=True, lambda_lower_bound=0.5),
    ),
    dict(
        name='odd_dims',
        shards=2,
        decay_range=(0.5, 0.995),
        config=dict(hidden_size=96, num_hidden_layers=3, num_heads=3, head_dim=50, conv_size=3,
                    vocab_size=397, intermediate_size=200, use_output_gate=False,
                    tie_word_embeddings=False, lambda_lower_bound=0.25,
                    max_cg_step_training=24, max_cg_step_decoding=16),
    ),
    dict(
        name='nofuse',
        shards=1,
        decay_range=(0.5, 0.995),
        continuation=True,   # also writes logits_continue.npy (multi-token call on a non-empty cache)
        # head_dim 64 * 2 heads = 128 > hidden 64; intermediate derived: 256
        config=dict(hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=64, conv_size=4,
                    vocab_size=300, use_output_gate=False, tie_word_embeddings=False,
                    lambda_lower_bound=0.1, fuse_norm=False, norm_eps=1e-5),
    ),
]


def log(*a):
    print(*a, flush=True)


# Triton autotuning: --autotune lean (default) keeps at most 3 configurations per fla kernel
# (tools/fla/lean_autotune.py); --autotune full runs fla exactly as shipped.
from lean_autotune import install_lean_autotune  # noqa: E402  (this script's own folder)


# ----------------------------------------------------------------------------------------
# model construction / dtypes


def fp32_param_names(model, config) -> set[str]:
    """Parameters that fla creates in float32 and that stay float32 when a checkpoint is
    loaded with from_pretrained(dtype=bfloat16): lambda_params always, the gate-less
    o_norm weight (RMSNorm(..., dtype=torch.float32) in fla/layers/mesa_net.py)."""
    names = set()
    for n, _ in model.named_parameters():
        if n.endswith('.attn.lambda_params'):
            names.add(n)
        if n.endswith('.attn.o_norm.weight') and not config.use_output_gate:
            names.add(n)
    return names


def cast_model(model, config, dtype=None):
    """Cast every floating parameter to `dtype` except those fla keeps in fp32.
    Works per Parameter object, so tied weights stay tied."""
    dtype = MODEL_DTYPE if dtype is None else dtype
    keep = fp32_param_names(model, config)
    for n, p in model.named_parameters():  # duplicates (tied) are visited once
        p.data = p.data.to(torch.float32 if n in keep else dtype)
    for n, b in model.named_buffers():
        if b.is_floating_point():
            b.data = b.data.to(dtype)
    return model


def state_to_save(model, config) -> dict[str, torch.Tensor]:
    """The tensors to write: exactly the run's parameters, CPU, contiguous.
    With tied embeddings lm_head.weight is omitted (HF convention)."""
    sd = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if config.tie_word_embeddings and n == 'lm_head.weight':
            continue
        sd[n] = p.detach().to('cpu').contiguous().clone()
    return sd


def randomize(model, config, gen: torch.Generator, decay_range=(0.5, 0.995)):
    """Random weights that make a tiny model's logits meaningful (fla's std-0.02 init
    gives near-constant logits). Values are drawn in fp32 on the CPU from `gen`."""
    d = config.hidden_size
    H = config.num_heads
    L = config.num_hidden_layers
    lo, hi = decay_range
    # decays sigmoid(a_proj.bias) of all L*H heads, evenly spaced in logit space, shuffled
    logit = lambda x: math.log(x / (1 - x))  # noqa: E731
    slots = torch.linspace(logit(lo), logit(hi), L * H)[torch.randperm(L * H, generator=gen)]

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    with torch.no_grad():
        for n, p in sorted(model.named_parameters(), key=lambda x: x[0]):
            shape = tuple(p.shape)
            if n == 'model.embeddings.weight':
                std = TARGET_LOGIT_RMS / math.sqrt(d) if config.tie_word_embeddings else 1.0
                v = normal(shape, std)
                if config.tie_word_embeddings:
                    v = v * torch.exp(0.4 * torch.randn((shape[0], 1), generator=gen))
            elif n == 'lm_head.weight':
                v = normal(shape, TARGET_LOGIT_RMS / math.sqrt(d))
                # uneven row norms give a heavier-tailed logit distribution: clearer top-1 margins
                v = v * torch.exp(0.4 * torch.randn((shape[0], 1), generator=gen))
            elif n.endswith('norm.weight'):          # attn_norm, mlp_norm, o_norm, final norm
                v = uniform(shape, 0.8, 1.2)
            elif n.endswith('lambda_params'):
                v = uniform(shape, -1.0, 1.5)
            elif n.endswith('a_proj.bias'):
                layer = int(n.split('.')[2])
                v = slots[layer * H:(layer + 1) * H].clone()
            elif n.endswith('b_proj.bias'):
                v = uniform(shape, -1.0, 2.0)
            elif n.endswith('a_proj.weight'):
                v = normal(shape, 0.5 / math.sqrt(shape[1]))
            elif n.endswith('conv1d.weight'):        # [D, 1, W]
                v = normal(shape, 0.6)
            elif n.endswith('.weight') and len(shape) == 2:
                v = normal(shape, 1.0 / math.sqrt(shape[1]))
            elif n.endswith('.bias'):
                v = uniform(shape, -0.5, 0.5)
            else:
                raise RuntimeError(f'randomize: no rule for parameter {n} {shape}')
            p.data = v.to(p.dtype)


# ----------------------------------------------------------------------------------------
# saving / loading


def write_config(config, path):
    text = config.to_json_string()  # same content as save_pretrained's config.json
    d = json.loads(text)
    assert d.get('model_type') == 'mesa_net', d.get('model_type')
    with open(path, 'w') as f:
        f.write(text)


def save_weights(sd: dict[str, torch.Tensor], folder: str, shards: int) -> list[str]:
    from safetensors.torch import save_file
    if shards <= 1:
        save_file(sd, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})
        os.chmod(os.path.join(folder, 'model.safetensors'), 0o644)
        return ['model.safetensors']
    names = sorted(sd)
    total = sum(sd[n].numel() * sd[n].element_size() for n in names)
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for n in names:
        i = min(shards - 1, int(acc * shards / total))
        groups[i].append(n)
        acc += sd[n].numel() * sd[n].element_size()
    groups = [g for g in groups if g]
    shards = len(groups)
    files, weight_map = [], {}
    for i, g in enumerate(groups):
        fn = f'model-{i + 1:05d}-of-{shards:05d}.safetensors'
        save_file({n: sd[n] for n in g}, os.path.join(folder, fn), metadata={'format': 'pt'})
        os.chmod(os.path.join(folder, fn), 0o644)
        files.append(fn)
        for n in g:
            weight_map[n] = fn
    index = {
        'metadata': {'total_size': int(total), 'total_parameters': int(sum(sd[n].numel() for n in names))},
        'weight_map': dict(sorted(weight_map.items())),
    }
    with open(os.path.join(folder, 'model.safetensors.index.json'), 'w') as f:
        json.dump(index, f, indent=2)
        f.write('\n')
    files.append('model.safetensors.index.json')
    return files


def load_weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    idx = os.path.join(folder, 'model.safetensors.index.json')
    if os.path.exists(idx):
        with open(idx) as f:
            index = json.load(f)
        out = {}
        for fn in sorted(set(index['weight_map'].values())):
            part = load_file(os.path.join(folder, fn))
            for n, t in part.items():
                assert index['weight_map'][n] == fn, (n, fn)
                out[n] = t
        assert set(out) == set(index['weight_map']), 'index/shard mismatch'
        return out
    return load_file(os.path.join(folder, 'model.safetensors'))


def load_into(model, config, sd: dict[str, torch.Tensor]):
    """Copy `sd` into `model` exactly (no dtype conversion except bf16 -> fp32, which is exact)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = set(params)
    if config.tie_word_embeddings:
        expected.discard('lm_head.weight')
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        raise RuntimeError(f'state mismatch: missing={sorted(missing)} unexpected={sorted(unexpected)}')
    with torch.no_grad():
        for n in expected:
            p, t = params[n], sd[n]
            if tuple(p.shape) != tuple(t.shape):
                raise RuntimeError(f'{n}: shape {tuple(t.shape)} in file, {tuple(p.shape)} in model')
            if t.dtype != p.dtype and not (t.dtype == MODEL_DTYPE and p.dtype == torch.float32):
                raise RuntimeError(f'{n}: dtype {t.dtype} in file, {p.dtype} in model')
            p.copy_(t.to(p.device))
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr(), 'tie lost'


def hf_from_pretrained_check(folder, model):
    """True if MesaNetForCausalLM.from_pretrained(folder, dtype=bfloat16) yields exactly the
    run's parameters (values and dtypes); a string describing the difference otherwise."""
    from fla.models import MesaNetForCausalLM
    try:
        m = MesaNetForCausalLM.from_pretrained(folder, dtype=MODEL_DTYPE)
    except Exception as e:  # noqa: BLE001
        return f'from_pretrained failed: {type(e).__name__}: {e}'
    ref = dict(model.named_parameters(remove_duplicate=False))
    for n, p in m.named_parameters(remove_duplicate=False):
        q = ref[n].detach().cpu()
        if p.dtype != q.dtype or not torch.equal(p.detach(), q):
            return f'differs at {n}: {p.dtype} vs run {q.dtype}'
    if m.config.tie_word_embeddings and m.lm_head.weight.data_ptr() != m.model.embeddings.weight.data_ptr():
        return 'lm_head not tied after from_pretrained'
    return True


# ----------------------------------------------------------------------------------------
# fla runs


def rel_rms(ref: np.ndarray, x: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    x = x.astype(np.float64)
    return float(np.sqrt(np.mean((ref - x) ** 2)) / (np.sqrt(np.mean(ref ** 2)) + 1e-8))


def to_np(logits) -> np.ndarray:
    return logits.detach().float().cpu().numpy()


def run_prefill(model, ids):
    out = model(input_ids=ids, use_cache=False)
    return to_np(out.logits[0])


def run_decode(model, ids, n_prefill):
    rows = []
    out = model(input_ids=ids[:, :n_prefill], use_cache=True)
    rows.append(to_np(out.logits[0]))
    pkv = out.past_key_values
    assert pkv is not None, 'no cache returned by the prefill'
    for t in range(n_prefill, ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        rows.append(to_np(out.logits[0]))
    return np.concatenate(rows, axis=0)


def run_continue(model, ids, segments):
    """Prefill ids[:segments[0]] (no cache yet), then feed ids[segments[0]:segments[1]] as ONE
    multi-token call on the non-empty cache (fla >= 0.6 runs its chunked kernel from the cached
    fp32 states and conv states), then the remaining tokens one at a time (decode kernel)."""
    a, b = segments
    rows = []
    out = model(input_ids=ids[:, :a], use_cache=True)
    rows.append(to_np(out.logits[0]))
    out = model(input_ids=ids[:, a:b], past_key_values=out.past_key_values, use_cache=True)
    rows.append(to_np(out.logits[0]))
    pkv = out.past_key_values
    for t in range(b, ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
        rows.append(to_np(out.logits[0]))
    return np.concatenate(rows, axis=0)


def run_greedy(model, prompt, n_gen):
    toks, margins = [], []
    out = model(input_ids=prompt, use_cache=True)
    pkv = out.past_key_values
    for i in range(n_gen):
        last = out.logits[0, -1].float()
        top = torch.topk(last, 2)
        tok = int(top.indices[0])
        margins.append(float(top.values[0] - top.values[1]))
        toks.append(tok)
        if i + 1 == n_gen:
            break
        nxt = torch.tensor([[tok]], dtype=prompt.dtype, device=prompt.device)
        out = model(input_ids=nxt, past_key_values=pkv, use_cache=True)
        pkv = out.past_key_values
    return toks, margins


class FakeForward:
    """CPU smoke test ONLY: stands in for fla's Triton forward. Logits are a fixed
    function of (position, token) plus a little noise on the 'decode' path, returned
    in bf16 like fla's. The 'cache' just counts tokens."""

    def __init__(self, vocab, seed):
        g = torch.Generator().manual_seed(seed)
        self.tok = torch.randn(vocab, vocab, generator=g) * 3
        self.pos = torch.randn(4096, vocab, generator=g)
        self.noise = torch.Generator().manual_seed(seed + 1)

    def __call__(self, input_ids=None, past_key_values=None, use_cache=None, **kw):
        B, L = input_ids.shape
        start = 0 if past_key_values is None else past_key_values['seen']
        pos = torch.arange(start, start + L)
        logits = self.tok[input_ids[0].cpu()] + self.pos[pos]
        if past_key_values is not None:
            logits = logits + 1e-3 * torch.randn(logits.shape, generator=self.noise)
        cache = {'seen': start + L} if use_cache else None
        return SimpleNamespace(logits=logits[None].to(MODEL_DTYPE), past_key_values=cache)


def build_model(cfg_kwargs, device, seed, smoke, decay_range=(0.5, 0.995)):
    from fla.models import MesaNetConfig, MesaNetForCausalLM
    config = MesaNetConfig(**cfg_kwargs)
    config.architectures = ['MesaNetForCausalLM']
    config.dtype = MODEL_DTYPE
    torch.manual_seed(seed)
    model = MesaNetForCausalLM(config)       # fp32 on CPU
    gen = torch.Generator().manual_seed(seed)
    randomize(model, config, gen, decay_range)
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embeddings.weight, 'fla did not tie lm_head to embeddings'
    cast_model(model, config, MODEL_DTYPE)
    model.to(device)
    model.eval()
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr(), 'tie lost by .to()'
    if smoke:
        model.forward = FakeForward(config.vocab_size, seed)
    return config, model


def calibrate(model, config, ids, smoke):
    """Scale lm_head (untied) or the embeddings (tied) so that logits have an RMS of
    about TARGET_LOGIT_RMS. Returns the final logits RMS."""
    if smoke:
        return float(np.sqrt(np.mean(run_prefill(model, ids) ** 2)))
    w = model.lm_head.weight  # == embeddings when tied
    rms = None
    for _ in range(4):
        rms = float(np.sqrt(np.mean(run_prefill(model, ids) ** 2)))
        if 0.8 * TARGET_LOGIT_RMS <= rms <= 1.25 * TARGET_LOGIT_RMS:
            break
        with torch.no_grad():
            w.data = (w.data.float() * (TARGET_LOGIT_RMS / rms)).to(w.dtype)
        if config.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr()
    return rms


def run_config(spec, idx, args, out_root, versions):
    from fla.models import MesaNetConfig, MesaNetForCausalLM
    name = spec['name']
    smoke = args.cpu_smoke_test
    device = 'cpu' if smoke else 'cuda'
    seed = args.seed + idx
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):  # stale files from an earlier run
        os.remove(os.path.join(folder, f))
    t0 = time.time()
    config, model = build_model(spec['config'], device, seed, smoke, spec['decay_range'])
    V = config.vocab_size

    def make_ids(c):
        g = torch.Generator().manual_seed(seed + 7777 + 1000 * c)
        x = torch.randint(3, V, (T_TOTAL,), generator=g).to(torch.int32).numpy()
        x[0] = config.bos_token_id
        return x

    ids_np = make_ids(0)
    ids = torch.from_numpy(ids_np.astype(np.int64))[None].to(device)
    with torch.no_grad():
        logit_rms = calibrate(model, config, ids, smoke)
        # The greedy golden is only useful while its top-1 margins are clear (bf16 logits of
        # size ~10 are spaced 0.0625 apart): try a few random inputs and keep the one whose
        # greedy continuation of its first PROMPT_LEN tokens has the largest minimum margin.
        best = None
        for c in range(GREEDY_CANDIDATES):
            x = make_ids(c)
            xt = torch.from_numpy(x.astype(np.int64))[None].to(device)
            toks, margins = run_greedy(model, xt[:, :PROMPT_LEN], GEN_LEN)
            if best is None or min(margins) > best[0]:
                best = (min(margins), c, x)
            if min(margins) >= GREEDY_MIN_MARGIN:
                break
        greedy_candidate = best[1]
        ids_np = best[2]
        ids = torch.from_numpy(ids_np.astype(np.int64))[None].to(device)
        prefill = run_prefill(model, ids)
        prefill2 = run_prefill(model, ids)
        decode = run_decode(model, ids, N_PREFILL)
        toks, margins = run_greedy(model, ids[:, :PROMPT_LEN], GEN_LEN)
        cont = run_continue(model, ids, CONT_SEGMENTS) if spec.get('continuation') else None
    assert prefill.shape == (T_TOTAL, V) and decode.shape == (T_TOTAL, V), (prefill.shape, decode.shape)
    if not np.isfinite(prefill).all() or not np.isfinite(decode).all():
        raise RuntimeError('non-finite logits')

    # files
    write_config(config, os.path.join(folder, 'config.json'))
    sd = state_to_save(model, config)
    weight_files = save_weights(sd, folder, spec['shards'])
    np.save(os.path.join(folder, 'input_ids.npy'), ids_np.astype(np.int32))
    np.save(os.path.join(folder, 'logits_prefill.npy'), prefill.astype(np.float32))
    np.save(os.path.join(folder, 'logits_decode.npy'), decode.astype(np.float32))
    greedy = np.concatenate([ids_np[:PROMPT_LEN], np.array(toks, dtype=np.int32)]).astype(np.int32)
    np.save(os.path.join(folder, 'greedy.npy'), greedy)
    np.save(os.path.join(folder, 'greedy_margins.npy'), np.array(margins, dtype=np.float32))
    if cont is not None:
        assert cont.shape == (T_TOTAL, V), cont.shape
        np.save(os.path.join(folder, 'logits_continue.npy'), cont.astype(np.float32))

    # checks: reload the folder into a fresh model and compare weights (and logits on GPU)
    cfg2 = MesaNetConfig.from_json_file(os.path.join(folder, 'config.json'))
    for k, v in spec['config'].items():
        assert getattr(cfg2, k) == v, f'config.json round trip: {k}={getattr(cfg2, k)!r} != {v!r}'
    model2 = cast_model(MesaNetForCausalLM(cfg2), cfg2, MODEL_DTYPE)
    load_into(model2, cfg2, load_weights(folder))
    ref_params = dict(model.named_parameters(remove_duplicate=False))
    for n, p in model2.named_parameters(remove_duplicate=False):
        q = ref_params[n].detach().cpu()
        if p.dtype != q.dtype or not torch.equal(p.detach(), q):
            raise RuntimeError(f'reload mismatch in {n}: {p.dtype} vs {q.dtype}')
    reload_prefill_maxabs = None
    if not smoke:
        model2.to(device).eval()
        with torch.no_grad():
            reload_prefill_maxabs = float(np.abs(run_prefill(model2, ids) - prefill).max())
    del model2
    hf_identical = hf_from_pretrained_check(folder, model)
    if hf_identical is not True:
        log(f'WARNING: {name}: HF from_pretrained(dtype=bfloat16) check: {hf_identical}')

    gap = rel_rms(prefill[N_PREFILL:], decode[N_PREFILL:])
    gap_rows = [rel_rms(prefill[t], decode[t]) for t in range(N_PREFILL, T_TOTAL)]
    head_rows_maxabs = float(np.abs(prefill[:N_PREFILL] - decode[:N_PREFILL]).max())
    top1_agree = float(np.mean(prefill.argmax(-1) == decode.argmax(-1)))
    srt = np.sort(prefill, axis=-1)
    prefill_margins = srt[:, -1] - srt[:, -2]
    dtypes = {}
    for n, t in sd.items():
        dtypes.setdefault(str(t.dtype).replace('torch.', ''), []).append(n)
    fp32_names = sorted(dtypes.get('float32', []))
    sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}
    n_params = sum(p.numel() for p in model.parameters())
    golden = {
        'name': name,
        'SMOKE_TEST_FAKE_LOGITS_NOT_A_GOLDEN': bool(smoke),
        'fla_version': versions['fla'],
        'torch_version': versions['torch'],
        'transformers_version': versions['transformers'],
        'triton_version': versions['triton'],
        'gpu': versions['gpu'],
        'python': platform.python_version(),
        'dtype': str(MODEL_DTYPE).replace('torch.', ''),
        'triton_autotune': args.autotune,
        'fp32_parameters': fp32_names,
        'fp32_parameters_note': ('these parameters were float32 during the run (as fla creates them and as '
                                 'from_pretrained(dtype=bfloat16) keeps them) and are stored as float32; '
                                 'all other tensors were bfloat16 during the run and are stored as bfloat16'),
        'tied_embeddings': bool(config.tie_word_embeddings),
        'lm_head_saved': 'lm_head.weight' in sd,
        'weight_files': weight_files,
        'num_parameters': int(n_params),
        'config_overrides': spec['config'],
        'decay_range_sigmoid_a_proj_bias': list(spec['decay_range']),
        'seed': seed,
        'T': T_TOTAL,
        'N': N_PREFILL,
        'prompt_len': PROMPT_LEN,
        'gen_len': GEN_LEN,
        'max_cg_step_training': int(config.max_cg_step_training),
        'max_cg_step_decoding': int(config.max_cg_step_decoding),
        'logits_rms': float(np.sqrt(np.mean(prefill.astype(np.float64) ** 2))),
        'logits_rms_calibration': logit_rms,
        'prefill_top1_margin_median': float(np.median(prefill_margins)),
        'prefill_top1_margin_min': float(prefill_margins.min()),
        'prefill_vs_decode_rel_rms_rows_N_to_T': gap,
        'prefill_vs_decode_rel_rms_per_row_max': float(max(gap_rows)),
        'prefill_vs_decode_max_abs_rows_N_to_T': float(np.abs(prefill[N_PREFILL:] - decode[N_PREFILL:]).max()),
        'prefill_vs_decode_top1_agreement_all_rows': top1_agree,
        'prefill_T_vs_prefill_N_max_abs_rows_0_to_N': head_rows_maxabs,
        'prefill_repeat_max_abs': float(np.abs(prefill - prefill2).max()),
        'reload_prefill_max_abs': reload_prefill_maxabs,
        'hf_from_pretrained_bf16_identical_params': hf_identical,
        'continuation_segments': list(CONT_SEGMENTS) if cont is not None else None,
        'continuation_note': (None if cont is None else
                              'logits_continue.npy rows: [0, a) prefill (use_cache=True, no cache yet); [a, b) ONE call of b-a '
                              'tokens on the non-empty cache (chunked kernel from cached fp32 states); [b, T) '
                              'one token per call (decode kernel); (a, b) = continuation_segments'),
        'continue_vs_prefill_rel_rms_rows_a_to_b': (None if cont is None else rel_rms(
            prefill[CONT_SEGMENTS[0]:CONT_SEGMENTS[1]], cont[CONT_SEGMENTS[0]:CONT_SEGMENTS[1]])),
        'continue_vs_prefill_rel_rms_rows_b_to_T': (None if cont is None else rel_rms(
            prefill[CONT_SEGMENTS[1]:], cont[CONT_SEGMENTS[1]:])),
        'greedy_input_candidate': greedy_candidate,
        'greedy_min_margin': float(min(margins)),
        'greedy_margins_below_0.1': int(sum(m < 0.1 for m in margins)),
        'metric': 'rel_rms(ref, x) = RMS(ref - x) / (RMS(ref) + 1e-8), fla/utils testing metric',
        'files': sizes,
        'folder_bytes': int(sum(sizes.values())),
        'seconds': round(time.time() - t0, 2),
    }
    with open(os.path.join(folder, 'golden.json'), 'w') as f:
        json.dump(golden, f, indent=2)
        f.write('\n')
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    if size > FOLDER_BUDGET:
        log(f'WARNING: {name}: folder is {size / 1e6:.2f} MB (> {FOLDER_BUDGET / 1e6:.1f} MB)')
    log(f'[{name}] params={n_params} logits_rms={golden["logits_rms"]:.3f} '
        f'prefill-vs-decode rel_rms(rows {N_PREFILL}..{T_TOTAL - 1})={gap:.3e} '
        f'max_row={golden["prefill_vs_decode_rel_rms_per_row_max"]:.3e} '
        f'greedy_min_margin={golden["greedy_min_margin"]:.4f} size={size / 1e6:.2f}MB '
        f'({golden["seconds"]}s)')
    del model
    if not smoke:
        torch.cuda.empty_cache()
    return golden


def versions_info(smoke):
    import fla
    import transformers
    try:
        import triton
        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = None
    gpu = 'cpu (smoke test)' if smoke else torch.cuda.get_device_name(0)
    return {'fla': fla.__version__, 'torch': torch.__version__, 'transformers': transformers.__version__,
            'triton': tv, 'gpu': gpu}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = os.path.join(os.environ['OUT'], 'goldens') if os.environ.get('OUT') else None
    ap.add_argument('--out', default=default_out,
                    help='output folder, one sub-folder per config (default: $OUT/goldens)')
    ap.add_argument('--tar', default=None,
                    help='also pack the output folder into this .tar (useful when only a few files can be '
                         'fetched back, e.g. --tar $OUT/fla_goldens.tar with --out /tmp/fla_goldens)')
    ap.add_argument('--only', nargs='*', default=None, help='config names to run (default: all)')
    ap.add_argument('--seed', type=int, default=20260901)
    ap.add_argument('--dtype', choices=['bfloat16', 'float16'], default='bfloat16',
                    help='model dtype of the run (fla test_modeling_mesanet uses float16)')
    ap.add_argument('--cpu-smoke-test', action='store_true',
                    help='no GPU: replace the model forward by a FAKE (random logits) to exercise file writing')
    ap.add_argument('--autotune', choices=['lean', 'full'], default='lean',
                    help='lean: at most 3 Triton autotune configs per fla kernel (default; minutes faster on a '
                         'fresh machine); full: fla exactly as shipped')
    ap.add_argument('--no-isolate', action='store_true',
                    help='run all configs in this process (default: one child process per config, so that a '
                         'CUDA error in one config, which poisons the CUDA context, cannot affect the others)')
    ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global MODEL_DTYPE
    MODEL_DTYPE = getattr(torch, args.dtype)
    if not args.out:
        ap.error('--out is required when $OUT is not set')
    if not args.cpu_smoke_test and not torch.cuda.is_available():
        log('ERROR: CUDA is not available (use --cpu-smoke-test to test the file writing without a GPU)')
        return 2
    if args.cpu_smoke_test and not args.child:
        log('*' * 78)
        log('CPU SMOKE TEST: model forward is FAKE (random logits). Output is NOT a golden.')
        log('*' * 78)
    if args.autotune == 'lean' and not args.cpu_smoke_test:
        install_lean_autotune()  # before fla is imported
    versions = versions_info(args.cpu_smoke_test)
    if not args.child:
        log(f'fla {versions["fla"]}  torch {versions["torch"]}  transformers {versions["transformers"]}  '
            f'triton {versions["triton"]}  device: {versions["gpu"]}')
    os.makedirs(args.out, exist_ok=True)
    results, failed = {}, []
    unknown = set(args.only or []) - {c['name'] for c in CONFIGS}
    if unknown:
        ap.error(f'unknown config(s) {sorted(unknown)}; known: {[c["name"] for c in CONFIGS]}')
    for i, spec in enumerate(CONFIGS):
        if args.only and spec['name'] not in args.only:
            continue
        name = spec['name']
        if not args.child:
            log(f'=== {name} ===')
        if args.child or args.no_isolate:
            try:
                results[name] = run_config(spec, i, args, args.out, versions)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                sys.stdout.flush()
                failed.append(name)
            continue
        t0 = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), '--child', '--out', args.out, '--seed', str(args.seed),
               '--autotune', args.autotune, '--dtype', args.dtype, '--only', name] + (['--cpu-smoke-test'] if args.cpu_smoke_test else [])
        sys.stdout.flush()
        rc = subprocess.run(cmd).returncode
        gj = os.path.join(args.out, name, 'golden.json')
        if rc == 0 and os.path.exists(gj):
            with open(gj) as f:
                results[name] = json.load(f)
        else:
            log(f'[{name}] child process failed (rc={rc}) after {time.time() - t0:.0f}s')
            failed.append(name)
    if args.child:
        return 1 if failed else 0
    summary = {'versions': versions, 'smoke_test': bool(args.cpu_smoke_test), 'failed': failed,
               'configs': {k: {kk: v[kk] for kk in ('prefill_vs_decode_rel_rms_rows_N_to_T', 'greedy_min_margin',
                                                     'logits_rms', 'folder_bytes')} for k, v in results.items()}}
    with open(os.path.join(args.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
        f.write('\n')

    log('')
    log(f'{"config":<10} {"params":>8} {"logit_rms":>9} {"pf/dec rel_rms":>14} {"row_max":>9} '
        f'{"top1_agree":>10} {"greedy_min_m":>12} {"MB":>5}  status')
    for spec in CONFIGS:
        n = spec['name']
        if args.only and n not in args.only:
            continue
        if n in results:
            r = results[n]
            log(f'{n:<10} {r["num_parameters"]:>8} {r["logits_rms"]:>9.3f} '
                f'{r["prefill_vs_decode_rel_rms_rows_N_to_T"]:>14.3e} {r["prefill_vs_decode_rel_rms_per_row_max"]:>9.2e} '
                f'{r["prefill_vs_decode_top1_agreement_all_rows"]:>10.3f} {r["greedy_min_margin"]:>12.4f} '
                f'{r["folder_bytes"] / 1e6:>5.2f}  ok')
        else:
            log(f'{n:<10} {"":>8} {"":>9} {"":>14} {"":>9} {"":>10} {"":>12} {"":>5}  FAILED')
    if args.tar:
        os.makedirs(os.path.dirname(os.path.abspath(args.tar)), exist_ok=True)
        with tarfile.open(args.tar, 'w') as tf:
            tf.add(args.out, arcname=os.path.basename(os.path.normpath(args.out)))
        log(f'packed {args.out} into {args.tar} ({os.path.getsize(args.tar) / 1e6:.2f} MB)')
    if args.cpu_smoke_test:
        log('CPU SMOKE TEST finished (fake logits; not goldens).')
    if failed:
        log(f'FAILED configs: {failed}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
