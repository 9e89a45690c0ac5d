"""Training data for train_mesanet.py: the token files of a --data folder (decompressed once
to --work-dir when shipped as .xz or .zst) and random training windows."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import time

import numpy as np
import torch

def find_train_bin(data_dir, work_dir, log):
    plain = os.path.join(data_dir, 'train.bin')
    if os.path.exists(plain):
        return plain
    xz = plain + '.xz'
    zst = plain + '.zst'
    src = xz if os.path.exists(xz) else zst if os.path.exists(zst) else None
    if src is None:
        raise FileNotFoundError(f'{data_dir}: none of train.bin, train.bin.xz, train.bin.zst')
    os.makedirs(work_dir, exist_ok=True)
    st = os.stat(src)
    dst = os.path.join(work_dir, 'train.bin')
    stamp = os.path.join(work_dir, 'train.bin.source')
    tag = f'{os.path.abspath(src)} {st.st_size} {int(st.st_mtime)}'
    if os.path.exists(dst) and os.path.exists(stamp) and open(stamp).read() == tag:
        log(f'using already unpacked {dst}')
        return dst
    t0 = time.time()
    tmp = dst + '.part'
    if src.endswith('.xz'):
        with lzma.open(src, 'rb') as fi, open(tmp, 'wb') as fo:
            shutil.copyfileobj(fi, fo, 1 << 24)
    else:
        zstd = shutil.which('zstd')
        if zstd:
            subprocess.run([zstd, '-d', '-q', '-f', src, '-o', tmp], check=True)
        else:
            try:
                import zstandard
            except ImportError as e:
                raise RuntimeError(f'{src}: need the `zstd` binary or the python `zstandard` module') from e
            with open(src, 'rb') as fi, open(tmp, 'wb') as fo:
                zstandard.ZstdDecompressor().copy_stream(fi, fo)
    os.replace(tmp, dst)
    with open(stamp, 'w') as f:
        f.write(tag)
    log(f'unpacked {src} -> {dst} ({os.path.getsize(dst) / 1e6:.1f} MB, {time.time() - t0:.1f}s)')
    return dst


def open_tokens(path, vocab, what):
    size = os.path.getsize(path)
    if size % 2:
        raise ValueError(f'{path}: odd byte size {size}, not uint16 tokens')
    arr = np.memmap(path, dtype='<u2', mode='r')
    if len(arr) == 0:
        raise ValueError(f'{path}: empty')
    mx = 0
    for i in range(0, len(arr), 1 << 26):
        mx = max(mx, int(arr[i:i + (1 << 26)].max()))
    if mx >= vocab:
        raise ValueError(f'{path}: token id {mx} >= vocab {vocab}')
    return arr


class Batcher:
    """Random windows of seq_len + 1 tokens: inputs = w[:-1], targets = w[1:]."""

    def __init__(self, tokens, seq_len, seed):
        if len(tokens) < seq_len + 2:
            raise ValueError(f'train data has {len(tokens)} tokens, need > seq_len + 1 = {seq_len + 1}')
        self.tokens = tokens
        self.seq_len = seq_len
        self.rng = np.random.default_rng(seed)
        self.offs = np.arange(seq_len + 1)

    def get(self, n_seq):
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len - 1 + 1, size=n_seq)
        w = self.tokens[starts[:, None] + self.offs[None, :]].astype(np.int64)
        return torch.from_numpy(w)
