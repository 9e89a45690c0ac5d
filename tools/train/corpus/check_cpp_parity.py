#!/usr/bin/env python3
"""Check that Debian's C++ sentencepiece 0.1.97 (what the server links) encodes the
held-out text to exactly the ids the Python package produces.

Two checks:
  1. spm_encode --output_format=id on heldout.txt (the CLI works line by line, so
     this compares every line, i.e. every paragraph, with Python's encode(line)).
  2. spm_parity.cc, compiled against libsentencepiece 0.1.97, encodes each held-out
     document as a whole (newlines included, as the server's Encode() sees a prompt)
     and decodes it back; compared with Python's encode(document).  Skipped if no
     C++ compiler is installed.

The Debian packages are downloaded and unpacked under WORK/spm-cpp (not installed).
Writes WORK/data/cpp_parity.json; exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE.parent / "work"
SPM_VERSION = "0.1.97-3+b1"
PACKAGES = ["sentencepiece", "libsentencepiece0", "libsentencepiece-dev"]


def fetch(work: Path) -> Path:
    d = work / "spm-cpp"
    root = d / "root"
    if (root / "usr/bin/spm_encode").exists():
        return root
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download"] + [f"{p}={SPM_VERSION}" for p in PACKAGES],
                   cwd=d, check=True, capture_output=True)
    for deb in sorted(d.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    work = args.work.resolve()
    data = work / "data"
    model = data / "tokenizer.model"
    root = fetch(work)
    libdir = Path(glob.glob(str(root / "usr/lib/*/libsentencepiece.so.0*"))[0]).parent
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    report = {"cpp_sentencepiece": SPM_VERSION, "python_sentencepiece": spm.__version__}
    ok = True

    # 1. spm_encode, line by line over heldout.txt
    text = (data / "heldout.txt").read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    out = subprocess.run([str(root / "usr/bin/spm_encode"), f"--model={model}", "--output_format=id"],
                         input=text.encode("utf-8"), capture_output=True, env=env, check=True).stdout
    cpp_lines = out.decode().split("\n")
    if cpp_lines and cpp_lines[-1] == "":
        cpp_lines.pop()
    mismatch = 0
    ntok = 0
    for i, line in enumerate(lines):
        py = sp.encode(line)
        ntok += len(py)
        cpp = [int(x) for x in cpp_lines[i].split()] if i < len(cpp_lines) else None
        if cpp != py:
            mismatch += 1
    report["spm_encode_lines"] = {"lines": len(lines), "cpp_lines": len(cpp_lines), "tokens": ntok,
                                  "mismatched_lines": mismatch,
                                  "identical": mismatch == 0 and len(lines) == len(cpp_lines)}
    ok &= report["spm_encode_lines"]["identical"]
    print(f"[parity] spm_encode (C++ {SPM_VERSION}) vs Python {spm.__version__}: {len(lines)} lines, "
          f"{ntok:,} tokens, {mismatch} mismatched lines", flush=True)

    # 2. whole documents through the library API
    cxx = shutil.which("g++") or shutil.which("c++")
    docs = [json.loads(l)["text"] for l in open(data / "heldout_docs.jsonl", encoding="utf-8")]
    docs += ["Two paragraphs.\n\nSecond one.\n", "  leading spaces\tand tab\n\n\nthree newlines",
             "Unicode: naïve café — “quotes” 日本語 😀", ""]
    if cxx is None:
        report["library_documents"] = {"skipped": "no C++ compiler (apt-get install g++)"}
        print("[parity] library check skipped: no C++ compiler", flush=True)
    else:
        exe = work / "spm-cpp" / "spm_parity"
        subprocess.run([cxx, "-std=c++17", "-O1", str(HERE / "spm_parity.cc"), f"-I{root}/usr/include",
                        f"-L{libdir}", "-lsentencepiece", "-o", str(exe)], check=True)
        docfile = work / "spm-cpp" / "docs.nul"
        docfile.write_bytes(b"\0".join(d.encode("utf-8") for d in docs))
        r = subprocess.run([str(exe), str(model), str(docfile)], capture_output=True, env=env)
        cpp_docs = r.stdout.decode().split("\n")[: len(docs)]
        mism = sum(1 for d, c in zip(docs, cpp_docs) if sp.encode(d) != [int(x) for x in c.split()])
        report["library_documents"] = {"documents": len(docs), "mismatched_documents": mism,
                                       "cpp_decode_round_trip_ok": r.returncode == 0,
                                       "stderr": r.stderr.decode().strip()[-300:],
                                       "identical": mism == 0 and len(cpp_docs) == len(docs)}
        ok &= report["library_documents"]["identical"] and r.returncode == 0
        print(f"[parity] C++ library Encode() on {len(docs)} whole documents: {mism} mismatches; "
              f"C++ Decode() round trip {'ok' if r.returncode == 0 else 'FAILED'}", flush=True)

    report["ok"] = bool(ok)
    (data / "cpp_parity.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
