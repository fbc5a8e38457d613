"""The docs site: built from the notebooks, every link resolves, and the pages render in a real browser.

`make docs-test` builds the site (`make docs`) and points OPEN_CHATGPT_DOCS_SITE at it; run alone, this file builds
it with scripts/build_docs.py (notebook runs are cached, so a second run takes seconds). The browser checks run
headless Chromium (Debian's `chromium`); they skip when it is not installed, unless OPEN_CHATGPT_REQUIRE_CHROMIUM=1
(set by `make docs-test`, which installs it) turns the skip into a failure.
"""
import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_docs  # noqa: E402

SHOTS = "screenshots"


@pytest.fixture(scope="module")
def site() -> Path:
    env = os.environ.get("OPEN_CHATGPT_DOCS_SITE")
    if env:
        out = Path(env).resolve()
        assert (out / "index.html").exists(), f"OPEN_CHATGPT_DOCS_SITE={env} has no index.html: run `make docs` first"
        return out
    out = ROOT / "_site"
    assert build_docs.main(["--out", str(out)]) == 0, "the docs build failed: see its output above"
    return out


def _pages(site: Path) -> dict[str, str]:
    return {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(site.rglob("*.html")) if "assets" not in p.relative_to(site).parts}


# ---------------------------------------------------------------------------------------------------------
# the build: one page per notebook, an API page with every exported name, no broken or remote links
# ---------------------------------------------------------------------------------------------------------

def test_link_checker_catches_breakage(tmp_path):
    "The checker is not a rubber stamp: missing files, missing anchors and remote assets are all reported."
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1><a href="b.html#top">ok</a>')
    (tmp_path / "b.html").write_text('<h1 id="top">B</h1><a href="a.html#top">ok</a><a href="https://example.org">ok</a>')
    assert build_docs.check_site(tmp_path) == []
    (tmp_path / "c.html").write_text('<a href="missing.html">x</a><a href="a.html#nope">y</a><img src="gone.png">'
                                     '<script src="https://cdn.example.org/m.js"></script>'
                                     '<style>@font-face{src:url(https://fonts.example.org/f.woff)}</style>')
    errors = build_docs.check_site(tmp_path)
    assert len(errors) == 5, errors
    assert any("missing.html" in e for e in errors) and any("nope" in e for e in errors)
    assert any("gone.png" in e for e in errors) and any("loads from the network" in e for e in errors)
    assert any("CSS url()" in e for e in errors)


def test_directives():
    "nbdev directives are read the way nbdev reads them, and hidden from the page."
    src = "#| export\n#|hide\n# | echo: false\n\nx = 1  # a comment\n#| not a directive any more"
    assert build_docs.directives(src) == {"export": "", "hide": "", "echo": "false"}
    assert build_docs.strip_directives(src) == "x = 1  # a comment\n#| not a directive any more"
    assert build_docs.exported_names("#| export\ndef f(x): pass\ndef _g(): pass\nclass C: pass\ny = 2") == ["f", "C"]


def test_a_failing_notebook_fails_the_build(tmp_path, capsys):
    "A notebook that raises makes the build exit 1 and its page says so; directives and links are applied."
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    nbs = tmp_path / "nbs"; nbs.mkdir()
    good = new_notebook(cells=[
        new_markdown_cell("# Good\n\nSee [the bad one](02_bad.ipynb). $a^2$\n\n## Part"),
        new_code_cell("#| hide\nSECRET = 'hidden-cell-marker'"),
        new_code_cell("#| export\ndef add_one(x: int) -> int:\n    'Add one to `x`.'\n    return x + 1"),
        new_code_cell("#| eval: false\nraise RuntimeError('eval: false cells must not run')"),
        new_code_cell("#| echo: false\nprint('only-the-output-' + 'marker')")])
    bad = new_notebook(cells=[new_markdown_cell("# Bad"), new_code_cell("1 / 0")])
    nbformat.write(good, nbs / "01_good.ipynb"); nbformat.write(bad, nbs / "02_bad.ipynb")
    out = tmp_path / "site"
    rc = build_docs.main(["--nbs", str(nbs), "--out", str(out), "--build-dir", str(tmp_path / "build"), "--jobs", "1"])
    assert rc == 1
    assert "02_bad.ipynb" in capsys.readouterr().out
    bad_page = (out / "02_bad.html").read_text()
    assert "This page failed to build" in bad_page and "ZeroDivisionError" in bad_page
    page = (out / "01_good.html").read_text()
    assert "This page failed to build" not in page
    assert "hidden-cell-marker" not in page                  # #| hide: gone
    assert "eval: false cells must not run" in page          # #| eval: false: shown, not run
    assert "only-the-output-marker" in page and "print(" not in page  # #| echo: false: output only
    assert '<h3 id="add_one"' in page and "Add one to" in page  # show_doc under the exported function
    assert 'href="02_bad.html"' in page                      # notebook links point at pages
    assert build_docs.check_site(out) == []


def test_every_notebook_has_a_page(site):
    pages = _pages(site)
    for nb in build_docs.find_notebooks():
        rel = nb.relative_to(build_docs.NBS)
        href = "index.html" if rel.as_posix() == "index.ipynb" else rel.with_suffix(".html").as_posix()
        assert href in pages, f"{rel} has no page in {site}"
        body = pages[href]
        assert "This page failed to build" not in body, f"{href} is marked as failed"
        assert re.search(r"<h1[ >]", body), f"{href} has no <h1>"
        # the sidebar links every page
        for other in pages:
            if other != href and other in ("index.html", "api.html"): assert other.split("/")[-1] in body
    # directives and hidden cells never reach a page's code
    for href, body in pages.items():
        for pre in re.findall(r"<pre>(.*?)</pre>", body, re.S):
            assert not re.search(r"^\s*#\s*\|", re.sub(r"<[^>]+>", "", pre), re.M), f"{href} shows a #| directive"


def test_api_page_lists_every_exported_name(site):
    import importlib
    import pkgutil
    api = (site / "api.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", api))
    pkg = importlib.import_module(build_docs.PKG)
    n = 0
    for m in pkgutil.walk_packages(pkg.__path__, build_docs.PKG + "."):
        if m.name.rsplit(".", 1)[-1].startswith("_"): continue
        mod = importlib.import_module(m.name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if callable(obj):
                assert re.search(rf'<h3 id="{re.escape(name)}"', api), f"api.html has no section for {m.name}.{name}"
                doc = (obj.__doc__ or "").strip()
                if doc:  # its docstring's first words are shown
                    first = re.split(r"[`*_$\\\[<]", doc.split("\n")[0])[0][:30].strip()  # up to any markup
                    assert len(first) < 5 or first in text, f"api.html does not show the docstring of {m.name}.{name}: {first!r}"
            else:
                assert f"<code>{name}</code>" in api, f"api.html has no row for constant {m.name}.{name}"
            n += 1
    assert n > 10
    assert "/work/" not in api and "0x7f" not in api  # no build-machine paths or object addresses


def test_site_has_no_broken_links_and_loads_nothing_remote(site):
    assert build_docs.check_site(site) == []
    assert (site / "assets" / "mathjax" / "tex-chtml-full.js").exists()
    fonts = list((site / "assets" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 10, "MathJax's fonts are missing"


# ---------------------------------------------------------------------------------------------------------
# as a person sees it: headless Chromium on a local server
# ---------------------------------------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name): return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        msg = "chromium is not installed (Debian: apt-get install chromium; `make docs-test` does it)"
        if os.environ.get("OPEN_CHATGPT_REQUIRE_CHROMIUM") == "1": pytest.fail(msg)
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def server(site):
    "A static server on 127.0.0.1 that records the status of every request."
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            log.append((self.path, int(code) if str(code).isdigit() else code))
        def log_message(self, *a): pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True); t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    httpd.shutdown(); httpd.server_close()


def _run_chromium(exe: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
        return r.stdout


def _chapter(site: Path) -> str:
    "The chapter page with a plot and the most TeX in its prose."
    best, most = None, 0
    for href, body in _pages(site).items():
        if href in ("index.html", "api.html") or "data:image/png" not in body: continue
        prose = re.sub(r"<(script|style|pre)[^>]*>.*?</\1>", "", body, flags=re.S)
        if prose.count("$") > most: best, most = href, prose.count("$")
    if best is None: pytest.fail("no chapter page has both math and a plot (a PNG output)")
    return best


def _not_blank(png: Path) -> None:
    from PIL import Image
    im = Image.open(png).convert("L")
    lo, hi = im.getextrema()
    assert hi - lo > 100, f"{png} looks blank"
    assert sum(1 for n in im.resize((128, 200)).histogram() if n) > 20, f"{png} has almost no detail"


def test_pages_render_in_chromium(site, browser, server):
    url, log = server
    shots = site / SHOTS
    shots.mkdir(exist_ok=True)
    chapter = _chapter(site)
    for name, href in (("home", "index.html"), ("chapter", chapter)):
        dom = _run_chromium(browser, "--dump-dom", f"{url}/{href}")
        # headings as the browser built them
        h1 = re.findall(r"<h1[^>]*>(.*?)</h1>", dom, re.S)
        h2 = re.findall(r"<h2[^>]*>(.*?)</h2>", dom, re.S)
        assert h1 and re.sub(r"<[^>]+>", "", h1[0]).strip(), f"{href}: no <h1> heading rendered"
        assert len(h2) >= 2, f"{href}: fewer than two <h2> headings rendered"
        assert 'class="site-nav"' in dom and "api.html" in dom, f"{href}: the sidebar is missing"
        if name == "chapter":
            # MathJax ran: TeX became CHTML elements, none of them an error, and no raw $$ is left in the text
            n_math = dom.count("<mjx-container")
            assert n_math >= 3, f"{href}: math was not typeset ({n_math} MathJax elements)"
            assert "<mjx-merror" not in dom, f"{href}: MathJax reports a TeX error"
            text = re.sub(r"<(script|style|pre|code)[^>]*>.*?</\1>", "", dom, flags=re.S)
            assert "$$" not in re.sub(r"<[^>]+>", "", text), f"{href}: raw $$ TeX left in the page"
            imgs = re.findall(r'<img id="fig-\d+"[^>]+src="(data:image/png;base64,[^"]{200,})"', dom)
            assert imgs, f"{href}: no plot (PNG image) on the page"
        png = shots / f"{name}.png"
        _run_chromium(browser, f"--screenshot={png}", "--window-size=1280,2000", f"{url}/{href}")
        assert png.exists() and png.stat().st_size > 20_000, f"no screenshot of {href}"
        _not_blank(png)
    # everything the pages asked for (scripts, MathJax fonts) was served
    missing = sorted({p for p, code in log if code != 200 and code != 304})
    assert not missing, f"requests that failed while rendering: {missing}"
    assert any("/assets/mathjax/tex-chtml-full.js" in p for p, _ in log), "MathJax was never loaded"
    assert any(".woff" in p for p, _ in log), "MathJax's fonts were never loaded"
    (shots / "pages.json").write_text(json.dumps({"home": "index.html", "chapter": chapter}))
