#!/usr/bin/env python3
"""Make a small stand-in data folder for tools/train/train_mesanet.py tests.

Text = Python standard-library sources found on this machine (no network needed).
Writes into --out:
    tokenizer.model   sentencepiece BPE, vocab --vocab (4096), unk 0, bos 1, eos 2, byte fallback
    train.bin         uint16 LE ids, each document as [1] + ids + [2]  (or train.bin.xz with --xz)
    heldout.bin       same format, other documents
    heldout.txt       the held-out documents' text, joined with blank lines

This is test data only (code, not prose); the real corpus is built elsewhere.
"""

from __future__ import annotations

import argparse
import glob
import lzma
import os
import random
import sys
import sysconfig

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True)
    ap.add_argument('--vocab', type=int, default=4096)
    ap.add_argument('--max-mb', type=float, default=8.0, help='text to use (MB)')
    ap.add_argument('--heldout-docs', type=int, default=40)
    ap.add_argument('--xz', action='store_true', help='write train.bin.xz instead of train.bin')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)

    import sentencepiece as spm
    os.makedirs(args.out, exist_ok=True)
    stdlib = sysconfig.get_paths()['stdlib']
    files = sorted(glob.glob(os.path.join(stdlib, '**', '*.py'), recursive=True))
    random.Random(args.seed).shuffle(files)
    docs, total = [], 0
    for fn in files:
        try:
            with open(fn, encoding='utf-8') as f:
                t = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        if len(t) < 500:
            continue
        t = t[:40000]
        docs.append(t)
        total += len(t)
        if total > args.max_mb * 1e6:
            break
    if len(docs) < args.heldout_docs + 10:
        sys.exit(f'only {len(docs)} documents found under {stdlib}')
    held, train = docs[:args.heldout_docs], docs[args.heldout_docs:]
    print(f'{len(train)} train docs, {len(held)} held-out docs, {total / 1e6:.1f} MB text', flush=True)

    corpus = os.path.join(args.out, '_spm_corpus.txt')
    with open(corpus, 'w', encoding='utf-8') as f:
        for d in train:
            for line in d.splitlines():
                if line.strip():
                    f.write(line[:2000] + '\n')
    prefix = os.path.join(args.out, 'tokenizer')
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=args.vocab, model_type='bpe',
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        input_sentence_size=300000, shuffle_input_sentence=True, num_threads=os.cpu_count() or 2,
        minloglevel=2)
    os.remove(corpus)
    os.remove(prefix + '.vocab')
    sp = spm.SentencePieceProcessor(model_file=prefix + '.model')
    assert sp.get_piece_size() == args.vocab and sp.bos_id() == 1 and sp.eos_id() == 2

    def encode(ds):
        out = []
        for d in ds:
            out.append(np.array([1] + sp.encode(d, out_type=int) + [2], dtype='<u2'))
        return np.concatenate(out)

    tr = encode(train)
    he = encode(held)
    if args.xz:
        with lzma.open(os.path.join(args.out, 'train.bin.xz'), 'wb', preset=6) as f:
            f.write(tr.tobytes())
        if os.path.exists(os.path.join(args.out, 'train.bin')):
            os.remove(os.path.join(args.out, 'train.bin'))
    else:
        tr.tofile(os.path.join(args.out, 'train.bin'))
    he.tofile(os.path.join(args.out, 'heldout.bin'))
    with open(os.path.join(args.out, 'heldout.txt'), 'w', encoding='utf-8') as f:
        f.write('\n\n'.join(held))
    print(f'train {len(tr):,} tokens, heldout {len(he):,} tokens, vocab {sp.get_piece_size()} -> {args.out}',
          flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
