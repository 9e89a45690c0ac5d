"""Format-specific text extractors for build_corpus.py.

Every extractor takes a path (or a few paths) inside an unpacked package and
yields documents as ``(doc_key, [paragraph, ...])``.  Paragraphs are raw
strings: whitespace is normalised later by textclean.clean_paragraph, and
filtering (code, tables, non-English, short) happens there too.

Only the Python standard library and lxml are used.
"""

from __future__ import annotations

import gzip
import html
import re
import struct
import zlib
from pathlib import Path

import lxml.etree
import lxml.html

# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------

# Elements whose whole subtree is dropped.
DROP_TAGS = {
    "script", "style", "nav", "header", "footer", "pre", "table", "noscript",
    "form", "button", "select", "textarea", "svg", "math", "img", "iframe",
    "object", "video", "audio", "map", "head", "input",
    "figure", "figcaption", "sup",
}
# Elements that start/end a paragraph.
BLOCK_TAGS = {
    "p", "div", "li", "dd", "dt", "dl", "ul", "ol", "h1", "h2", "h3", "h4",
    "h5", "h6", "blockquote", "br", "hr", "section", "article", "main",
    "aside", "body", "html", "title", "tr", "td", "th", "caption", "center",
    "address", "details", "summary", "legend", "fieldset", "menu",
}
# class/id values (whole words) marking navigation, boilerplate or code.
DROP_CLASS_RE = re.compile(
    r"(?:^|[\s_-])(?:sphinxsidebar|sphinxsidebarwrapper|related|navheader|navfooter|"
    r"docnav|breadcrumbs?|breadcrumb|navigation|navbar|nav|menu|menubar|footer|"
    r"header|banner|toc|toctree-wrapper|contents|localtoc|searchbox|search|"
    r"highlight|highlight-\w+|literal-block|programlisting|screen|synopsis|"
    r"funcsynopsis|cmdsynopsis|example-contents|informalexample|code|codehilite|"
    r"copyright|legalnotice|footnotes?|line-block|headerlink|viewcode-link|"
    r"sig|signature|toc-backref|genindex|modindex|rustdoc-toggle|"
    r"sidebar-elems|mobile-topbar|skip|skiplink|skip-link|"
    r"menu-bar|page-wrapper-nav|nav-chapters|nav-wrapper|"
    r"example|literallayout|calloutlist|mediaobject|figure|table|informaltable)"
    r"(?:$|[\s_-])",
    re.I,
)


def _drop_element(el, keep_tables=False) -> bool:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag.lower() in DROP_TAGS and not (keep_tables and tag.lower() == "table"):
        return True
    for attr in ("class", "id", "role"):
        v = el.get(attr)
        if v and DROP_CLASS_RE.search(v):
            return True
    return False


def html_paragraphs(root, drop_class_re=None, keep_tables=False) -> list[str]:
    """Walk an lxml.html tree and return block-level text paragraphs."""
    paras: list[str] = []
    buf: list[str] = []

    def flush():
        if buf:
            s = " ".join("".join(buf).split())
            buf.clear()
            if s:
                paras.append(s)

    def walk(el):
        tag = el.tag.lower() if isinstance(el.tag, str) else None
        if tag is None:  # comment / processing instruction
            if el.tail:
                buf.append(el.tail)
            return
        dropped = _drop_element(el, keep_tables) or (
            drop_class_re is not None
            and any(drop_class_re.search(el.get(a) or "") for a in ("class", "id"))
        )
        block = tag in BLOCK_TAGS or dropped and tag in ("pre", "table", "figure")
        if dropped:
            if block:
                flush()
            else:
                buf.append(" ")
            if el.tail:
                buf.append(el.tail)
            return
        if block:
            flush()
        if el.text:
            buf.append(el.text)
        for c in el:
            walk(c)
        if block:
            flush()
        if el.tail:
            buf.append(el.tail)

    walk(root)
    flush()
    return paras


def read_html(path: Path, content_xpath: str | None = None, drop_class_re=None, keep_tables=False) -> list[str]:
    data = path.read_bytes()
    if not data.strip():
        return []
    try:
        doc = lxml.html.document_fromstring(data)
    except (lxml.etree.ParserError, ValueError):
        return []
    roots = [doc]
    if content_xpath:
        found = doc.xpath(content_xpath)
        if found:
            roots = found
    out: list[str] = []
    for r in roots:
        out.extend(html_paragraphs(r, drop_class_re, keep_tables))
    return out


# --------------------------------------------------------------------------
# Mallard (GNOME help .page XML)
# --------------------------------------------------------------------------

MAL = "{http://projectmallard.org/1.0/}"
_MAL_DROP = {"info", "screen", "media", "links", "synopsis", "comment", "table", "tree", "listing"}
_MAL_BLOCK = {"p", "title", "item", "section", "page", "note", "steps", "list", "terms",
              "quote", "example", "figure", "desc", "subtitle", "cite", "div", "tr", "td"}


def read_mallard(path: Path) -> list[str]:
    try:
        root = lxml.etree.parse(str(path)).getroot()
    except lxml.etree.XMLSyntaxError:
        return []
    paras: list[str] = []
    buf: list[str] = []

    def local(el):
        t = el.tag
        return t.split("}", 1)[1] if isinstance(t, str) and "}" in t else (t if isinstance(t, str) else None)

    def flush():
        if buf:
            s = " ".join("".join(buf).split())
            buf.clear()
            if s:
                paras.append(s)

    def walk(el, parent_block):
        name = local(el)
        if name is None:
            if el.tail:
                buf.append(el.tail)
            return
        # block-level <code> (not inside a paragraph) is a code listing
        if name in _MAL_DROP or (name == "code" and parent_block != "p"):
            if name in ("media", "comment"):
                buf.append(" ")  # inline image/comment: keep the sentence together
            else:
                flush()
            if el.tail:
                buf.append(el.tail)
            return
        block = name in _MAL_BLOCK
        if block:
            flush()
        if el.text:
            buf.append(el.text)
        for c in el:
            walk(c, name if block else parent_block)
        if block:
            flush()
        if el.tail:
            buf.append(el.tail)

    walk(root, "page")
    flush()
    return paras


# --------------------------------------------------------------------------
# POD (Perl documentation)
# --------------------------------------------------------------------------

_POD_ESC = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&",
            "apos": "'", "nbsp": " "}


def _pod_inline(s: str) -> str:
    # Multi-bracket codes first: C<< ... >>, B<<< ... >>> etc.
    def multi(m):
        code, inner = m.group(1), m.group(3)
        return _pod_code(code, inner.strip())

    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"([A-Z])(<{2,})\s(.*?)\s(>{2,})", lambda m: multi(m) if len(m.group(2)) == len(m.group(4)) else m.group(0), s, flags=re.S)
        s = re.sub(r"([A-Z])<([^<>]*)>", lambda m: _pod_code(m.group(1), m.group(2)), s)
    return s


def _pod_code(code: str, inner: str) -> str:
    if code in "XZ":
        return ""
    if code == "E":
        if inner in _POD_ESC:
            return _POD_ESC[inner]
        try:
            if inner.lower().startswith("0x"):
                return chr(int(inner, 16))
            if inner.isdigit():
                return chr(int(inner))
        except ValueError:
            return ""
        return html.unescape("&%s;" % inner)
    if code == "L":
        text = inner.split("|", 1)[0] if "|" in inner else inner
        if "|" not in inner:
            # L<name/"sec">, L</sec>
            text = text.replace('"', "")
            if text.startswith("/"):
                text = text[1:]
            elif "/" in text and "://" not in text:
                a, b = text.split("/", 1)
                text = f"{b} in {a}" if b else a
        return text
    return inner  # B I C F S and unknown


def read_pod(path: Path) -> list[str]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    blocks = re.split(r"\n[ \t]*\n", text)
    paras: list[str] = []
    in_pod = True  # .pod files start in POD mode
    skip_region = None  # for =begin X ... =end X
    for b in blocks:
        if not b.strip():
            continue
        if b.startswith("="):
            cmd = b.split(None, 1)[0]
            arg = b[len(cmd):].strip()
            if cmd == "=cut":
                in_pod = False
            elif cmd in ("=pod", "=head1", "=head2", "=head3", "=head4", "=item", "=over", "=back", "=encoding"):
                in_pod = True
            if skip_region is not None:
                if cmd == "=end":
                    skip_region = None
                continue
            if cmd == "=begin":
                skip_region = arg
                continue
            if cmd == "=for":
                continue
            if cmd in ("=head1", "=head2", "=head3", "=head4"):
                paras.append(_pod_inline(arg))
            elif cmd == "=item":
                a = arg.lstrip("*").strip()
                if a and not re.fullmatch(r"\d+\.?", a):
                    paras.append(_pod_inline(a))
            continue
        if not in_pod or skip_region is not None:
            continue
        if b[0] in " \t":  # verbatim (code)
            continue
        paras.append(_pod_inline(b))
    return paras


# --------------------------------------------------------------------------
# SWORD zText / zCom modules (OSIS markup)
# --------------------------------------------------------------------------


def sword_blocks(moddir: Path, prefix: str) -> list[str]:
    """Return the decompressed blocks (one per book or chapter) of a zText/zCom module.

    ``prefix`` is 'b' (book blocks) or 'c' (chapter blocks): file names are
    ot.{prefix}zs (block index: 3 x uint32 LE offset/size/ucsize) and
    ot.{prefix}zz (concatenated zlib streams).  Blocks hold the entries of
    consecutive verses in canonical order.
    """
    out = []
    for testament in ("ot", "nt"):
        zs = moddir / f"{testament}.{prefix}zs"
        zz = moddir / f"{testament}.{prefix}zz"
        if not zs.exists():
            continue
        idx = zs.read_bytes()
        dat = zz.read_bytes()
        for i in range(len(idx) // 12):
            off, size, _usize = struct.unpack("<III", idx[12 * i: 12 * i + 12])
            if size == 0:
                continue
            out.append(zlib.decompress(dat[off: off + size]).decode("utf-8", "replace"))
    return out


_OSIS_PARA = re.compile(
    r"<(?:div|p|lg|list|item|chapter|title|lb)\b[^>]*>|</(?:div|p|lg|list|item|title|chapter)>|"
    r"<milestone\b[^>]*type=\"x-p\"[^>]*/>|<cell\b[^>]*>|</row>",
    re.I,
)


def osis_paragraphs(block: str) -> list[str]:
    s = block.replace("\x00", " ")
    # footnotes, cross references, headings, tables (chapter outlines), RF markers
    s = re.sub(r"<note\b[^>]*/>", " ", s)
    s = re.sub(r"<note\b.*?</note>", " ", s, flags=re.S)
    s = re.sub(r"<title\b[^>]*/>", " ", s)
    s = re.sub(r"<title\b.*?</title>", "\n\n", s, flags=re.S)
    s = re.sub(r"<table\b.*?</table>", "\n\n", s, flags=re.S)
    s = re.sub(r"<RF>.*?<Rf>", " ", s, flags=re.S)
    s = _OSIS_PARA.sub("\n\n", s)
    s = re.sub(r"<l\b[^>]*>|</l>", " ", s)  # poetry lines: keep within the stanza
    s = re.sub(r"<[^>]+>", "", s)
    s = html.unescape(s)
    paras = [p for p in (" ".join(x.split()) for x in s.split("\n\n")) if p]
    return merge_verse_lines(paras)


def merge_verse_lines(paras: list[str], max_line: int = 80) -> list[str]:
    """Join runs of short lines (verse quoted line by line) into one paragraph."""
    out: list[str] = []
    run: list[str] = []
    for p in paras + [None]:
        if p is not None and len(p) <= max_line and not re.match(r"(?i)verses? \d", p):
            run.append(p)
            continue
        if len(run) >= 2:
            out.append(" ".join(run))
        else:
            out.extend(run)
        run = []
        if p is not None:
            out.append(p)
    return out


# --------------------------------------------------------------------------
# R lazy-load database (.rdb/.rdx), enough for character vectors
# --------------------------------------------------------------------------


class _RReader:
    """Minimal reader for R's XDR serialisation format (version 2/3)."""

    def __init__(self, data: bytes):
        self.d = data
        self.i = 0
        self.refs = []

    def int(self):
        v = struct.unpack(">i", self.d[self.i: self.i + 4])[0]
        self.i += 4
        return v

    def header(self):
        assert self.d[:2] == b"X\n", "only XDR format supported"
        self.i = 2
        version = self.int()
        self.int()
        self.int()
        if version == 3:
            n = self.int()
            self.i += n  # native encoding
        return self.item()

    def item(self):
        flags = self.int()
        typ = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if typ == 254:  # NILVALUE
            return None
        if typ in (242, 253, 251, 252):  # EMPTYENV, GLOBALENV, MISSINGARG, BASEENV...
            return None
        if typ == 255:  # REFSXP
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if typ == 1:  # SYMSXP
            name = self.item()
            self.refs.append(name)
            return name
        if typ == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.d[self.i: self.i + n].decode("utf-8", "replace")
            self.i += n
            return s
        if typ in (2, 6, 17, 5):  # LISTSXP / LANGSXP / DOTSXP / PROMSXP (pairlists)
            out = {}
            if has_attr:
                self.item()  # attributes of a pairlist node: not needed
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            out[tag] = car
            if isinstance(cdr, dict):
                out.update(cdr)
            return out
        if typ in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            n = self.int()
            v = [self.item() for _ in range(n)]
            if has_attr:
                attrs = self.item()
                names = attrs.get("names") if isinstance(attrs, dict) else None
                if typ == 19 and names and len(names) == n:
                    return dict(zip(names, v))
            return v
        if typ in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            v = list(struct.unpack(">%di" % n, self.d[self.i: self.i + 4 * n]))
            self.i += 4 * n
            if has_attr:
                self.item()
            return v
        if typ == 14:  # REALSXP
            n = self.int()
            v = list(struct.unpack(">%dd" % n, self.d[self.i: self.i + 8 * n]))
            self.i += 8 * n
            if has_attr:
                self.item()
            return v
        raise ValueError(f"unsupported R SEXP type {typ}")


def read_rdb_strings(rdx: Path, rdb: Path) -> dict[str, list[str]]:
    """Return {object name: character vector} from an R lazy-load database."""
    index = _RReader(gzip.decompress(rdx.read_bytes())).header()
    variables = index["variables"]  # named list of c(offset, length)
    out = {}
    blob = rdb.read_bytes()
    for name, (off, length) in variables.items():
        chunk = blob[int(off): int(off) + int(length)]
        data = zlib.decompress(chunk[4:])  # 4-byte big-endian uncompressed length, then zlib
        val = _RReader(data).header()
        if isinstance(val, list) and all(isinstance(x, str) or x is None for x in val):
            out[name] = [x or "" for x in val]
    return out


# --------------------------------------------------------------------------
# dictd databases (.index + .dict.dz)
# --------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s: str) -> int:
    v = 0
    for ch in s:
        v = v * 64 + _B64.index(ch)
    return v


def read_dictd(index: Path, dictdz: Path) -> list[tuple[str, str]]:
    data = gzip.decompress(dictdz.read_bytes())
    entries = []
    seen = set()
    for line in index.read_text("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00database"):
            continue
        off, ln = _b64num(parts[1]), _b64num(parts[2])
        if (off, ln) in seen:
            continue
        seen.add((off, ln))
        entries.append((parts[0], data[off: off + ln].decode("utf-8", "replace")))
    entries.sort(key=lambda e: data.find(e[1].encode()))
    return entries


# --------------------------------------------------------------------------
# Plain text with blank-line separated paragraphs
# --------------------------------------------------------------------------


def read_plain(path: Path) -> list[str]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return read_plain_text(raw.decode("utf-8", "replace"))


def read_plain_text(text: str) -> list[str]:
    text = text.replace("\r\n", "\n")
    out = []
    for b in re.split(r"\n[ \t]*\n", text):
        lines = b.split("\n")
        # indented blocks are code/examples in most plain-text docs
        if all(l.startswith(("    ", "\t")) for l in lines if l.strip()):
            continue
        out.append(b)
    return out
