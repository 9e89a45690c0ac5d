"""fla's decode kernel (mesa_net_decoding_one_step) timed the way mesaserve-bench kernels times ours:
one layer step, bf16 q/k/v, fp32 states, the same realistic SPD states, median of CUDA-event
timings after warm-up; and fla's chunked prefill (chunk_mesa_net, as fla's layer calls it:
l2 norm in the kernel, final state out, no grad) for one layer at B = 1, the inputs of
mesaserve-bench kernels's prefill table. Prints markdown tables. Needs torch, triton and fla (carried
wheels).

  python3 tools/bench/fla_decode_bench.py [--heads 16] [--head-dim 128] [--batches 1,8,64,256]
                                          [--prefill 2048,8192] (0: no prefill table)
"""
import argparse
import math

import torch
from fla.ops.mesa_net import chunk_mesa_net
from fla.ops.mesa_net.decoding_one_step import mesa_net_decoding_one_step


def head_state(K):
    """A decayed sum of 300 l2-normalised rank-1 updates (as mesaserve-bench kernels builds it)."""
    g = torch.Generator().manual_seed(7)
    hkk = torch.zeros(K, K, dtype=torch.float64)
    hkv = torch.zeros(K, K, dtype=torch.float64)
    for _ in range(300):
        k = torch.randn(K, generator=g, dtype=torch.float64)
        v = torch.randn(K, generator=g, dtype=torch.float64)
        k = k / k.norm()
        hkk = 0.98 * hkk + torch.outer(k, k)
        hkv = 0.98 * hkv + torch.outer(k, v)
    return hkk.float(), hkv.float()


def median_us(fn, reps):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(1e3 * a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--heads', type=int, default=16)
    ap.add_argument('--head-dim', type=int, default=128)
    ap.add_argument('--batches', default='1,8,64,256')
    ap.add_argument('--reps', type=int, default=50)
    ap.add_argument('--prefill', default='2048,8192')
    a = ap.parse_args()
    H, K = a.heads, a.head_dim
    dev = 'cuda'
    hkk1, hkv1 = head_state(K)
    print(f'\n## fla {__import__("fla").__version__} mesa_net_decoding_one_step: {H} heads x head_dim {K}, '
          f'bf16 q/k/v/o, fp32 states, lambda 0.25 ({torch.cuda.get_device_name()})\n')
    print('| B | CG | median us |')
    print('|---:|---|---:|')
    for B in [int(x) for x in a.batches.split(',')]:
        torch.manual_seed(11 + B)
        hkk = hkk1.to(dev).expand(B, H, K, K).contiguous()
        hkv = hkv1.to(dev).expand(B, H, K, K).contiguous()
        q = torch.nn.functional.normalize(torch.randn(B, H, K, device=dev), dim=-1).bfloat16()
        k = torch.nn.functional.normalize(torch.randn(B, H, K, device=dev), dim=-1).bfloat16()
        v = torch.randn(B, H, K, device=dev).bfloat16()
        g = torch.full((B, H), math.log(0.98), device=dev)
        beta = torch.ones(B, H, device=dev)
        lamb = torch.full((H, K), 0.25, device=dev)
        for iters in (0, 10, 30):
            us = median_us(lambda: mesa_net_decoding_one_step(q, k, v, g, lamb, beta, hkk, hkv, iters), a.reps)
            print(f'| {B} | fixed {iters} | {us:.1f} |')
    lengths = [int(x) for x in a.prefill.split(',') if int(x) > 0]
    if lengths:
        print(f'\n## fla chunk_mesa_net, one layer, B = 1: {H} heads x head_dim {K}, bf16 q/k/v\n')
        print('| T | CG | median us | tokens/s |')
        print('|---:|---|---:|---:|')
    for T in lengths:
        torch.manual_seed(29 + T)
        q = torch.nn.functional.normalize(torch.randn(1, T, H, K, device=dev), dim=-1).bfloat16()
        k = torch.nn.functional.normalize(torch.randn(1, T, H, K, device=dev), dim=-1).bfloat16()
        v = torch.randn(1, T, H, K, device=dev).bfloat16()
        g = torch.full((1, T, H), -0.05, device=dev)
        beta = torch.full((1, T, H), 0.9, device=dev)
        lamb = torch.full((H, K), 0.25, device=dev)
        for iters in (10, 30):
            def run():
                with torch.no_grad():
                    chunk_mesa_net(q=q, k=k, v=v, g=g, beta=beta, lamb=lamb, output_final_state=True,
                                   max_CG_iteration=iters, use_qk_l2norm_in_kernel=True)
            us = median_us(run, max(5, a.reps // 5))
            print(f'| {T} | fixed {iters} | {us:.1f} | {T / (us * 1e-6):.0f} |')


if __name__ == '__main__':
    main()
