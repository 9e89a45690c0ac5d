#!/usr/bin/env python3
"""Tokenize the corpus into flat uint16 token files and pack the GPU bundle.

Input : WORK/data/{train,heldout}_docs.jsonl, WORK/data/tokenizer.model
Output: WORK/data/train.bin, heldout.bin   little-endian uint16; every document is
                                           [1 (BOS)] + ids + [2 (EOS)], concatenated
        WORK/data/tokens.json              counts
        WORK/gpu_bundle/                   train.bin.xz, heldout.bin, heldout.txt,
                                           tokenizer.model, MANIFEST.json

If train.bin.xz would exceed --bundle-limit-mb, whole documents are dropped
deterministically (by hash of the document id) until it fits; MANIFEST.json
records the fraction kept.  xz is used (Python's lzma, so no external tool is
needed on either machine; `xz -d` or `python3 -m lzma`-style code decompresses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
import time
from array import array
from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE.parent / "work"
BOS, EOS = 1, 2


def load(path: Path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def encode_docs(sp, docs, threads: int) -> list[array]:
    out = []
    B = 256
    for i in range(0, len(docs), B):
        batch = [d["text"] for d in docs[i: i + B]]
        for ids in sp.encode(batch, num_threads=threads):
            a = array("H", [BOS])
            a.extend(ids)
            a.append(EOS)
            out.append(a)
    return out


def to_le_bytes(arrs: list[array]) -> bytes:
    a = array("H")
    for x in arrs:
        a.extend(x)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bundle-limit-mb", type=float, default=45.0,
                    help="max size of train.bin.xz in the bundle (MB = 1e6 bytes)")
    ap.add_argument("--xz-preset", type=int, default=9)
    args = ap.parse_args()

    work = args.work.resolve()
    data = work / "data"
    t0 = time.time()
    sp = spm.SentencePieceProcessor(model_file=str(data / "tokenizer.model"))
    assert sp.get_piece_size() <= 65535 and (sp.bos_id(), sp.eos_id()) == (BOS, EOS)

    counts = {"vocab_size": sp.get_piece_size(), "bos_id": BOS, "eos_id": EOS, "dtype": "uint16-le"}
    encoded = {}
    for split in ("train", "heldout"):
        docs = load(data / f"{split}_docs.jsonl")
        arrs = encode_docs(sp, docs, args.threads)
        raw = to_le_bytes(arrs)
        (data / f"{split}.bin").write_bytes(raw)
        nbytes = sum(len(d["text"].encode("utf-8")) for d in docs)
        ntok = len(raw) // 2
        counts[split] = {"documents": len(docs), "text_bytes": nbytes, "tokens": ntok,
                         "tokens_excluding_bos_eos": ntok - 2 * len(docs),
                         "tokens_per_byte": round((ntok - 2 * len(docs)) / nbytes, 5),
                         "bin_bytes": len(raw), "sha256": sha256(raw)}
        encoded[split] = (docs, arrs, raw)
        print(f"[tokenize] {split}: {len(docs)} docs, {nbytes / 1e6:.2f} MB text -> {ntok:,} tokens "
              f"({counts[split]['tokens_per_byte']:.4f} tokens/byte excl. BOS/EOS) ({time.time() - t0:.0f}s)",
              flush=True)

    # ---- GPU bundle -----------------------------------------------------------
    bundle = work / "gpu_bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    docs, arrs, raw = encoded["train"]
    limit = int(args.bundle_limit_mb * 1e6)

    def doc_key(d):
        return int.from_bytes(hashlib.sha1(d["id"].encode()).digest()[:8], "big") / 2 ** 64

    fraction = 1.0
    while True:
        if fraction < 1.0:
            keep = [a for d, a in zip(docs, arrs) if doc_key(d) < fraction]
            payload = to_le_bytes(keep)
        else:
            keep, payload = arrs, raw
        t1 = time.time()
        xz = lzma.compress(payload, format=lzma.FORMAT_XZ, preset=args.xz_preset | lzma.PRESET_EXTREME)
        print(f"[bundle] fraction {fraction:.3f}: train.bin {len(payload) / 1e6:.1f} MB -> xz {len(xz) / 1e6:.1f} MB "
              f"({time.time() - t1:.0f}s)", flush=True)
        if len(xz) <= limit:
            break
        fraction *= 0.97 * limit / len(xz)
    (bundle / "train.bin.xz").write_bytes(xz)
    shutil.copyfile(data / "heldout.bin", bundle / "heldout.bin")
    shutil.copyfile(data / "heldout.txt", bundle / "heldout.txt")
    shutil.copyfile(data / "tokenizer.model", bundle / "tokenizer.model")
    manifest = {
        "format": "flat little-endian uint16 token ids; each document is [BOS=1] + ids + [EOS=2]",
        "tokenizer": {"file": "tokenizer.model", "vocab_size": sp.get_piece_size(), "bos_id": BOS, "eos_id": EOS,
                      "unk_id": 0, "pad_id": -1, "sha256": sha256((bundle / "tokenizer.model").read_bytes())},
        "train": {"file": "train.bin.xz", "compression": f"xz (lzma preset {args.xz_preset}e)",
                  "documents": len(keep), "documents_total": len(docs), "fraction_of_documents_kept": fraction,
                  "tokens": len(payload) // 2, "tokens_total": counts["train"]["tokens"],
                  "uncompressed_bytes": len(payload), "uncompressed_sha256": sha256(payload),
                  "compressed_bytes": len(xz)},
        "heldout": {"file": "heldout.bin", "text_file": "heldout.txt",
                    "documents": counts["heldout"]["documents"], "tokens": counts["heldout"]["tokens"],
                    "sha256": counts["heldout"]["sha256"],
                    "text_note": "heldout.txt holds the same documents separated by blank lines (\\n\\n\\n)"},
        "decompress": "xz -dk train.bin.xz   (or: python3 -c \"import lzma,sys; "
                      "open('train.bin','wb').write(lzma.open('train.bin.xz').read())\")",
        "load": "numpy.fromfile('train.bin', dtype='<u2')",
    }
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    counts["bundle"] = {"fraction_of_train_documents_kept": fraction, "train_bin_xz_bytes": len(xz),
                        "total_bytes": sum(p.stat().st_size for p in bundle.iterdir())}
    (data / "tokens.json").write_text(json.dumps(counts, indent=1) + "\n")
    print(f"[bundle] {bundle}: {counts['bundle']['total_bytes'] / 1e6:.1f} MB total, "
          f"{fraction * 100:.1f}% of train documents ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
