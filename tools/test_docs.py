#!/usr/bin/env python3
"""Browser test of the built site: headless Chromium (Debian's chromium + chromium-driver) via Selenium.

    python tools/test_docs.py [--site docs] [--screenshot _proc/docs-test/home.png]

docs/ is served over http on 127.0.0.1 (Material's search needs http, not file://). Every page is
loaded; the test fails on: a console error, a request to any host but 127.0.0.1, a failed request or
HTTP error, an image that did not load, an internal href/src whose target file is missing or whose
#fragment names no element on the target page, math left untypeset or a MathJax error; then
Material's search box is typed into and must list results. A screenshot of the home page is saved
(default: $TMPDIR/hacnn_nbdev-docs-test/home.png).
"""
from __future__ import annotations
import argparse, functools, http.server, json, re, shutil, socketserver, sys, tempfile, threading, time
import urllib.error, urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse, unquote

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-dev-shm-usage', '--window-size=1280,900']
SEARCHES = [('checkpoint', 'core.html'), ('seed', 'core.html')]  # (query, a page that must be among the results)

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

def base_path() -> str:
    "The path the site is served under (settings.ini doc_baseurl, e.g. /hacnn_nbdev/), as on GitHub Pages."
    import configparser
    c = configparser.ConfigParser(delimiters=['=']); c.read(ROOT / 'settings.ini')
    return '/' + c['DEFAULT'].get('doc_baseurl', '').strip('/') + '/' if c['DEFAULT'].get('doc_baseurl', '').strip('/') else '/'

def serve(site: Path, prefix: str):
    "A threaded static server for `site` at http://127.0.0.1:<free port><prefix>; returns (server, base url)."
    class Handler(Quiet):
        def translate_path(self, path):
            p = urlparse(path).path
            if not p.startswith(prefix): return str(site / '__outside_the_site__')  # -> 404
            return super().translate_path('/' + p[len(prefix):])
    srv = socketserver.ThreadingTCPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(site)))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}{prefix}'

def find_browser() -> tuple[str, str]:
    b = next((p for p in ('/usr/lib/chromium/chromium', shutil.which('chromium') or '', shutil.which('chromium-browser') or '') if p and Path(p).exists()), None)
    d = shutil.which('chromedriver') or ('/usr/bin/chromedriver' if Path('/usr/bin/chromedriver').exists() else None)
    if not (b and d):
        sys.exit('Chromium and its driver are needed: apt-get update && apt-get install -y chromium chromium-driver')
    return b, d

def start_browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary, driver = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for f in CHROMIUM_FLAGS + [f'--user-data-dir={profile}']: opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)

LOCAL_SCHEMES = ('data', 'blob', 'about', 'chrome', 'devtools')

class Checker:
    def __init__(self, drv, base: str, site: Path):
        self.drv, self.base, self.site = drv, base, site
        self.prefix = urlparse(base).path
        self.failures: list[str] = []
        self.checks = 0
        self._ids: dict[str, set] = {}

    def fail(self, msg): self.failures.append(msg); print('  FAIL', msg)
    def ok(self, cond, msg):
        self.checks += 1
        if not cond: self.fail(msg)
        return cond

    def ids_of(self, path: str) -> set | None:
        "Element ids (and anchor names) in a page of the site; None if the file does not exist."
        if path not in self._ids:
            f = self.site / unquote(path)
            if f.is_dir(): f = f / 'index.html'
            if not f.is_file(): self._ids[path] = None
            else:
                s = f.read_text(encoding='utf-8', errors='replace') if f.suffix == '.html' else ''
                self._ids[path] = set(re.findall(r'\b(?:id|name)="([^"]+)"', s))
        return self._ids[path]

    def network(self, page: str):
        "Requests the page made (from Chromium's performance log): all local, none failed."
        for entry in self.drv.get_log('performance'):
            m = json.loads(entry['message'])['message']
            p = m.get('params', {})
            if m['method'] == 'Network.requestWillBeSent':
                url = p['request']['url']; u = urlparse(url)
                self.ok(u.scheme in LOCAL_SCHEMES or u.hostname == '127.0.0.1', f'{page}: request left the machine: {url[:150]}')
            elif m['method'] == 'Network.responseReceived':
                r = p['response']
                self.ok(r['status'] < 400, f"{page}: HTTP {r['status']} for {r['url'][:150]}")
            elif m['method'] == 'Network.loadingFailed' and not p.get('canceled'):
                self.ok(False, f"{page}: loading failed: {p.get('errorText')} ({p.get('type')})")

    def console(self, page: str):
        for e in self.drv.get_log('browser'):
            self.ok(e['level'] not in ('SEVERE', 'ERROR'), f"{page}: console {e['level']}: {e['message'][:300]}")

    def wait_mathjax(self, timeout=20):
        "If the page loaded MathJax, wait until it has typeset; return (n typeset, n errors, leftover $ math)."
        drv = self.drv
        if not drv.execute_script('return !!window.MathJax'): return None
        drv.execute_script('window.__mj = false; MathJax.Hub.Queue(function(){ window.__mj = true; });')
        t = time.time()
        while not drv.execute_script('return window.__mj') and time.time() - t < timeout: time.sleep(0.1)
        return drv.execute_script("""
            const done = document.querySelectorAll('.MathJax, .MathJax_Display').length;
            const err = document.querySelectorAll('.MathJax_Error, merror, [data-mjx-error]').length;
            const txt = Array.from(document.querySelectorAll('.jp-RenderedMarkdown')).map(e => {
                const c = e.cloneNode(true);  // code is not math: drop pre/code before looking for $...$
                c.querySelectorAll('pre, code').forEach(x => x.remove());
                return c.textContent; }).join('\\n');
            const left = (txt.match(/\\$[^$\\n]{1,80}\\$/g) || []).length;
            return [done, err, left, !!window.__mj];""")

    def page(self, rel: str):
        drv, url = self.drv, self.base + rel
        drv.get(url)
        t = time.time()
        while drv.execute_script('return document.readyState') != 'complete' and time.time() - t < 20: time.sleep(0.05)
        mj = self.wait_mathjax()
        if mj is not None:
            done, err, left, finished = mj
            self.ok(finished, f'{rel}: MathJax did not finish')
            self.ok(err == 0, f'{rel}: {err} MathJax error(s)')
            self.ok(left == 0, f'{rel}: {left} $...$ formula(s) left untypeset')
        # every image drawn
        broken = drv.execute_script("""return Array.from(document.images)
            .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.currentSrc || i.src).slice(0, 120));""")
        self.ok(not broken, f'{rel}: broken image(s): {broken}')
        # the figures the book promises are on their pages (drawn, not just linked)
        drawn = drv.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 100).length;")
        want = FIGURES.get(rel, 0)
        self.ok(drawn >= want, f'{rel}: {drawn} figure(s) drawn, expected at least {want}')
        # every internal href/src resolves (the file exists; a #fragment names an element there)
        refs = drv.execute_script("""return Array.from(document.querySelectorAll('[href],[src]'))
            .map(e => [e.tagName, e.href || e.src || '']).filter(r => typeof r[1] === 'string');""")
        nint = 0
        for tag, ref in refs:
            u = urlparse(ref)
            if u.scheme not in ('http', 'https') or u.hostname != '127.0.0.1': continue
            nint += 1
            path, frag = urldefrag(ref)
            p = urlparse(path).path
            if not self.ok(p.startswith(self.prefix), f'{rel}: <{tag.lower()}> points outside the site: {p}'): continue
            p = p[len(self.prefix):] or 'index.html'
            ids = self.ids_of(p)
            if not self.ok(ids is not None, f'{rel}: <{tag.lower()}> points to a missing file: {p}'): continue
            if frag and p.endswith('.html'):
                self.ok(unquote(frag) in ids, f'{rel}: <{tag.lower()}> points to #{frag}, not an id in {p}')
        self.network(rel); self.console(rel)
        return nint

    def nav_complete(self):
        "The site has a page for every notebook in nbs/ (a --keep-going build that skipped some fails here)."
        import configparser
        cp = configparser.ConfigParser(delimiters=['=']); cp.read(ROOT / 'settings.ini')
        nbs = ROOT / cp['DEFAULT'].get('nbs_path', 'nbs')
        want = [p for p in nbs.rglob('*.ipynb') if not any(q.startswith(('_', '.')) for q in p.relative_to(nbs).parts)]
        self.drv.get(self.base + 'index.html')
        nav = self.drv.execute_script("""return Array.from(document.querySelectorAll('.md-nav--primary a.md-nav__link[href]'))
            .map(a => a.getAttribute('href')).filter(h => h.endsWith('.html'));""")
        self.ok(len(set(nav)) == len(want), f'the nav lists {len(set(nav))} pages but nbs/ has {len(want)} notebooks')
        print(f'  nav: {len(set(nav))} pages for {len(want)} notebooks')

    def search(self, query: str, expect: str):
        "Type into Material's search box; results must appear and include `expect`."
        from selenium.webdriver.common.by import By
        drv = self.drv
        drv.get(self.base + 'index.html')
        label = drv.find_element(By.CSS_SELECTOR, 'label.md-header__button[for="__search"]')
        if label.is_displayed(): label.click()  # narrow screens: the search box opens from a button
        box = drv.find_element(By.CSS_SELECTOR, 'input.md-search__input')
        box.click(); box.clear(); box.send_keys(query)
        t, hits = time.time(), []
        while time.time() - t < 15:
            hits = drv.execute_script("""return Array.from(document.querySelectorAll('.md-search-result__item a'))
                                         .map(a => a.getAttribute('href'));""")
            if hits: break
            time.sleep(0.2)
        meta = drv.execute_script("const m = document.querySelector('.md-search-result__meta'); return m ? m.innerText : ''")
        self.ok(bool(hits), f'search "{query}": no results ({meta!r})')
        if hits: self.ok(any(urlparse(h).path.endswith('/' + expect) for h in hits), f'search "{query}": {expect} not among {hits[:5]}')
        print(f'  search "{query}": {len(hits)} result link(s), "{meta}"; first: {hits[:3]}')
        self.network('search'); self.console('search')

# pages whose figures the reader needs: at least this many drawn images (width > 100 px)
FIGURES = {'hard_attention.html': 1,   # Eq. 5 on pixels: regions cut out of a pedestrian
           'harmonious.html': 1,       # the HA module, Fig. 3a-d
           'model.html': 2,            # the network, Fig. 2, and Eq. 6's cross-attention panel
           'first_training.html': 1,   # the loss curve of the first training
           'visualize.html': 1,        # Fig. 6 attention pictures
           'realdata.html': 3}         # HA-CNN on real pedestrians


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--site', default=str(ROOT / 'docs'))
    ap.add_argument('--screenshot', default=str(Path(tempfile.gettempdir()) / 'hacnn_nbdev-docs-test' / 'home.png'))
    a = ap.parse_args()
    site = Path(a.site)
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html') if 'assets' not in p.parts)
    if 'index.html' not in pages: sys.exit(f'no index.html in {site}: run `make docs` first')
    t0 = time.time()
    srv, base = serve(site, base_path())
    profile = tempfile.mkdtemp(prefix='hacnn-chromium-')
    drv = None
    try:
        drv = start_browser(profile)
        print(f'{drv.capabilities.get("browserName")} {drv.capabilities.get("browserVersion")} serving {site} at {base}')
        c = Checker(drv, base, site)
        drv.get('about:blank'); drv.get_log('performance'); drv.get_log('browser')  # the browser's own start-up
        for rel in ['index.html'] + [p for p in pages if p != 'index.html']:
            n = c.page(rel)
            print(f'  loaded {rel}: {n} internal links/resources checked')
        c.nav_complete()
        for q, expect in SEARCHES: c.search(q, expect)
        drv.get(base + 'index.html'); time.sleep(0.5)
        shot = Path(a.screenshot); shot.parent.mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(shot))
        print(f'  screenshot of the home page: {shot}')
    finally:
        if drv: drv.quit()
        srv.shutdown(); srv.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    print(f'docs-test: {len(pages)} pages, {c.checks} checks in {time.time() - t0:.1f} s')
    print(f'{c.checks - len(c.failures)} passed, {len(c.failures)} failed')
    sys.exit(1 if c.failures else 0)

if __name__ == '__main__': main()
