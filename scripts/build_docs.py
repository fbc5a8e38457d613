#!/usr/bin/env python
"""Build the course's static HTML site from the notebooks, offline (no quarto needed).

    python scripts/build_docs.py              # -> _site/index.html, one page per notebook, api.html
    python scripts/build_docs.py --check      # only run the link checker over an existing _site/

Steps:
1. find every notebook under nbs/ (glob; files or folders starting with `_` or `.` are skipped);
2. execute each one in quick mode (OPEN_CHATGPT_QUICK=1) in its own kernel, in a copy under _docs_build/;
   results are cached by a hash of the notebook and the package sources, so a rebuild only re-runs what changed.
   After each exported function or class a hidden `show_doc(name)` cell is added, so its signature and
   docstring appear under the code, as in nbdev's own docs;
3. apply nbdev's directives (`#| hide`, `#| echo: false`, `#| output: false`, `#| eval: false`, ...) and
   convert to HTML with nbconvert and the template in scripts/docs/templates/site (a sidebar links all pages);
4. write api.html: every name in every module's `__all__`, with signature and docstring (nbdev's show_doc);
5. copy MathJax 3 into _site/assets/mathjax (fetched once with `npm pack mathjax@3.2.2` into
   _docs_build/cache, or taken from $MATHJAX_DIR), so math renders with no network;
6. check every page: each local href/src (and #fragment) must exist, and no script, stylesheet or image may
   come from the network.
Exits non-zero when a notebook fails to run, a module fails to import, or a link is broken.
"""
from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import html
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
PKG = "open_chatgpt"
HERE = Path(__file__).resolve().parent / "docs"
MATHJAX_VERSION = "3.2.2"
SITE_TITLE = "open-chatgpt"
BUILD_VERSION = "1"  # bump to invalidate the execution cache when this script's execution step changes

# ----------------------------------------------------------------------------------------------------------
# 1. notebooks
# ----------------------------------------------------------------------------------------------------------

def find_notebooks(nbs: Path = NBS) -> list[Path]:
    "Every notebook under `nbs`, sorted; names or folders starting with `_` or `.` are skipped."
    out = []
    for p in sorted(nbs.rglob("*.ipynb")):
        rel = p.relative_to(nbs)
        if any(part.startswith(("_", ".")) for part in rel.parts): continue
        out.append(p)
    return out


_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*?)\s*$")


def directives(source: str) -> dict[str, str]:
    "nbdev/quarto directives at the top of a code cell: `#| hide` -> {'hide': ''}, `#| echo: false` -> {'echo': 'false'}."
    out = {}
    for line in source.splitlines():
        if not line.strip(): continue
        m = _DIRECTIVE.match(line)
        if not m: break
        text = m.group(1)
        if ":" in text:
            k, v = text.split(":", 1)
            out[k.strip().lower()] = v.strip().lower()
        elif text:
            k, *rest = text.split(None, 1)
            out[k.strip().lower()] = rest[0].strip() if rest else ""
    return out


def strip_directives(source: str) -> str:
    "The source without its leading `#|` lines (what a reader should see)."
    lines = source.splitlines()
    i = 0
    while i < len(lines) and (not lines[i].strip() or _DIRECTIVE.match(lines[i])): i += 1
    return "\n".join(lines[i:])


def _skip_exec(d: dict) -> bool:
    "Cells nbdev_test does not run: `#| eval: false`, and the test flags in settings.ini (`notest`, `slow`)."
    return d.get("eval") == "false" or "notest" in d or "slow" in d


def exported_names(source: str) -> list[str]:
    "Public top-level functions and classes defined in an exported cell."
    try: tree = ast.parse(strip_directives(source))
    except SyntaxError: return []
    return [n.name for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith("_")]


def default_exp(nb: dict) -> str | None:
    "The module a notebook exports to (`#| default_exp data` -> 'data')."
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            d = directives(_src(c))
            if "default_exp" in d: return d["default_exp"]
    return None


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def prepare(nb: dict) -> dict:
    """A copy of `nb` ready to execute: a hidden `show_doc` cell after each exported def/class (unless the notebook
    shows it itself), and cells nbdev_test would skip blanked (their source is put back after execution)."""
    import nbformat
    nb = copy.deepcopy(nb)
    whole = "\n".join(_src(c) for c in nb.cells if c.cell_type == "code")
    cells = []
    for c in nb.cells:
        cells.append(c)
        if c.cell_type != "code": continue
        d = directives(_src(c))
        if _skip_exec(d):
            c.metadata["site_skipped_source"] = c.source
            c.source = ""
            continue
        if not ({"export", "exports"} & d.keys()): continue
        for name in exported_names(_src(c)):
            if re.search(rf"show_doc\(\s*{re.escape(name)}\b", whole): continue
            sd = nbformat.v4.new_code_cell(
                f"from nbdev.showdoc import show_doc as _site_show_doc\n_site_show_doc({name})",
                metadata={"tags": ["remove_input"], "site_show_doc": True})
            if nb.nbformat_minor < 5: sd.pop("id", None)
            cells.append(sd)
    nb.cells = cells
    return nb


def _pkg_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / PKG).rglob("*")):
        if p.is_file() and p.name != "_modidx.py" and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(ROOT)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


def _kernel_dir(build: Path) -> Path:
    "A kernelspec that runs this very Python, so notebooks import the package installed next to this script."
    share = build / "jupyter"
    kdir = share / "kernels" / "open-chatgpt-docs"
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=ERROR"],
            "display_name": "open-chatgpt docs", "language": "python"}
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return share


def execute_one(nb_path: str, out_path: str, jupyter_path: str, timeout: int) -> tuple[str, bool, str, float]:
    "Run one notebook in quick mode in a fresh kernel; write the executed copy (even a partial one) to `out_path`."
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    t0 = time.time()
    os.environ["OPEN_CHATGPT_QUICK"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # notebooks run side by side: one torch thread each, no thrashing
    os.environ["JUPYTER_PATH"] = jupyter_path + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # plots become PNG outputs
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = prepare(nbformat.read(nb_path, as_version=4))
    ok, err = True, ""
    ep = ExecutePreprocessor(timeout=timeout, kernel_name="open-chatgpt-docs")
    try:
        ep.preprocess(nb, {"metadata": {"path": str(Path(nb_path).parent)}})
    except Exception as e:  # CellExecutionError, timeouts, a dead kernel: the page is broken
        ok, err = False, f"{type(e).__name__}: {e}"
    for c in nb.cells:
        if "site_skipped_source" in c.get("metadata", {}):
            c.source = c.metadata.pop("site_skipped_source")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_path)
    return nb_path, ok, err, time.time() - t0


def execute_all(nbs: list[Path], build: Path, jobs: int, timeout: int, use_cache: bool, nbs_dir: Path = NBS) -> tuple[dict, list]:
    "Execute every notebook (cached); returns {notebook: executed path} and a list of (notebook, error)."
    exec_dir = build / "exec"
    exec_dir.mkdir(parents=True, exist_ok=True)
    jupyter_path = str(_kernel_dir(build))
    pkg = _pkg_hash()
    done, todo = {}, []
    for p in nbs:
        rel = p.relative_to(nbs_dir)
        key = hashlib.sha256(p.read_bytes() + pkg.encode() + BUILD_VERSION.encode()).hexdigest()[:16]
        out = exec_dir / rel.with_suffix(f".{key}.ipynb")
        done[p] = out
        if use_cache and out.exists(): print(f"  cached   {rel}")
        else: todo.append((p, out))
    failures = []
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as ex:
            futs = [ex.submit(execute_one, str(p), str(out) + ".tmp", jupyter_path, timeout) for p, out in todo]
            for (p, out), f in zip(todo, futs):
                _, ok, err, secs = f.result()
                rel = p.relative_to(nbs_dir)
                tmp = Path(str(out) + ".tmp")
                if ok:
                    for old in out.parent.glob(rel.stem + ".*.ipynb"): old.unlink()  # drop stale cache entries
                    tmp.rename(out)
                    print(f"  executed {rel} ({secs:.0f} s)")
                else:
                    # keep the partial run for the page, under a name the cache never matches
                    failed = out.with_suffix(".failed.ipynb"); tmp.rename(failed); done[p] = failed
                    failures.append((rel, err))
                    print(f"  FAILED   {rel} ({secs:.0f} s): {err.splitlines()[0] if err else ''}")
    return done, failures

# ----------------------------------------------------------------------------------------------------------
# 2. HTML
# ----------------------------------------------------------------------------------------------------------

_SOURCE_LINK = re.compile(r"^\[source\]\([^)]*\)\{[^}]*\}\s*$", re.M)


def clean_for_site(nb, failure: str | None = None):
    "Apply nbdev's directives with nbconvert's tags, hide `#|` lines, tidy show_doc output."
    import nbformat
    for c in nb.cells:
        if c.cell_type != "code": continue
        d = directives(c.source)
        tags = set(c.metadata.get("tags", []))
        if "hide" in d or d.get("include") == "false" or "default_exp" in d: tags.add("remove_cell")
        if d.get("echo") == "false" or "hide_input" in d: tags.add("remove_input")
        if d.get("output") == "false" or "hide_output" in d: tags.add("remove_output")
        c.metadata["tags"] = sorted(tags)
        c.source = strip_directives(c.source)
        if not c.source.strip() and not c.get("outputs"): c.metadata["tags"] = sorted(tags | {"remove_cell"})
        for o in c.get("outputs", []):
            md = o.get("data", {}).get("text/markdown")
            if md is not None:
                md = md if isinstance(md, str) else "".join(md)
                o["data"]["text/markdown"] = _SOURCE_LINK.sub("", md)  # nbdev's link to GitHub (+ quarto attrs)
    if failure:
        err = html.escape(re.sub(r"\x1b\[[0-9;]*m", "", failure)[-3000:]).replace("\n", "&#10;")  # one line: no markdown inside
        msg = ("<div class='site-build-error'><b>This page failed to build.</b> A cell raised an error while the "
               f"notebook ran in quick mode:<pre>{err}</pre></div>")
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(msg))
    return nb


def page_title(nb, default: str) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", _src(c), re.M)
            if m: return m.group(1).strip()
    return default


def make_exporter():
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    cfg = Config()
    cfg.TagRemovePreprocessor.enabled = True
    cfg.TagRemovePreprocessor.remove_cell_tags = {"remove_cell"}
    cfg.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    cfg.TagRemovePreprocessor.remove_all_outputs_tags = {"remove_output"}
    cfg.HTMLExporter.exclude_input_prompt = True
    cfg.HTMLExporter.exclude_output_prompt = True
    return HTMLExporter(config=cfg, template_name="site", extra_template_basedirs=[str(HERE / "templates")])


class _Headings(HTMLParser):
    "Collects (level, id, text) for <h1>/<h2> in a page."
    def __init__(self):
        super().__init__(); self.found, self._cur = [], None
    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2"): self._cur = [int(tag[1]), dict(attrs).get("id"), ""]
    def handle_endtag(self, tag):
        if tag in ("h1", "h2") and self._cur is not None:
            self._cur[2] = self._cur[2].replace("\u00b6", "").strip(); self.found.append(tuple(self._cur)); self._cur = None
    def handle_data(self, data):
        if self._cur is not None: self._cur[2] += data


def _toc_html(body: str) -> str:
    p = _Headings(); p.feed(body)
    items = [f'<li><a href="#{html.escape(i, quote=True)}">{html.escape(t)}</a></li>' for lvl, i, t in p.found if lvl == 2 and i]
    return f'<ul class="site-toc">{"".join(items)}</ul>' if items else ""


def _fix_links(body: str, local_pages: set[str]) -> str:
    "Links to sibling notebooks (`03_sft.ipynb`, `03_sft.ipynb#x`) point at their pages."
    def sub(m):
        url = m.group(2)
        parts = urlsplit(url)
        if not parts.scheme and parts.path.endswith(".ipynb"):
            new = parts.path[:-6] + ".html"
            if new in local_pages or Path(new).name in local_pages:
                url = new + (f"#{parts.fragment}" if parts.fragment else "")
        return f'{m.group(1)}="{url}"'
    return re.sub(r'(href)="([^"]+)"', sub, body)


def _number_figures(body: str) -> str:
    "Plots get an anchor (`#fig-1`, ...) and an alt text instead of nbconvert's 'No description...'."
    n = 0
    def sub(m):
        nonlocal n; n += 1
        return f'<img id="fig-{n}" alt="Figure {n}"'
    return re.sub(r'<img alt="No description has been provided for this image"', sub, body)


def render_pages(pages: list[dict], out: Path):
    "pages: dicts with nb, href, title; writes each page with the sidebar."
    exporter = make_exporter()
    local = {p["href"] for p in pages}
    for page in pages:
        depth = page["href"].count("/")
        root = "../" * depth
        nav = [{"href": root + q["href"], "title": "Home" if q["href"] == "index.html" else q["title"], "current": q is page}
               for q in pages]
        nb = page["nb"]
        nb.metadata["title"] = page["title"] if page["href"] == "index.html" else f"{page['title']} - {SITE_TITLE}"
        body, _ = exporter.from_notebook_node(nb, resources={"site": {"root": root, "nav": nav, "title": SITE_TITLE}})
        body = _fix_links(body, local)
        body = _number_figures(body)
        body = body.replace("<!--SITE_TOC-->", _toc_html(body), 1)
        dest = out / page["href"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(body, encoding="utf-8")

# ----------------------------------------------------------------------------------------------------------
# 3. API reference
# ----------------------------------------------------------------------------------------------------------

def _short_repr(obj, limit: int = 160) -> str:
    "repr for a table cell: no build-machine paths, functions by name, no pipes or backticks."
    r = repr(obj).replace(str(ROOT / PKG), PKG).replace(str(ROOT), ".")
    r = re.sub(r"<function (\S+) at 0x[0-9a-f]+>", r"\1", r)
    r = r if len(r) <= limit else r[:limit] + " ..."
    return r.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def api_notebook(module_pages: dict[str, str]):
    "A notebook of markdown cells: every name in every module's `__all__`, signature + docstring. Raises on import errors."
    import nbformat
    from nbdev.showdoc import show_doc
    sys.path.insert(0, str(ROOT))
    pkg = importlib.import_module(PKG)
    mods = sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, PKG + ".") if not m.name.rsplit(".", 1)[-1].startswith("_"))
    cells = [nbformat.v4.new_markdown_cell(
        "# API reference\n\nEvery public name of the package (each module's `__all__`), with its signature and "
        "docstring. The chapter that builds a module explains it; the link under each module's name goes there.")]
    for modname in mods:
        mod = importlib.import_module(modname)
        names = list(getattr(mod, "__all__", []))
        short = modname.split(".", 1)[1]
        lines = [f"## {modname}", ""]
        if short in module_pages: lines.append(f"Built in chapter [{module_pages[short][1]}]({module_pages[short][0]}).\n")
        if mod.__doc__: lines.append(mod.__doc__.strip() + "\n")
        if not names: lines.append("*(no public names)*")
        consts = [n for n in names if not callable(getattr(mod, n))]
        if consts:  # constants in one compact table
            lines += ["| constant | value |", "|---|---|"]
            lines += [f"| `{n}` | `{_short_repr(getattr(mod, n))}` |" for n in consts]
        cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
        for name in names:
            obj = getattr(mod, name)
            if not callable(obj): continue
            md = show_doc(obj, name=name, title_level=3)._repr_markdown_()
            cells.append(nbformat.v4.new_markdown_cell(_SOURCE_LINK.sub("", md)))
    nb = nbformat.v4.new_notebook(); nb.cells = cells
    return nb, mods

# ----------------------------------------------------------------------------------------------------------
# 4. assets: MathJax (offline) and the stylesheet
# ----------------------------------------------------------------------------------------------------------

def mathjax_dir(build: Path) -> Path:
    "MathJax 3's es5/ folder: $MATHJAX_DIR, or the npm package fetched once into the build cache."
    env = os.environ.get("MATHJAX_DIR")
    if env:
        p = Path(env)
        if not (p / "tex-chtml-full.js").exists(): sys.exit(f"MATHJAX_DIR={env} has no tex-chtml-full.js (want MathJax 3's es5/ folder)")
        return p
    cache = build / "cache" / f"mathjax-{MATHJAX_VERSION}"
    es5 = cache / "package" / "es5"
    if (es5 / "tex-chtml-full.js").exists(): return es5
    npm = shutil.which("npm")
    if not npm:
        sys.exit("npm not found: it fetches MathJax (the math renderer) from the npm registry once. Install Node.js "
                 "and npm (Debian: apt-get install npm), or set MATHJAX_DIR to a MathJax 3 es5/ folder.")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([npm, "pack", "--silent", f"mathjax@{MATHJAX_VERSION}", "--pack-destination", tmp],
                           capture_output=True, text=True)
        tgz = next(Path(tmp).glob("mathjax-*.tgz"), None)
        if r.returncode or not tgz: sys.exit(f"npm pack mathjax@{MATHJAX_VERSION} failed:\n{r.stdout}\n{r.stderr}")
        with tarfile.open(tgz) as t:
            members = [m for m in t.getmembers() if m.name.startswith("package/es5/") and "/sre/" not in m.name]
            t.extractall(cache, members=members, filter="data")
    return es5


def write_assets(out: Path, build: Path):
    assets = out / "assets"
    if assets.exists(): shutil.rmtree(assets)
    es5 = mathjax_dir(build)

    def skip(folder, names):  # only the one bundle we load (tex-chtml-full.js) and what it may load lazily
        here = Path(folder).resolve()
        if here == es5.resolve(): return [n for n in names if n.endswith(".js") and n != "tex-chtml-full.js"] + ["sre"]
        if here == (es5 / "output").resolve(): return [n for n in names if n.startswith("svg")]
        return []
    shutil.copytree(es5, assets / "mathjax", ignore=skip)
    shutil.copy(HERE / "static" / "site.css", assets / "site.css")
    if (NBS / "images").is_dir():                     # figures the chapters show: ![...](images/x.png)
        if (out / "images").exists(): shutil.rmtree(out / "images")
        shutil.copytree(NBS / "images", out / "images")

# ----------------------------------------------------------------------------------------------------------
# 5. link checker
# ----------------------------------------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.refs, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        if tag == "a" and a.get("name"): self.ids.add(a["name"])
        for k in ("href", "src"):
            if a.get(k) is not None: self.refs.append((tag, k, a[k]))


def check_site(out: Path) -> list[str]:
    "Every local href/src must exist (and its #fragment too); scripts, styles and images must not come from the network."
    pages, errors = {}, []
    for p in sorted(out.rglob("*.html")):
        if "assets" in p.relative_to(out).parts: continue
        lp = _Links(); lp.feed(p.read_text(encoding="utf-8")); pages[p.resolve()] = lp
    if not pages: return [f"no HTML pages in {out}"]
    for page, lp in pages.items():
        rel = page.relative_to(out.resolve())
        for tag, attr, url in lp.refs:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if not (tag == "a" and attr == "href"): errors.append(f"{rel}: <{tag} {attr}> loads from the network: {url}")
                continue
            if parts.scheme in ("data", "mailto", "javascript") or url == "": continue
            if parts.scheme: errors.append(f"{rel}: unexpected URL scheme: {url}"); continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir(): target = target / "index.html"
            if not target.exists(): errors.append(f"{rel}: broken link <{tag} {attr}=\"{url}\">: {target} does not exist"); continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _ids_of(target)
                # the HTML spec looks up the fragment as written, then percent-decoded (nbconvert's ids keep %XX)
                if parts.fragment not in ids and unquote(parts.fragment) not in ids: errors.append(f"{rel}: broken anchor <{tag} {attr}=\"{url}\">: no id {parts.fragment!r}")
        # stylesheets inlined in the page must not pull fonts or images from the network either
        for m in re.finditer(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)", page.read_text(encoding="utf-8")):
            errors.append(f"{rel}: CSS url() loads from the network: {m.group(1)}")
    return errors


def _ids_of(p: Path) -> set[str]:
    lp = _Links(); lp.feed(p.read_text(encoding="utf-8")); return lp.ids

# ----------------------------------------------------------------------------------------------------------

def build(out: Path, build_dir: Path, jobs: int, timeout: int, use_cache: bool = True, nbs_dir: Path = NBS) -> int:
    t0 = time.time()
    nbs = find_notebooks(nbs_dir)
    if not nbs: sys.exit(f"no notebooks found under {nbs_dir}")
    print(f"docs: {len(nbs)} notebooks -> {out}")
    import nbformat
    executed, failures = execute_all(nbs, build_dir, jobs, timeout, use_cache, nbs_dir)
    t_exec = time.time() - t0
    failed = {str(rel): err for rel, err in failures}

    pages, module_pages = [], {}
    for p in nbs:
        rel = p.relative_to(nbs_dir)
        nb = nbformat.read(executed[p], as_version=4)
        href = "index.html" if rel.as_posix() == "index.ipynb" else rel.with_suffix(".html").as_posix()
        title = page_title(nb, rel.stem)
        mod = default_exp(nb)
        if mod: module_pages[mod] = (href, title)
        pages.append({"nb": clean_for_site(nb, failed.get(str(rel))), "href": href, "title": title})
    if not any(p["href"] == "index.html" for p in pages):  # no nbs/index.ipynb: the README is the home page
        readme = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else f"# {SITE_TITLE}"
        readme = readme.replace("](nbs/images/", "](images/")   # README paths are from the repo root, the site's from nbs/
        home = nbformat.v4.new_notebook(); home.cells = [nbformat.v4.new_markdown_cell(readme)]
        pages.insert(0, {"nb": home, "href": "index.html", "title": page_title(home, SITE_TITLE)})
    else:
        pages.sort(key=lambda q: q["href"] != "index.html")

    try:
        api_nb, mods = api_notebook(module_pages)
        pages.append({"nb": api_nb, "href": "api.html", "title": "API reference"})
    except Exception:
        failed["API reference"] = traceback.format_exc()
        print("  FAILED   API reference (a module does not import):\n" + failed["API reference"])

    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    write_assets(out, build_dir)
    render_pages(pages, out)
    (out / ".nojekyll").write_text("")
    errors = check_site(out)
    print(f"docs: {len(pages)} pages in {out} (execute {t_exec:.0f} s, total {time.time() - t0:.0f} s)")
    for e in errors: print("  LINK     " + e)
    if failed: print(f"docs: FAILED: {len(failed)} page(s) did not build: {', '.join(failed)}")
    if errors: print(f"docs: FAILED: {len(errors)} broken link(s)")
    return 1 if (failed or errors) else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_site"), help="where the site goes (default _site/)")
    ap.add_argument("--nbs", default=str(NBS), help="the notebooks folder (default nbs/)")
    ap.add_argument("--build-dir", default=str(ROOT / "_docs_build"), help="executed notebooks and the MathJax cache")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="notebooks run at once")
    ap.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    ap.add_argument("--no-cache", action="store_true", help="re-execute every notebook")
    ap.add_argument("--check", action="store_true", help="only check the links of an existing site")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    if a.check:
        errors = check_site(out)
        for e in errors: print("  LINK     " + e)
        print(f"docs: {'FAILED: %d broken link(s)' % len(errors) if errors else 'links ok'}")
        return 1 if errors else 0
    return build(out, Path(a.build_dir).resolve(), a.jobs, a.timeout, use_cache=not a.no_cache, nbs_dir=Path(a.nbs).resolve())


if __name__ == "__main__":
    sys.exit(main())
