"""fla's Hugging Face MesaNet (fla 0.6.0 MesaNetForCausalLM) timed the way mesaserve-bench model
times ours: whole-model decode steps at several batch sizes (median wall time per step after
warm-up, the step's logits on the GPU, torch.cuda.synchronize after each step), plus a
2048-token prefill at B = 1. Random bf16 weights, fla's default config (the "1.3B") or a model
directory. For B > 1 fla needs an attention mask; an all-ones one is passed.

  python3 tools/bench/fla_model_bench.py [--model DIR] [--batches 1,8,64,256] [--steps 10]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'fla'))
from lean_autotune import install_lean_autotune  # noqa: E402

install_lean_autotune()
from fla.models import MesaNetConfig, MesaNetForCausalLM  # noqa: E402


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default=None)
    ap.add_argument('--batches', default='1,8,64,256')
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--prefill', type=int, default=2048)
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.model:
        model = MesaNetForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
        name = a.model
    else:
        config = MesaNetConfig()
        with torch.device('cuda'):
            model = MesaNetForCausalLM(config).to(torch.bfloat16).eval()
        name = 'random 1.3B (fla defaults)'
    vocab = model.config.vocab_size
    print(f'\n## fla {__import__("fla").__version__} MesaNetForCausalLM, {name} ({torch.cuda.get_device_name()})\n')
    print('| what | ms per step | tokens/s |')
    print('|---|---:|---:|')
    with torch.no_grad():
        ids = torch.randint(3, vocab, (1, a.prefill), device='cuda')
        for _ in range(2):
            dt, _ = timed(lambda: model(input_ids=ids, use_cache=False))
        print(f'| prefill {a.prefill} tokens, B = 1 | {1e3 * dt:.2f} | {a.prefill / dt:.0f} |', flush=True)
        for b in [int(x) for x in a.batches.split(',')]:
            prompt = torch.randint(3, vocab, (b, 16), device='cuda')
            mask = torch.ones(b, 16, dtype=torch.long, device='cuda') if b > 1 else None
            out = model(input_ids=prompt, attention_mask=mask, use_cache=True)
            pkv = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            times = []
            for s in range(a.steps + 3):
                if mask is not None:
                    mask = torch.ones(b, mask.shape[1] + 1, dtype=torch.long, device='cuda')
                dt, out = timed(lambda: model(input_ids=nxt, attention_mask=mask, past_key_values=pkv,
                                              use_cache=True))
                pkv = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                if s >= 3:
                    times.append(dt)
            times.sort()
            ms = 1e3 * times[len(times) // 2]
            print(f'| decode, B = {b} (30 CG steps) | {ms:.2f} | {b / (ms * 1e-3):.0f} |', flush=True)


if __name__ == '__main__':
    main()
