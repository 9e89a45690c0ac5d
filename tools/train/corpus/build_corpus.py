#!/usr/bin/env python3
"""Build an English-prose training corpus from documentation and books that
Debian bookworm (main) ships.

Steps (each is cached under the work dir, so re-runs are cheap):

  1. fetch    apt-get download PKG=VERSION  -> WORK/debs/
              dpkg -x                       -> WORK/unpacked/PKG/
  2. extract  per-source extractor (HTML, Mallard, POD, SWORD/OSIS, R data,
              dictd) -> documents made of paragraphs
  3. clean    normalise, drop code/tables/boilerplate/non-English/short
              paragraphs, exact dedup of paragraphs across the corpus
  4. split    ~1% of documents (>= 300 KB) to held-out, by hash of doc id
  5. write    WORK/data/{train,heldout}.txt       documents separated by "\\n\\n\\n"
              WORK/data/{train,heldout}_docs.jsonl {"source","id","text"} per line
              WORK/data/sources.json, SOURCES.md

Nothing is installed system-wide: packages are only downloaded and unpacked.
Usage:  python3 build_corpus.py [--work DIR] [--allow-version-drift] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extract  # noqa: E402
import textclean  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE.parent / "work"

DOC_SEP = "\n\n\n"          # between documents in train.txt / heldout.txt
PARA_SEP = "\n\n"           # between paragraphs inside a document
MIN_DOC_BYTES = 300          # documents smaller than this after cleaning are dropped
HELDOUT_FRACTION = 0.01
HELDOUT_MIN_BYTES = 300_000


@dataclass
class Source:
    name: str                 # short id used in doc ids
    package: str              # Debian binary package
    version: str              # exact bookworm version (apt-cache policy)
    licence: str              # SPDX-like short name, read from licence_file
    licence_file: str         # path inside the package we read the licence from
    kind: str                 # extractor: html | mallard | pod | sword | rdata | dictd | plain
    globs: list = field(default_factory=list)     # files (relative to unpack root)
    exclude: str | None = None                    # regex on relative path
    xpath: str | None = None                      # content root for HTML
    title: str = ""                               # human title for SOURCES.md
    registry: str = "debian"
    extra: dict = field(default_factory=dict)
    licence_package: tuple | None = None          # (package, version) holding the copyright file


D = "usr/share/doc"
SOURCES: list[Source] = [
    # ---- books and other non-technical prose -------------------------------
    Source("austen", "r-cran-janeaustenr", "1.0.0-1", "MIT (package); novels public domain",
           f"{D}/r-cran-janeaustenr/copyright", "rdata",
           ["usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"],
           title="Jane Austen's six novels (Project Gutenberg texts, via the janeaustenr R package)"),
    Source("web-bible", "sword-text-web", "426.0-1", "public-domain",
           f"{D}/sword-text-web/copyright", "sword",
           ["usr/share/sword/modules/texts/ztext/engWEB2015eb"], extra={"prefix": "b"},
           title="World English Bible (modern English translation)"),
    Source("treasury-of-david", "sword-comm-tdavid", "2.1-1", "public-domain",
           f"{D}/sword-comm-tdavid/copyright", "sword",
           ["usr/share/sword/modules/comments/zcom/tdavid"], extra={"prefix": "c"},
           title="C. H. Spurgeon, The Treasury of David (1885)"),
    Source("mhcc", "sword-comm-mhcc", "2.0-1", "public-domain",
           f"{D}/sword-comm-mhcc/copyright", "sword",
           ["usr/share/sword/modules/comments/zcom/mhcc"], extra={"prefix": "b"},
           title="Matthew Henry's Concise Commentary (1706)"),
    Source("devils-dictionary", "dict-devil", "1.0-13.1", "public-domain",
           f"{D}/dict-devil/copyright", "dictd",
           ["usr/share/dictd/devil.index"], title="Ambrose Bierce, The Devil's Dictionary (1911)"),
    Source("cfi", "cfi-en", "3.0-10.2", "public-domain", f"{D}/cfi-en/copyright", "html",
           [f"{D}/cfi-en/html/ch*web.htm"], extra={"keep_tables": True}, title="Linus Walleij, Copyright Does Not Exist"),
    Source("jargon", "jargon-text", "4.4.7-4.1", "public-domain",
           f"{D}/jargon-text/copyright", "jargon", [f"{D}/jargon-text/jargon.txt.gz"],
           title="The Jargon File 4.4.7"),
    Source("debian-history", "debian-history", "2.28", "GPL-2+", f"{D}/debian-history/copyright", "html",
           [f"{D}/debian-history/docs/*.en.html"], title="A Brief History of Debian"),
    # ---- user guides -------------------------------------------------------
    Source("debian-handbook", "debian-handbook", "11.20220922", "GPL-2+ OR CC-BY-SA-3.0", f"{D}/debian-handbook/copyright",
           "html", [f"{D}/debian-handbook/html/en-US/*.html"],
           exclude=r"/(?:index|ix01|pr01|pr02|pr03|pr04|pr05|go01)\.html$",
           title="The Debian Administrator's Handbook"),
    Source("debian-reference", "debian-reference-en", "2.100", "GPL-2+", f"{D}/debian-reference-en/copyright",
           "html", ["usr/share/debian-reference/*.en.html"], title="Debian Reference"),
    Source("debian-faq", "debian-faq", "11.1", "permissive (verbatim/modified copies with notice)", f"{D}/debian-faq/copyright", "html",
           [f"{D}/debian/FAQ/*.en.html"], title="The Debian GNU/Linux FAQ"),
    Source("debian-edu", "debian-edu-doc-en", "2.12.23~deb12u1", "GPL-2+", f"{D}/debian-edu-doc-en/copyright",
           "html", [f"{D}/debian-edu-doc-en/debian-edu-bookworm-manual.html"],
           extra={"split_re": r'(?=<div class="section"><h2)|(?=<h2 )'},
           title="Debian Edu / Skolelinux Bookworm manual"),
    Source("maint-guide", "maint-guide", "1.2.53", "GPL-2+", f"{D}/maint-guide/copyright", "html",
           [f"{D}/maint-guide/html/*.en.html"], title="Debian New Maintainers' Guide"),
    Source("developers-reference", "developers-reference", "12.18", "GPL-2",
           f"{D}/developers-reference/copyright", "html",
           ["usr/share/developers-reference/*.html"],
           title="Debian Developer's Reference"),
    Source("debian-policy", "debian-policy", "4.6.2.0", "GPL-2+", f"{D}/debian-policy/copyright", "html",
           [f"{D}/debian-policy/policy.html/*.html"], title="Debian Policy Manual"),
    Source("installation-guide", "installation-guide-amd64", "20230508+deb12u1", "GPL-2",
           f"{D}/installation-guide-amd64/copyright", "html", [f"{D}/installation-guide-amd64/en/*.html"],
           title="Debian GNU/Linux Installation Guide (amd64)"),
    Source("kernel-handbook", "debian-kernel-handbook", "1.0.21", "GPL-2+",
           f"{D}/debian-kernel-handbook/copyright", "html", [f"{D}/debian-kernel-handbook/kernel-handbook.html/*.html"],
           title="Debian Linux Kernel Handbook"),
    Source("gnome-help", "gnome-user-docs", "43.0-2", "CC-BY-SA-3.0", f"{D}/gnome-user-docs/copyright", "mallard",
           ["usr/share/help/C/gnome-help/*.page", "usr/share/help/C/system-admin-guide/*.page"],
           title="GNOME Help and System Administration Guide"),
    Source("gimp-help", "gimp-help-en", "2.10.34-2", "GFDL-1.2+ (no invariant sections)", f"{D}/gimp-help-common/copyright", "html",
           ["usr/share/gimp/2.0/help/en/*.html"], title="GNU Image Manipulation Program User Manual",
           licence_package=("gimp-help-common", "2.10.34-2")),
    Source("libreoffice-help", "libreoffice-help-en-us", "4:7.4.7-1+deb12u14", "MPL-2.0",
           f"{D}/libreoffice-help-en-us/copyright", "html",
           ["usr/share/libreoffice/help/en-US/text/**/*.html"], xpath="//*[@id='DisplayArea']",
           title="LibreOffice 7.4 Help"),
    Source("aptitude-doc", "aptitude-doc-en", "0.8.13-5", "GPL-2+", f"{D}/aptitude-doc-en/copyright", "html",
           [f"{D}/aptitude/html/en/*.html"], title="aptitude user's manual"),
    Source("mh-book", "mh-book", "200605-2.2", "GPL-2+", f"{D}/mh-book/copyright", "html",
           [f"{D}/mh-book/html/**/*.html"], exclude=r"/index/|/examples/",
           title="Jerry Peek, MH & nmh: Email for Users & Programmers"),
    # ---- programming and system documentation ------------------------------
    Source("python-docs", "python3.11-doc", "3.11.2-6+deb12u9", "PSF-2.0", f"{D}/python3.11-doc/copyright",
           "html", [f"{D}/python3.11/html/**/*.html"],
           exclude=r"/_sources/|/genindex|/py-modindex|/search\.html|/download\.html|/copyright\.html|/license\.html|/contents\.html",
           xpath="//div[@role='main']", title="Python 3.11 documentation"),
    Source("perl-docs", "perl-doc", "5.36.0-7+deb12u4", "GPL-1+ OR Artistic-1.0", f"{D}/perl-doc/copyright", "pod",
           ["usr/share/perl/5.36.0/pod/*.pod"], exclude=r"/perl5\d+delta\.pod$|/perltoc\.pod$|/perlapi\.pod$|/perlintern\.pod$|/perlmodlib\.pod$",
           title="Perl 5.36 documentation (POD)"),
    Source("postgresql-docs", "postgresql-doc-15", "15.20-0+deb12u1", "PostgreSQL", f"{D}/postgresql-doc-15/copyright",
           "html", [f"{D}/postgresql-doc-15/html/*.html"], exclude=r"/release-|/bookindex|/sql-keywords",
           title="PostgreSQL 15 documentation"),
    Source("linux-docs", "linux-doc-6.1", "6.1.192-2", "GPL-2", f"{D}/linux-doc-6.1/copyright", "html",
           [f"{D}/linux-doc-6.1/html/**/*.html"],
           exclude=r"/_sources/|/translations/|/genindex|/search\.html|/_static/|/devicetree/bindings/",
           xpath="//div[@role='main']", title="Linux kernel 6.1 documentation"),
    Source("rust-docs", "rust-doc", "1.63.0+dfsg1-2", "MIT OR Apache-2.0", f"{D}/rust-doc/copyright", "html",
           [f"{D}/rust-doc/html/{b}/**/*.html" for b in
            ("book", "nomicon", "reference", "rust-by-example", "edition-guide", "embedded-book", "rustc", "rustdoc")],
           exclude=r"/print\.html$|/toc\.html$|/book/(?:2018|first|second)-edition/", xpath="//main", title="The Rust Programming Language and other Rust books"),
    Source("django-docs", "python-django-doc", "3:3.2.25-0+deb12u7", "BSD-3-Clause", f"{D}/python-django-doc/copyright",
           "html", [f"{D}/python-django-doc/html/**/*.html"],
           exclude=r"/_modules/|/_sources/|/genindex|/py-modindex|/search\.html", xpath="//div[@role='main']|//div[@id='docs-content']",
           title="Django 3.2 documentation"),
    Source("sqlite-docs", "sqlite3-doc", "3.40.1-2+deb12u2", "public-domain", f"{D}/sqlite3-doc/copyright", "html",
           [f"{D}/sqlite3/*.html", f"{D}/sqlite3/c3ref/*.html", f"{D}/sqlite3/session/*.html"],
           exclude=r"/releaselog/|/syntax/|/docs\.html|/sitemap|/keyword_index|/toc\.html|/changes\.html|/chronology",
           title="SQLite documentation"),
    Source("apache-docs", "apache2-doc", "2.4.71-1~deb12u1", "Apache-2.0", f"{D}/apache2-doc/copyright", "html",
           [f"{D}/apache2-doc/manual/en/**/*.html"], title="Apache HTTP Server 2.4 documentation"),
    Source("git-docs", "git-doc", "1:2.39.5-0+deb12u3", "GPL-2", f"{D}/git-doc/copyright", "html",
           [f"{D}/git-doc/*.html", f"{D}/git-doc/**/*.html"], title="Git documentation"),
    Source("bash-docs", "bash-doc", "5.2.15-2", "GFDL-1.3+ (no invariant sections)", f"{D}/bash-doc/copyright", "html",
           [f"{D}/bash/*.html"], title="GNU Bash Reference Manual"),
    Source("octave-docs", "octave-doc", "7.3.0-2", "GPL-3+", f"{D}/octave-doc/copyright", "html",
           [f"{D}/octave/octave.html/*.html"], title="GNU Octave manual"),
    Source("r-manuals", "r-doc-html", "4.2.2.20221110-2", "GPL-2", f"{D}/r-doc-html/copyright", "html",
           ["usr/share/R/doc/manual/*.html", f"{D}/r-doc-html/manual/*.html"],
           extra={"split_re": r"(?=<div class=\"chapter)|(?=<h2 class=\"chapter)"}, title="R manuals"),
    Source("gnu-standards", "gnu-standards", "2022.03.23-0.1", "GFDL-1.3+ (no invariant sections)", f"{D}/gnu-standards/copyright", "html",
           [f"{D}/gnu-standards/*.html"], extra={"split_re": r"(?=<h2 class=\"chapter)"},
           title="GNU Coding Standards and GNU Maintainers Information"),
    Source("gettext-docs", "gettext-doc", "0.21-12", "GFDL-1.2+ (no invariant sections) OR GPL-2+", f"{D}/gettext-doc/copyright", "html",
           [f"{D}/gettext-doc/*.html", f"{D}/gettext/*.html"], title="GNU gettext manual"),
    Source("m4-docs", "m4-doc", "1.4.19-3", "GFDL-1.3+ (no invariant sections)", f"{D}/m4-doc/copyright", "html",
           [f"{D}/m4/*.html"], title="GNU M4 manual"),
    Source("flex-docs", "flex-doc", "2.6.4-8.2", "BSD-3-Clause-like (Flex licence)", f"{D}/flex-doc/copyright", "html",
           [f"{D}/flex-doc/html/*.html"], title="Flex manual"),
    Source("zsh-docs", "zsh-doc", "5.9-4", "Zsh licence (MIT-like)", f"{D}/zsh-common/copyright", "html",
           [f"{D}/zsh-common/html/*.html"], title="Zsh manual", licence_package=("zsh-common", "5.9-4")),
    Source("postfix-docs", "postfix-doc", "3.7.11-0+deb12u1", "EPL-2.0 OR IPL-1.0", f"{D}/postfix-doc/copyright", "html",
           [f"{D}/postfix/html/*.html", f"{D}/postfix-doc/html/*.html"], exclude=r"\.\d\.html$|postconf\.5",
           title="Postfix documentation"),
    Source("exim-spec", "exim4-doc-html", "4.96-1", "GPL-2+", f"{D}/exim4-doc-html/copyright", "html",
           [f"{D}/exim4-doc-html/spec_html/ch-*.html", f"{D}/exim4-doc-html/spec_html/filter_ch-*.html"], title="Exim specification"),
    Source("bind9-arm", "bind9-doc", "1:9.18.49-1~deb12u3", "MPL-2.0", f"{D}/bind9-doc/copyright", "html",
           [f"{D}/bind9-doc/arm/*.html"], exclude=r"/genindex|/search\.html|/manpages\.html|/changelog",
           xpath="//div[@role='main']", title="BIND 9 Administrator Reference Manual"),
    Source("sphinx-docs", "sphinx-doc", "5.3.0-4", "BSD-2-Clause", f"{D}/sphinx-doc/copyright", "html",
           [f"{D}/sphinx-doc/html/**/*.html"], exclude=r"/_sources/|/_modules/|/genindex|/py-modindex|/search\.html|/changes\.html",
           xpath="//div[@role='main']", title="Sphinx documentation"),
    Source("nodejs-docs", "nodejs-doc", "18.20.4+dfsg-1~deb12u3", "MIT", f"{D}/nodejs-doc/copyright", "html",
           [f"{D}/nodejs/api/*.html"], exclude=r"/all\.html$|/index\.html$", xpath="//div[@id='apicontent']",
           title="Node.js 18 API documentation"),
    Source("golang-docs", "golang-1.19-doc", "1.19.8-2", "BSD-3-Clause", f"{D}/golang-1.19-doc/copyright", "html",
           ["usr/share/go-1.19/doc/*.html", "usr/lib/go-1.19/doc/*.html"], title="Go 1.19 documents (Effective Go, spec, FAQ)"),
]



# ---------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------

def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def fetch(package: str, want: str, work: Path, allow_drift: bool) -> tuple[Path, str]:
    """Download PACKAGE=WANT with apt-get and unpack it with dpkg -x (cached)."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    dest = work / "unpacked" / package
    stamp = dest / ".unpacked-version"
    if stamp.exists() and (stamp.read_text().strip() == want or allow_drift):
        return dest, stamp.read_text().strip()
    deb = None
    for p in sorted(debs.glob(f"{package}_*.deb")):
        if run(["dpkg-deb", "-f", str(p), "Version"]).stdout.strip() == want:
            deb = p
    if deb is None:
        try:
            run(["apt-get", "download", f"{package}={want}"], cwd=debs)
        except subprocess.CalledProcessError as e:
            if not allow_drift:
                raise SystemExit(
                    f"apt-get download {package}={want} failed:\n{e.stderr}\n"
                    "Run 'apt-get update' first; if that version has left the archive, "
                    "re-run with --allow-version-drift (the version used is recorded in sources.json).")
            print(f"  WARNING: {package}={want} not available, taking apt's candidate", file=sys.stderr)
            run(["apt-get", "download", package], cwd=debs)
        deb = max(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.mkdir(parents=True)
    run(["dpkg", "-x", str(deb), str(dest)])
    stamp.write_text(version + "\n")
    return dest, version


# ---------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------

def _files(root: Path, src: Source) -> list[Path]:
    seen = set()
    out = []
    for g in src.globs:
        for p in sorted(glob.glob(str(root / g), recursive=True)):
            rel = os.path.relpath(p, root)
            if rel in seen or not os.path.isfile(p):
                continue
            if src.exclude and re.search(src.exclude, "/" + rel):
                continue
            seen.add(rel)
            out.append(Path(p))
    return out


def _html_docs(root: Path, src: Source):
    split_re = src.extra.get("split_re")
    for p in _files(root, src):
        rel = os.path.relpath(p, root)
        if split_re:
            # one big HTML file holding a whole book: split into chapter documents
            raw = p.read_bytes().decode("utf-8", "replace")
            parts = re.split(split_re, raw)
            if len(parts) > 1:
                for i, part in enumerate(parts):
                    doc = extract.lxml.html.document_fromstring(part.encode()) if part.strip() else None
                    if doc is None:
                        continue
                    paras = extract.html_paragraphs(doc)
                    yield f"{rel}#{i}", paras
                continue
        yield rel, extract.read_html(p, src.xpath, keep_tables=src.extra.get("keep_tables", False))


def _sword_docs(root: Path, src: Source):
    moddir = root / src.globs[0]
    for i, block in enumerate(extract.sword_blocks(moddir, src.extra["prefix"])):
        yield f"block{i:04d}", extract.osis_paragraphs(block)


def _austen_docs(root: Path, src: Source):
    rdx = root / src.globs[0]
    novels = extract.read_rdb_strings(rdx, rdx.with_suffix(".rdb"))
    chap_re = re.compile(r"^\s*(CHAPTER|Chapter)\s+([IVXLC]+|\d+)\.?\s*$")
    for name in sorted(novels):
        lines = novels[name]
        chapters, cur = [], []
        for ln in lines:
            if chap_re.match(ln) or re.match(r"^\s*VOLUME\s+[IVX]+\s*$", ln):
                if cur:
                    chapters.append(cur)
                cur = []
                continue
            cur.append(ln)
        if cur:
            chapters.append(cur)
        for ci, ch in enumerate(chapters):
            text = "\n".join(ch)
            text = re.sub(r"_([^_\n]+(?:\n[^_\n]+)*)_", r"\1", text)  # _italics_
            paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
            yield f"{name}/ch{ci:03d}", paras


def _dictd_docs(root: Path, src: Source):
    index = root / src.globs[0]
    entries = extract.read_dictd(index, index.with_name(index.name.replace(".index", ".dict.dz")))
    groups = collections.OrderedDict()
    for head, body in entries:
        key = head[:1].upper() if head[:1].isalpha() else "#"
        # entry body: first line repeats the headword; join the rest into paragraphs
        lines = body.strip("\n").split("\n")
        text = "\n".join(lines)
        paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        # indented quoted verse stays; headword line "ABASEMENT, n. ..." is kept as prose
        groups.setdefault(key, []).extend(paras)
    for k, paras in groups.items():
        yield f"letter-{k}", paras


def _jargon_docs(root: Path, src: Source):
    text = gzip.decompress((root / src.globs[0]).read_bytes()).decode("utf-8", "replace")
    start = text.find("The Jargon Lexicon")
    start = text.find("\n   :", start if start >= 0 else 0)
    end = text.find("Appendix A.", start)
    body = text[start:end if end > start else None]
    body = re.sub(r"\{([^{}]*)\}", r"\1", body)  # {cross-reference} -> cross-reference
    groups = collections.OrderedDict()
    for entry in re.split(r"\n(?=   :[^\n]+:)", body):
        m = re.match(r"\s*:([^:\n]+):", entry)
        if not m:
            continue
        key = m.group(1)[:1].upper() if m.group(1)[:1].isalpha() else "#"
        groups.setdefault(key, []).extend(extract.read_plain_text(entry))
    for k, paras in groups.items():
        yield f"letter-{k}", paras


def _mallard_docs(root: Path, src: Source):
    for p in _files(root, src):
        yield os.path.relpath(p, root), extract.read_mallard(p)


def _pod_docs(root: Path, src: Source):
    for p in _files(root, src):
        yield os.path.relpath(p, root), extract.read_pod(p)


def _plain_docs(root: Path, src: Source):
    for p in _files(root, src):
        yield os.path.relpath(p, root), extract.read_plain(p)


EXTRACTORS = {
    "html": _html_docs, "sword": _sword_docs, "rdata": _austen_docs, "dictd": _dictd_docs,
    "mallard": _mallard_docs, "jargon": _jargon_docs, "pod": _pod_docs, "plain": _plain_docs,
}


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def doc_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.sha1(doc_id.encode()).digest()[:8], "big")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--allow-version-drift", action="store_true",
                    help="if a pinned Debian version is gone, use apt's candidate (recorded in sources.json)")
    ap.add_argument("--only", help="comma-separated source names to use (default: all)")
    ap.add_argument("--exclude", help="comma-separated source names to leave out")
    ap.add_argument("--fetch-only", action="store_true")
    ap.add_argument("--samples", type=int, default=0, help="write N rejected/kept samples per source to work/data/samples/")
    args = ap.parse_args()

    work: Path = args.work.resolve()
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    sources = SOURCES
    if args.only:
        names = set(args.only.split(","))
        sources = [s for s in SOURCES if s.name in names]
    if args.exclude:
        names = set(args.exclude.split(","))
        sources = [s for s in sources if s.name not in names]

    t0 = time.time()
    roots = {}
    for src in sources:
        roots[src.name] = fetch(src.package, src.version, work, args.allow_version_drift)
        lic_root = roots[src.name][0]
        if src.licence_package:
            lic_root = fetch(*src.licence_package, work, args.allow_version_drift)[0]
        if not (lic_root / src.licence_file).is_file():
            raise SystemExit(f"{src.name}: licence file {src.licence_file} not found in {lic_root}")
    print(f"[fetch] {len(sources)} packages in {time.time() - t0:.0f}s", flush=True)
    if args.fetch_only:
        return

    seen = set()
    docs = []  # (source, id, text)
    stats = {}
    sample_dir = data / "samples"
    if args.samples:
        sample_dir.mkdir(exist_ok=True)
    for src in sources:
        t1 = time.time()
        root, version = roots[src.name]
        st = collections.Counter()
        rejected_samples = collections.defaultdict(list)
        ndocs = 0
        nbytes = 0
        for key, paras in EXTRACTORS[src.kind](root, src):
            kept = []
            for p in paras:
                st["paragraphs"] += 1
                p = textclean.clean_paragraph(p)
                r = textclean.reject_reason(p)
                if r is None:
                    k = textclean.dedup_key(p)
                    if k in seen:
                        r = "duplicate"
                    else:
                        seen.add(k)
                if r is not None:
                    st["rej:" + r] += 1
                    st["rejbytes:" + r] += len(p)
                    if args.samples and len(rejected_samples[r]) < args.samples:
                        rejected_samples[r].append(p)
                    continue
                kept.append(p)
            text = PARA_SEP.join(kept)
            if len(text.encode()) < MIN_DOC_BYTES:
                st["small_docs_dropped"] += 1
                continue
            docs.append((src.name, f"{src.name}:{key}", text))
            ndocs += 1
            nbytes += len(text.encode())
        st["documents"] = ndocs
        st["bytes"] = nbytes
        stats[src.name] = (st, version)
        print(f"[extract] {src.name:22s} docs={ndocs:6d} MB={nbytes / 1e6:7.2f} "
              f"paras={st['paragraphs']} kept={st['paragraphs'] - sum(v for k, v in st.items() if k.startswith('rej:'))} "
              f"({time.time() - t1:.0f}s)", flush=True)
        if args.samples:
            with open(sample_dir / f"{src.name}.txt", "w") as f:
                for r, ss in sorted(rejected_samples.items()):
                    f.write(f"===== REJECTED {r}\n")
                    for s in ss:
                        f.write(s[:400] + "\n--\n")
                kept_docs = [d for d in docs if d[0] == src.name]
                f.write("===== KEPT (first documents)\n")
                for d in kept_docs[:3]:
                    f.write(d[2][:3000] + "\n" + "-" * 40 + "\n")

    # ---- split --------------------------------------------------------------
    docs.sort(key=lambda d: (doc_hash(d[1]), d[1]))  # deterministic shuffle
    limit = int(HELDOUT_FRACTION * 2 ** 64)
    held = [d for d in docs if doc_hash(d[1]) < limit]
    held_ids = {d[1] for d in held}
    held_bytes = sum(len(d[2].encode()) for d in held)
    i = len(held)
    while held_bytes < HELDOUT_MIN_BYTES and i < len(docs):
        held.append(docs[i])
        held_ids.add(docs[i][1])
        held_bytes += len(docs[i][2].encode())
        i += 1
    train = [d for d in docs if d[1] not in held_ids]

    def write(name, ds):
        with open(data / f"{name}.txt", "w", encoding="utf-8", newline="\n") as f:
            f.write(DOC_SEP.join(d[2] for d in ds) + "\n")
        with open(data / f"{name}_docs.jsonl", "w", encoding="utf-8") as f:
            for d in ds:
                f.write(json.dumps({"source": d[0], "id": d[1], "text": d[2]}, ensure_ascii=False) + "\n")
        return sum(len(d[2].encode()) for d in ds)

    tb = write("train", train)
    hb = write("heldout", held)
    print(f"[split] train: {len(train)} docs {tb / 1e6:.2f} MB; heldout: {len(held)} docs {hb / 1e6:.2f} MB")

    # ---- sources.json / SOURCES.md -----------------------------------------
    per_split = collections.defaultdict(lambda: collections.Counter())
    for name, ds in (("train", train), ("heldout", held)):
        for d in ds:
            per_split[d[0]][name + "_docs"] += 1
            per_split[d[0]][name + "_bytes"] += len(d[2].encode())
    out = []
    for src in sources:
        st, version = stats[src.name]
        out.append({
            "name": src.name,
            "title": src.title,
            "registry": src.registry,
            "package": src.package,
            "version": version,
            "licence": src.licence,
            "licence_file": f"/{src.licence_file}" + (f" (package {src.licence_package[0]})" if src.licence_package else ""),
            "documents": st["documents"],
            "bytes": st["bytes"],
            **dict(per_split[src.name]),
            "paragraphs_seen": st["paragraphs"],
            "rejected": {k[4:]: v for k, v in sorted(st.items()) if k.startswith("rej:")},
        })
    with open(data / "sources.json", "w") as f:
        json.dump({"sources": out, "train_bytes": tb, "heldout_bytes": hb,
                   "train_docs": len(train), "heldout_docs": len(held)}, f, indent=1)
    write_sources_md(data / "SOURCES.md", out, tb, hb)
    print(f"[done] {time.time() - t0:.0f}s")


def write_sources_md(path: Path, out, tb, hb):
    lines = [
        "# Training corpus sources",
        "",
        "English prose extracted from documentation and public-domain books shipped as "
        "Debian 12 (bookworm, main) packages. Text was extracted from HTML/XML/POD/OSIS, code blocks, tables "
        "and navigation were removed, paragraphs were filtered for English prose and deduplicated exactly.",
        "",
        "| Source | Debian package | Version | Licence | Documents | MB kept |",
        "|---|---|---|---|---:|---:|",
    ]
    for s in sorted(out, key=lambda s: -s["bytes"]):
        lines.append(f"| {s['title']} | `{s['package']}` | `{s['version']}` | {s['licence']} | "
                     f"{s['documents']} | {s['bytes'] / 1e6:.2f} |")
    total = sum(s["bytes"] for s in out)
    lines += ["", f"Total: {total / 1e6:.1f} MB in {sum(s['documents'] for s in out)} documents "
              f"(train {tb / 1e6:.1f} MB, held-out {hb / 1e6:.2f} MB).", "",
              "Licences were read from each package's `/usr/share/doc/PACKAGE/copyright` file "
              "(path per source in `sources.json`)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
