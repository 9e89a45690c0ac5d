#!/usr/bin/env python3
"""Train the sentencepiece tokenizer on the corpus built by build_corpus.py.

Input : WORK/data/train_docs.jsonl, heldout_docs.jsonl
Output: WORK/data/tokenizer.model, tokenizer.vocab, tokenizer_report.json

Settings (see README.md for the reasoning):
  vocab 4096, byte_fallback, identity normalisation, no whitespace folding,
  split_digits, '\\n' as a user-defined piece, ids unk=0 bos=1 eos=2 (no pad).

The trainer reads "sentences".  Instead of the lines of train.txt (single
paragraphs, which would never show the trainer a newline) it is given chunks
of consecutive paragraphs of a document joined with "\\n\\n" (<= ~3000 chars),
so it also learns the forms that follow a paragraph break (e.g. "The" without
the leading '▁').  The text is exactly that of train.txt.

--model-type auto trains a unigram and a BPE model on the same chunks and
keeps the type with fewer tokens per byte on the held-out set (unigram if
within 0.2%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / "work" / "data"

CHUNK_CHARS = 3000
TIE = 0.002


def write_vocab(model: Path, out: Path) -> None:
    """tokenizer.vocab: 'piece<TAB>score' per id, like spm's .vocab, but with the newline
    piece written as \\n (and backslashes doubled) so the file keeps one line per id."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    with open(out, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i).replace("\\", "\\\\").replace("\n", "\\n")
            f.write(f"{piece}\t{sp.get_score(i):g}\n")


def load_docs(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def chunks(docs: list[str]) -> list[str]:
    out = []
    for d in docs:
        cur, n = [], 0
        for p in d.split("\n\n"):
            cur.append(p)
            n += len(p) + 2
            if n >= CHUNK_CHARS:
                out.append("\n\n".join(cur))
                cur, n = [], 0
        if cur:
            out.append("\n\n".join(cur))
    return out


def train(sentences: list[str], prefix: Path, model_type: str, vocab: int, threads: int) -> None:
    # model_prefix is stored in the model file: pass a bare name (and chdir) so the
    # model is byte-identical whatever the work directory is.
    cwd = os.getcwd()
    os.chdir(prefix.parent)
    try:
        _train(sentences, prefix.name, model_type, vocab, threads)
    finally:
        os.chdir(cwd)


def _train(sentences: list[str], prefix: str, model_type: str, vocab: int, threads: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=prefix,
        model_type=model_type,
        vocab_size=vocab,
        character_coverage=0.9999,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        user_defined_symbols=["\n"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=1 << 17,
        input_sentence_size=0,          # sampling is done here, deterministically
        shuffle_input_sentence=False,
        num_threads=threads,
        minloglevel=1,
    )


def tokens_per_byte(model: Path, docs: list[str]) -> tuple[int, int]:
    sp = spm.SentencePieceProcessor(model_file=str(model))
    ntok = sum(len(x) for x in sp.encode(docs))
    nbyte = sum(len(d.encode("utf-8")) for d in docs)
    return ntok, nbyte


def round_trip(model: Path, docs: list[str]) -> dict:
    sp = spm.SentencePieceProcessor(model_file=str(model))
    res = {"documents": len(docs), "documents_ok": 0, "paragraphs": 0, "paragraphs_ok": 0,
           "unk_tokens": 0, "byte_fallback_tokens": 0, "tokens": 0, "failures": []}
    byte_ids = {i for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    extra = ["  two  spaces, trailing space ", "\nleading newline", "tabs\tand\r\nCRLF\n\n\n",
             "Unicode: naïve café — “quotes” 日本語 😀", ""]
    for d in docs + extra:
        ids = sp.encode(d)
        res["tokens"] += len(ids)
        res["unk_tokens"] += sum(1 for i in ids if i == sp.unk_id())
        res["byte_fallback_tokens"] += sum(1 for i in ids if i in byte_ids)
        if sp.decode(ids) == d:
            res["documents_ok"] += 1
        elif len(res["failures"]) < 5:
            res["failures"].append(d[:200])
        for p in d.split("\n\n"):
            res["paragraphs"] += 1
            res["paragraphs_ok"] += sp.decode(sp.encode(p)) == p
    res["documents"] += len(extra)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--model-type", choices=["auto", "unigram", "bpe"], default="auto")
    ap.add_argument("--max-chunks", type=int, default=2_000_000,
                    help="cap on training chunks (all are used if fewer; deterministic shuffle)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    data = args.data.resolve()
    t0 = time.time()
    train_docs = load_docs(data / "train_docs.jsonl")
    held_docs = load_docs(data / "heldout_docs.jsonl")
    all_chunks = chunks(train_docs)
    rng = random.Random(1234)
    rng.shuffle(all_chunks)
    print(f"[tok] {len(train_docs)} train docs -> {len(all_chunks)} chunks; {len(held_docs)} held-out docs", flush=True)
    report = {"vocab_size": args.vocab, "chunks_total": len(all_chunks)}

    tmp = data / "tok_tmp"
    tmp.mkdir(exist_ok=True)
    final = all_chunks[: args.max_chunks]
    report["train_chunks"] = len(final)
    report["train_bytes"] = sum(len(c.encode()) for c in final)
    types = ["unigram", "bpe"] if args.model_type == "auto" else [args.model_type]
    comp = {}
    for mt in types:
        t1 = time.time()
        train(final, tmp / mt, mt, args.vocab, args.threads)
        ntok, nbyte = tokens_per_byte(tmp / f"{mt}.model", held_docs)
        comp[mt] = {"heldout_tokens": ntok, "heldout_bytes": nbyte,
                    "tokens_per_byte": round(ntok / nbyte, 5), "train_seconds": round(time.time() - t1, 1)}
        print(f"[tok] {mt:7s}: {ntok / nbyte:.4f} tokens/byte on held-out (trained in {time.time() - t1:.0f}s)", flush=True)
    # Fewest tokens per byte wins; within TIE (relative) unigram is preferred (sentencepiece's
    # default, and it allows subword-regularisation sampling if ever wanted).
    model_type = min(comp, key=lambda k: comp[k]["tokens_per_byte"])
    if model_type != "unigram" and "unigram" in comp:
        if comp["unigram"]["tokens_per_byte"] <= comp[model_type]["tokens_per_byte"] * (1 + TIE):
            model_type = "unigram"
    report["comparison"] = comp
    report["model_type"] = model_type
    shutil.copyfile(tmp / f"{model_type}.model", data / "tokenizer.model")
    write_vocab(data / "tokenizer.model", data / "tokenizer.vocab")
    shutil.rmtree(tmp)

    model = data / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.get_piece_size() == args.vocab
    ntok, nbyte = tokens_per_byte(model, held_docs)
    report["heldout"] = {"tokens": ntok, "bytes": nbyte, "tokens_per_byte": round(ntok / nbyte, 5),
                         "bytes_per_token": round(nbyte / ntok, 3)}
    report["round_trip"] = round_trip(model, held_docs)
    report["seconds"] = round(time.time() - t0, 1)
    rt = report["round_trip"]
    print(f"[tok] {model_type}: held-out {ntok / nbyte:.4f} tokens/byte ({nbyte / ntok:.2f} bytes/token); "
          f"round trip {rt['documents_ok']}/{rt['documents']} docs, {rt['paragraphs_ok']}/{rt['paragraphs']} paragraphs, "
          f"unk={rt['unk_tokens']}", flush=True)
    with open(data / "tokenizer_report.json", "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    if rt["documents_ok"] != rt["documents"] or rt["paragraphs_ok"] != rt["paragraphs"]:
        sys.exit("round trip failed")


if __name__ == "__main__":
    main()
