#!/usr/bin/env python3
"""Train a small MesaNet language model with flash-linear-attention (fla), export it
as a model directory mesaserve can load, reload the export and measure held-out
perplexity with it.

Data folder (--data):
    train.bin      little-endian uint16 token ids, documents as [1] + ids + [2]
                   (may be train.bin.xz or train.bin.zst instead; decompressed to --work-dir)
    heldout.bin    same format (optional; used for a quick validation loss)
    heldout.txt    plain text; perplexity is measured on it with the exported model
    tokenizer.model  sentencepiece model (vocab 4096, bos 1, eos 2)

Training: a bf16 model (exactly the dtypes inference uses: every weight bf16 except
fla's fp32 parameters lambda_params and the gate-less o_norm weight) with fp32 master
weights, fp32 gradient accumulation and fused fp32 AdamW (betas 0.9/0.95, wd 0.1 on
matrices only); linear warm-up, then cosine decay to 10 % over the number of steps that
fits the time budget (estimated from the measured step time right after start-up);
gradient clipping 1.0; random windows of seq_len + 1 tokens.

Output (--out/<name>/):
    config.json        MesaNetConfig serialised (model_type "mesa_net")
    model.safetensors  bf16 weights; lambda_params (and gate-less attn.o_norm.weight) float32;
                       no lm_head.weight when the embeddings are tied
    tokenizer.model    copied from --data
    train_report.json  config, sizes, throughput, loss curve, held-out NLL/perplexity, samples
    train_log.txt      copy of the run's log lines

Several runs in one process: --configs runs.json, a JSON list of objects whose keys are
this script's option names (e.g. {"name": "s", "hidden": 256, "layers": 4, "time_budget": 150}).

--cpu-check runs the whole pipeline on the CPU with a FAKE model forward (embedding ->
lm_head, no MesaNet layers) to test data loading, the optimiser/master-weight logic,
export, reload, evaluation and sampling plumbing. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_PROMPTS = ['The ', 'In the beginning', 'Python is']


class Logger:
    def __init__(self):
        self.lines = []

    def __call__(self, *a):
        s = ' '.join(str(x) for x in a)
        self.lines.append(s)
        print(s, flush=True)


# ----------------------------------------------------------------------------------------
# arguments


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', required=True, help='data folder (train.bin[.xz|.zst], heldout.txt, tokenizer.model)')
    ap.add_argument('--out', required=True, help='output root; the model goes to OUT/NAME/')
    ap.add_argument('--name', default=None, help='run name (default: mesanet-h{hidden}-l{layers})')
    ap.add_argument('--configs', default=None,
                    help='JSON file: list of objects overriding options, one run each, back to back')
    # model
    ap.add_argument('--hidden', type=int, default=256)
    ap.add_argument('--layers', type=int, default=4)
    ap.add_argument('--heads', type=int, default=4)
    ap.add_argument('--head-dim', type=int, default=64)
    ap.add_argument('--conv-size', type=int, default=4)
    ap.add_argument('--intermediate-size', type=int, default=None, help='MLP width (default: fla rule, ratio 4)')
    ap.add_argument('--lambda-lower-bound', type=float, default=0.25)
    ap.add_argument('--max-cg-train', type=int, default=30, help='max_cg_step_training')
    ap.add_argument('--max-cg-decode', type=int, default=30, help='max_cg_step_decoding')
    ap.add_argument('--tie', action=argparse.BooleanOptionalAction, default=True, help='tie embeddings (default on)')
    ap.add_argument('--output-gate', action=argparse.BooleanOptionalAction, default=False,
                    help='use_output_gate (default off)')
    # optimisation
    ap.add_argument('--seq-len', type=int, default=512)
    ap.add_argument('--batch-tokens', type=int, default=131072, help='tokens per optimiser step')
    ap.add_argument('--micro-batch-tokens', type=int, default=32768,
                    help='tokens per forward/backward (halved automatically on OOM at the first step)')
    ap.add_argument('--lr', type=float, default=2e-3, help='peak learning rate')
    ap.add_argument('--min-lr-ratio', type=float, default=0.1)
    ap.add_argument('--warmup', type=int, default=100,
                    help='warm-up steps (capped at 10%% of the estimated step count, at least 15)')
    ap.add_argument('--weight-decay', type=float, default=0.1)
    ap.add_argument('--grad-clip', type=float, default=1.0)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--time-budget', type=float, default=300.0,
                    help='seconds for the whole run (setup, training, export, reload, eval, samples)')
    ap.add_argument('--reserve', type=float, default=None,
                    help='seconds kept for export/eval/samples (default: estimated from the eval size)')
    ap.add_argument('--max-steps', type=int, default=0, help='stop after this many steps (0: time budget only)')
    ap.add_argument('--log-every', type=int, default=20)
    # evaluation
    ap.add_argument('--eval-window', type=int, default=512)
    ap.add_argument('--eval-batch', type=int, default=32, help='windows per eval forward')
    ap.add_argument('--eval-max-tokens', type=int, default=0, help='cap on held-out tokens (0: all)')
    ap.add_argument('--val-windows', type=int, default=64, help='heldout.bin windows for the quick val loss')
    ap.add_argument('--sample-tokens', type=int, default=48)
    ap.add_argument('--work-dir', default='/tmp/mesanet_train_work', help='where compressed data is unpacked')
    ap.add_argument('--autotune', choices=['lean', 'full'], default='lean',
                    help='lean: at most 3 Triton autotune configs per fla kernel (much faster start-up); '
                         'full: fla as shipped (global option, not per run)')
    ap.add_argument('--cpu-check', action='store_true',
                    help='CPU plumbing test with a FAKE forward (no fla kernels); numbers are meaningless')
    return ap


def expand_runs(ap, args):
    if not args.configs:
        return [args]
    with open(args.configs) as f:
        entries = json.load(f)
    if isinstance(entries, dict):
        entries = entries.get('runs', [entries])
    valid = {a.dest for a in ap._actions}
    runs = []
    for i, e in enumerate(entries):
        r = copy.deepcopy(args)
        for k, v in e.items():
            k2 = k.replace('-', '_')
            if k2 not in valid or k2 in ('configs', 'help'):
                raise SystemExit(f'--configs entry {i}: unknown option {k!r}')
            setattr(r, k2, v)
        r.configs = None
        runs.append(r)
    names = [r.name or default_name(r) for r in runs]
    if len(set(names)) != len(names):
        raise SystemExit(f'--configs: run names must differ, got {names}')
    return runs


def default_name(args):
    return f'mesanet-h{args.hidden}-l{args.layers}'


# ----------------------------------------------------------------------------------------
# Triton autotuning: --autotune lean (default) keeps at most 3 configurations per fla kernel
# (tools/fla/lean_autotune.py). If a lean set fails at the first step, the full lists are
# restored and the step is retried.

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fla'))
from lean_autotune import TUNERS as _TUNERS, install_lean_autotune, restore_full_autotune  # noqa: E402
from train_data import Batcher, find_train_bin, open_tokens  # noqa: E402  (this script's own folder)
from train_eval import generate, heldout_ppl, window_nll  # noqa: E402
from train_model import build_model, export_model, install_fake_forward, make_config, reload_model  # noqa: E402


# ----------------------------------------------------------------------------------------
# training


def lr_at(step, peak, warmup, total, min_ratio):
    """Linear warm-up over `warmup` steps, then cosine from peak to min_ratio * peak at `total`
    (`step` may be fractional)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


def versions(device):
    import fla
    import transformers
    try:
        import triton
        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = None
    gpu = torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (--cpu-check, FAKE forward)'
    return {'fla': fla.__version__, 'torch': torch.__version__, 'transformers': transformers.__version__,
            'triton': tv, 'python': platform.python_version(), 'gpu': gpu}


def train_one(args, log):
    t_start = time.time()
    deadline_total = t_start + args.time_budget
    device = 'cpu' if args.cpu_check else 'cuda'
    name = args.name or default_name(args)
    out_dir = os.path.join(args.out, name)
    ver = versions(device)
    log(f'=== run {name}: budget {args.time_budget:.0f}s, device {ver["gpu"]}, fla {ver["fla"]}, '
        f'torch {ver["torch"]} ===')
    if args.cpu_check:
        log('*** --cpu-check: FAKE forward (embeddings -> lm_head), numbers are meaningless ***')

    # tokenizer and data
    import sentencepiece as spm
    sp_path = os.path.join(args.data, 'tokenizer.model')
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    vocab, bos, eos = sp.get_piece_size(), sp.bos_id(), sp.eos_id()
    if (bos, eos) != (1, 2):
        log(f'WARNING: tokenizer bos/eos are {bos}/{eos}, expected 1/2; using the tokenizer\'s')
    train_tokens = open_tokens(find_train_bin(args.data, args.work_dir, log), vocab, 'train')
    held_bin = os.path.join(args.data, 'heldout.bin')
    held_tokens = open_tokens(held_bin, vocab, 'heldout') if os.path.exists(held_bin) else None
    with open(os.path.join(args.data, 'heldout.txt'), encoding='utf-8') as f:
        held_text = f.read()
    eval_tokens = [bos] + sp.encode(held_text, out_type=int)
    if args.eval_max_tokens and len(eval_tokens) > args.eval_max_tokens:
        eval_tokens = eval_tokens[:args.eval_max_tokens]
    if len(eval_tokens) < 2:
        raise ValueError('heldout.txt gives fewer than 2 tokens')
    log(f'vocab {vocab} (bos {bos}, eos {eos}); train {len(train_tokens):,} tokens; heldout.bin '
        f'{len(held_tokens) if held_tokens is not None else 0:,} tokens; heldout.txt {len(held_text):,} chars -> '
        f'{len(eval_tokens):,} tokens (incl. bos)')

    # model
    config = make_config(args, vocab, bos, eos)
    model = build_model(config, device, args.seed)
    if args.cpu_check:
        install_fake_forward(model)
    params = list(model.parameters())  # unique (tied counted once)
    n_params = sum(p.numel() for p in params)
    n_embed = model.model.embeddings.weight.numel() + (0 if config.tie_word_embeddings else model.lm_head.weight.numel())
    log(f'model: hidden {config.hidden_size}, layers {config.num_hidden_layers}, heads {config.num_heads} x '
        f'{config.head_dim}, mlp {model.model.layers[0].mlp.intermediate_size}, tied {config.tie_word_embeddings}, '
        f'gate {config.use_output_gate}: {n_params:,} parameters ({n_params - n_embed:,} non-embedding)')

    # fp32 master weights + fused AdamW
    masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    pnames = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = [], []
    for p, m in zip(params, masters, strict=True):
        n = pnames[id(p)]
        if p.ndim >= 2 and not getattr(p, '_no_weight_decay', False) and 'lambda_params' not in n:
            decay.append(m)
        else:
            no_decay.append(m)
    opt_kwargs = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if device == 'cuda':
        opt_kwargs['fused'] = True
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.weight_decay},
                             {'params': no_decay, 'weight_decay': 0.0}], **opt_kwargs)

    # batch geometry
    L = args.seq_len
    n_seq = max(1, args.batch_tokens // L)
    micro = max(1, min(n_seq, args.micro_batch_tokens // L))
    while n_seq % micro:
        micro -= 1
    tokens_per_step = n_seq * L
    log(f'batch: {n_seq} x {L} = {tokens_per_step:,} tokens/step, micro-batch {micro} sequences')
    batcher = Batcher(train_tokens, L, args.seed + 1)

    # held-out eval size -> reserve
    n_eval_windows = math.ceil(len(eval_tokens) / args.eval_window)

    model.train()
    step, total_steps, warmup = 0, None, max(1, args.warmup)
    tokens_seen = 0
    curve = []
    loss_acc = torch.zeros((), device=device)
    loss_n = 0
    last_loss = float('nan')
    t_train0 = time.time()
    t_log, tok_log = t_train0, 0
    meas_start = meas_t0 = None
    sched_step0, sched_t0 = 0, 0.0
    deadline_train = deadline_total - (args.reserve if args.reserve is not None else 0.25 * args.time_budget)
    reserve_used = args.reserve
    grad_norm = torch.zeros((), device=device)
    compile_s = None

    def one_step(micro_seq):
        nonlocal loss_acc, loss_n
        batch = batcher.get(n_seq)
        if device == 'cuda':
            batch = batch.pin_memory().to(device, non_blocking=True)
        n_micro = n_seq // micro_seq
        step_loss = torch.zeros((), device=device)
        for i in range(n_micro):
            w = batch[i * micro_seq:(i + 1) * micro_seq]
            logits = model(input_ids=w[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
            (loss / n_micro).backward()
            for p, m in zip(params, masters, strict=True):
                if p.grad is None:
                    continue
                if m.grad is None:
                    m.grad = p.grad.float()
                else:
                    m.grad.add_(p.grad)
                p.grad = None
            step_loss += loss.detach() / n_micro
        return step_loss

    while True:
        now = time.time()
        if args.max_steps and step >= args.max_steps:
            log(f'stopping: --max-steps {args.max_steps} reached')
            break
        if total_steps is not None and step >= total_steps:
            break
        if now >= deadline_train and step > 0:
            log(f'stopping: training deadline reached at step {step}')
            break
        # The schedule runs on `eff`: the step count, or, if training turns out slower than the
        # estimate, the point the wall clock says we should be at (so the cosine still reaches
        # its floor at the training deadline); whichever is further.
        eff = step
        if total_steps is not None and deadline_train > sched_t0:
            frac = (now - sched_t0) / (deadline_train - sched_t0)
            eff = max(step, sched_step0 + frac * (total_steps - sched_step0))
        lr = lr_at(eff, args.lr, warmup, total_steps, args.min_lr_ratio)
        for g in opt.param_groups:
            g['lr'] = lr
        retried_full = False
        while True:
            try:
                step_loss = one_step(micro)
                break
            except torch.OutOfMemoryError:
                if step > 0 or micro == 1:
                    raise
                for m in masters:
                    m.grad = None
                for p in params:
                    p.grad = None
                if device == 'cuda':
                    torch.cuda.empty_cache()
                micro = max(1, micro // 2)
                while n_seq % micro:
                    micro -= 1
                log(f'OOM at the first step: micro-batch -> {micro} sequences')
            except Exception as e:  # noqa: BLE001
                if step > 0 or retried_full or not _TUNERS:
                    raise
                retried_full = True
                n = restore_full_autotune()
                log(f'first step failed with lean autotuning ({type(e).__name__}: {e}); restored the full '
                    f'config lists of {n} kernels and retrying')
                for m in masters:
                    m.grad = None
                for p in params:
                    p.grad = None
        if args.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(masters, args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(params, masters, strict=True):
                p.copy_(m)
        loss_acc += step_loss
        loss_n += 1
        step += 1
        tokens_seen += tokens_per_step

        # step-time measurement (after compilation) -> schedule and reserve
        if step == 1:
            if device == 'cuda':
                torch.cuda.synchronize()
            compile_s = time.time() - t_train0
            log(f'first step done after {compile_s:.1f}s (includes Triton compilation), loss {float(step_loss):.4f}')
        if step == 3:
            if device == 'cuda':
                torch.cuda.synchronize()
            meas_start, meas_t0 = step, time.time()
        if total_steps is None and meas_start is not None and step > meas_start:
            el = time.time() - meas_t0
            if (step - meas_start >= 5 and el >= 2.0) or step - meas_start >= 30:
                if device == 'cuda':
                    torch.cuda.synchronize()
                el = time.time() - meas_t0
                step_time = el / (step - meas_start)
                tps = tokens_per_step / step_time
                if args.reserve is None:
                    # forward-only eval ~ 1/3 of a training step per token; + reload, decode-kernel
                    # compilation and sampling
                    eval_s = len(eval_tokens) / (3.0 * tps)
                    sample_s = (6 * args.sample_tokens + 128) * (0.004 + 0.002 * config.num_hidden_layers)
                    reserve_used = 35.0 + 2.0 * eval_s + 2.0 * sample_s
                    reserve_used = min(reserve_used, 0.5 * args.time_budget)
                else:
                    reserve_used = args.reserve
                deadline_train = deadline_total - reserve_used
                remaining = deadline_train - time.time()
                total_steps = step + max(0, int(0.98 * remaining / step_time))
                sched_step0, sched_t0 = step, time.time()
                if args.max_steps:
                    total_steps = min(total_steps, args.max_steps)
                warmup = min(max(1, args.warmup), max(15, total_steps // 10))
                log(f'step time {step_time * 1e3:.1f} ms ({tps:,.0f} tok/s); reserve {reserve_used:.0f}s for '
                    f'export/eval/samples; schedule: {total_steps} steps, warm-up {warmup}, cosine to '
                    f'{args.min_lr_ratio:g} x lr')

        if step % args.log_every == 0 or step == 1:
            cur = float(loss_acc) / max(1, loss_n)
            last_loss = float(step_loss)
            now = time.time()
            tps = (tokens_seen - tok_log) / max(1e-9, now - t_log)
            t_log, tok_log = now, tokens_seen
            gn = float(grad_norm)
            curve.append({'step': step, 'tokens': tokens_seen, 'loss': round(cur, 5), 'lr': lr,
                          'grad_norm': round(gn, 4), 'elapsed_s': round(now - t_start, 2)})
            log(f'step {step:6d}{"/" + str(total_steps) if total_steps else ""}  loss {cur:.4f}  lr {lr:.2e}  '
                f'gnorm {gn:.3f}  {tps:,.0f} tok/s  {now - t_start:.0f}s')
            if not math.isfinite(cur):
                raise FloatingPointError(f'loss is {cur} at step {step}')
            loss_acc = torch.zeros((), device=device)
            loss_n = 0

    if device == 'cuda':
        torch.cuda.synchronize()
    train_s = time.time() - t_train0
    if loss_n:
        cur = float(loss_acc) / loss_n
        curve.append({'step': step, 'tokens': tokens_seen, 'loss': round(cur, 5), 'lr': lr,
                      'grad_norm': round(float(grad_norm), 4), 'elapsed_s': round(time.time() - t_start, 2)})
    final_loss = curve[-1]['loss'] if curve else float('nan')
    last_loss = float(step_loss) if step else float('nan')
    train_tps = tokens_seen / max(1e-9, train_s)
    train_tps_ex_compile = ((tokens_seen - tokens_per_step) / max(1e-9, train_s - (compile_s or 0))
                            if step > 1 else None)
    log(f'training done: {step} steps, {tokens_seen:,} tokens in {train_s:.1f}s ({train_tps:,.0f} tok/s incl. '
        f'start-up), final loss {final_loss:.4f}')
    del opt, masters
    model.eval()

    # quick validation loss on heldout.bin with the in-memory model
    val = None
    if held_tokens is not None and len(held_tokens) > L + 1 and args.val_windows > 0:
        vb = Batcher(held_tokens, L, 12345)
        w = vb.get(args.val_windows)
        s = c = 0
        for i in range(0, len(w), args.eval_batch):
            s1, c1 = window_nll(model, w[i:i + args.eval_batch].to(device))
            s, c = s + s1, c + c1
        val = {'windows': int(len(w)), 'seq_len': L + 1, 'nll': s / c, 'ppl': math.exp(s / c)}
        log(f'heldout.bin val loss {val["nll"]:.4f} (ppl {val["ppl"]:.2f}) on {len(w)} random windows')

    # export, then reload and evaluate with the reloaded model
    t_exp = time.time()
    dtypes = export_model(model, config, sp_path, out_dir)
    log(f'exported to {out_dir} ({os.path.getsize(os.path.join(out_dir, "model.safetensors")) / 1e6:.1f} MB; '
        f'fp32 tensors: {len(dtypes.get("float32", []))})')
    first = torch.tensor(eval_tokens[:min(len(eval_tokens), args.eval_window)], dtype=torch.long)[None].to(device)
    with torch.no_grad():
        ref_logits = model(input_ids=first, use_cache=False).logits.float()
    fake = args.cpu_check
    del model
    if device == 'cuda':
        torch.cuda.empty_cache()
    config2, model2 = reload_model(out_dir, device)
    if fake:
        install_fake_forward(model2)
    with torch.no_grad():
        reload_diff = float((model2(input_ids=first, use_cache=False).logits.float() - ref_logits).abs().max())
    log(f'reloaded export: max |logits(reloaded) - logits(trained)| on the first window = {reload_diff:.3g}')
    if reload_diff != 0.0:
        log('WARNING: the reloaded model does not reproduce the trained model exactly')

    t_ev = time.time()
    nll_sum, n_pred, n_win = heldout_ppl(model2, eval_tokens, args.eval_window, args.eval_batch, device)
    eval_s = time.time() - t_ev
    nll = nll_sum / n_pred
    ppl = math.exp(nll)
    log(f'held-out (heldout.txt, reloaded export): {n_pred:,} predicted tokens in {n_win} windows of '
        f'<= {args.eval_window}: NLL {nll:.4f}, perplexity {ppl:.3f} ({eval_s:.1f}s)')

    # fla's own prefill-vs-decode gap on real text with the trained weights: the first n_pf tokens
    # prefilled with the cache, the rest decoded one at a time, vs one cache-less prefill of all
    gap = None
    try:
        n_all = min(len(eval_tokens), 384)
        n_pf = (2 * n_all) // 3
        if n_all - n_pf >= 4:
            ids = torch.tensor([eval_tokens[:n_all]], dtype=torch.long, device=device)
            with torch.no_grad():
                ref = model2(input_ids=ids, use_cache=False).logits[0].float()
                out = model2(input_ids=ids[:, :n_pf], use_cache=True)
                pkv, rows = out.past_key_values, []
                for t in range(n_pf, n_all):
                    out = model2(input_ids=ids[:, t:t + 1], past_key_values=pkv, use_cache=True)
                    pkv = out.past_key_values
                    rows.append(out.logits[0, -1].float())
                dec = torch.stack(rows)
                r = ref[n_pf:n_all]
                gap = {'prefill_tokens': n_pf, 'decoded_tokens': n_all - n_pf,
                       'rel_rms': float((r - dec).pow(2).mean().sqrt() / r.pow(2).mean().sqrt()),
                       'max_abs': float((r - dec).abs().max()),
                       'top1_agreement': float((r.argmax(-1) == dec.argmax(-1)).float().mean())}
            log(f'fla prefill vs decode on held-out text (tokens {n_pf}..{n_all - 1}): rel RMS {gap["rel_rms"]:.3e}, '
                f'max abs {gap["max_abs"]:.3g}, top-1 agreement {gap["top1_agreement"]:.3f}')
            # Parity golden for the C++ engine: the same tensors in make_goldens.py's layout.
            gdir = os.path.join(out_dir, 'golden')
            os.makedirs(gdir, exist_ok=True)
            np.save(os.path.join(gdir, 'input_ids.npy'), np.array(eval_tokens[:n_all], dtype=np.int32))
            np.save(os.path.join(gdir, 'logits_prefill.npy'), ref.cpu().numpy().astype(np.float32))
            with torch.no_grad():
                pf = model2(input_ids=ids[:, :n_pf], use_cache=True).logits[0].float()
            np.save(os.path.join(gdir, 'logits_decode.npy'),
                    torch.cat([pf, dec]).cpu().numpy().astype(np.float32))
            prompt_len, gen_len = 40, 32
            with torch.no_grad():
                out = model2(input_ids=ids[:, :prompt_len], use_cache=True)
                pkv, toks, margins = out.past_key_values, [], []
                logit = out.logits[0, -1].float()
                for _ in range(gen_len):
                    top2 = torch.topk(logit, 2).values
                    margins.append(float(top2[0] - top2[1]))
                    tok = int(logit.argmax())
                    toks.append(tok)
                    out = model2(input_ids=torch.tensor([[tok]], device=device), past_key_values=pkv, use_cache=True)
                    pkv, logit = out.past_key_values, out.logits[0, -1].float()
            np.save(os.path.join(gdir, 'greedy.npy'),
                    np.array(list(eval_tokens[:prompt_len]) + toks, dtype=np.int32))
            np.save(os.path.join(gdir, 'greedy_margins.npy'), np.array(margins, dtype=np.float32))
            with open(os.path.join(gdir, 'golden.json'), 'w') as f:
                json.dump({'name': 'trained', 'source': 'train_mesanet.py, held-out text', 'T': n_all,
                           'N': n_pf, 'prompt_len': prompt_len, 'gen_len': gen_len,
                           'gpu': ver['gpu'] if 'ver' in dir() else None,
                           'prefill_vs_decode': gap, 'greedy_min_margin': min(margins)}, f, indent=1)
    except Exception as e:  # noqa: BLE001
        log(f'WARNING: prefill-vs-decode check failed: {type(e).__name__}: {e}')

    # samples (manual decoding through fla's cache)
    samples = []
    t_s = time.time()
    gen = torch.Generator(device=device).manual_seed(args.seed + 99)
    for prompt in SAMPLE_PROMPTS:
        pids = [bos] + sp.encode(prompt, out_type=int)
        for mode, temp, top_p in (('greedy', 0.0, 1.0), ('t0.8_p0.9', 0.8, 0.9)):
            new = generate(model2, pids, args.sample_tokens, eos, device, temp, top_p, gen)
            samples.append({'prompt': prompt, 'mode': mode, 'prompt_ids': pids, 'ids': new,
                            'text': sp.decode(pids[1:] + [t for t in new if t != eos])})
            log(f'sample [{mode}] {samples[-1]["text"]!r}')
    sample_s = time.time() - t_s

    wall = time.time() - t_start
    report = {
        'name': name,
        'CPU_CHECK_FAKE_FORWARD_NOT_A_REAL_RUN': bool(args.cpu_check),
        'versions': ver,
        'gpu': ver['gpu'],
        'args': {k: v for k, v in vars(args).items()},
        'config': json.loads(config.to_json_string()),
        'parameters': int(n_params),
        'parameters_non_embedding': int(n_params - n_embed),
        'intermediate_size': int(model2.model.layers[0].mlp.intermediate_size),
        'export_dtypes': {k: (v if k != 'bfloat16' else len(v)) for k, v in dtypes.items()},
        'training': {
            'dtype': 'bf16 model (fp32 lambda_params / gate-less o_norm), fp32 master weights + fused AdamW',
            'steps': step, 'planned_steps': total_steps, 'warmup_steps': warmup,
            'tokens_seen': int(tokens_seen), 'tokens_per_step': tokens_per_step, 'micro_batch_seqs': micro,
            'seq_len': L, 'peak_lr': args.lr, 'min_lr_ratio': args.min_lr_ratio,
            'weight_decay': args.weight_decay, 'grad_clip': args.grad_clip,
            'train_seconds': round(train_s, 2), 'first_step_seconds': round(compile_s or 0.0, 2),
            'tokens_per_second': round(train_tps, 1),
            'tokens_per_second_excl_first_step': round(train_tps_ex_compile, 1) if train_tps_ex_compile else None,
            'final_train_loss': final_loss, 'last_step_loss': last_loss,
            'reserve_seconds': reserve_used,
        },
        'val_heldout_bin': val,
        'heldout': {
            'source': 'heldout.txt, encoded as one string, [bos] prepended; reloaded export; fla chunked '
                      'forward, fresh state per window; NLL in float32 from log_softmax of the logits',
            'eval_window': args.eval_window, 'windows': n_win, 'tokens': len(eval_tokens),
            'predicted_tokens': n_pred, 'nll': nll, 'perplexity': ppl, 'seconds': round(eval_s, 2),
        },
        'reload_max_abs_logit_diff': reload_diff,
        'fla_prefill_vs_decode_heldout': gap,
        'samples': samples,
        'sample_seconds': round(sample_s, 2),
        'export_eval_seconds': round(time.time() - t_exp, 2),
        'wall_seconds': round(wall, 2),
        'time_budget': args.time_budget,
        'loss_curve': curve,
        'autotune': args.autotune,
        'peak_gpu_memory_gb': round(torch.cuda.max_memory_allocated() / 1e9, 2) if device == 'cuda' else None,
    }
    with open(os.path.join(out_dir, 'train_report.json'), 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    log(f'SUMMARY {name}: {n_params / 1e6:.2f}M params, {step} steps, {tokens_seen / 1e6:.1f}M tokens, '
        f'{train_tps:,.0f} tok/s, final train loss {final_loss:.4f}, held-out ppl {ppl:.3f} '
        f'(NLL {nll:.4f}, {n_pred:,} tokens), wall {wall:.0f}s of {args.time_budget:.0f}s')
    if wall > args.time_budget:
        log(f'WARNING: run took {wall:.0f}s, over its {args.time_budget:.0f}s budget')
    with open(os.path.join(out_dir, 'train_log.txt'), 'w') as f:
        f.write('\n'.join(log.lines) + '\n')
    del model2
    if device == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return report


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    runs = expand_runs(ap, args)
    if not args.cpu_check and not torch.cuda.is_available():
        print('ERROR: CUDA is not available (use --cpu-check for a plumbing test on the CPU)', flush=True)
        return 2
    if args.autotune == 'lean':
        install_lean_autotune()  # must run before fla is imported
    for r in runs:
        for k in ('hidden', 'layers', 'heads', 'head_dim', 'seq_len', 'batch_tokens', 'eval_window'):
            if int(getattr(r, k)) <= 0:
                print(f'ERROR: --{k.replace("_", "-")} must be positive', flush=True)
                return 2
        if r.head_dim > 128:
            print('ERROR: fla MesaNet kernels need --head-dim <= 128', flush=True)
            return 2
    os.makedirs(args.out, exist_ok=True)
    results, failed = [], []
    for r in runs:
        log = Logger()
        name = r.name or default_name(r)
        try:
            results.append(train_one(r, log))
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
            log(tb)
            log(f'ERROR: run {name} failed')
            failed.append(name)
            try:
                os.makedirs(os.path.join(r.out, name), exist_ok=True)
                with open(os.path.join(r.out, name, 'train_log.txt'), 'w') as f:
                    f.write('\n'.join(log.lines) + '\n')
            except OSError:
                pass
            if not r.cpu_check and torch.cuda.is_available():
                torch.cuda.empty_cache()
    print('', flush=True)
    print(f'{"run":<24} {"params":>9} {"steps":>6} {"Mtok":>7} {"tok/s":>10} {"loss":>7} {"ppl":>9} {"wall":>6}',
          flush=True)
    for rep in results:
        print(f'{rep["name"]:<24} {rep["parameters"]:>9,} {rep["training"]["steps"]:>6} '
              f'{rep["training"]["tokens_seen"] / 1e6:>7.1f} {rep["training"]["tokens_per_second"]:>10,.0f} '
              f'{rep["training"]["final_train_loss"]:>7.4f} {rep["heldout"]["perplexity"]:>9.3f} '
              f'{rep["wall_seconds"]:>6.0f}', flush=True)
    for n in failed:
        print(f'{n:<24} FAILED', flush=True)
    if failed:
        print(f'ERROR: {len(failed)} run(s) failed: {failed}', flush=True)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
