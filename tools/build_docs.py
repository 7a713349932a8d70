#!/usr/bin/env python3
"""Build the documentation site in docs/ from nbs/, offline and without Quarto.

    python tools/build_docs.py [--keep-going] [--workers N] [--out docs]

Route (see nbs/index.ipynb, "The documentation site"):
1. nbdev's own notebook processing, one notebook per worker process, exactly what `nbdev_proc_nbs`
   does per notebook (nbdev.serve_drv with nbdev.processors.FilterDefaults) minus its Quarto install,
   `_quarto.yml` and sidebar: front matter from the title cell, import/export/show_doc cells executed
   so the API is rendered with signatures, docments and source links, backticked names linked.
   One difference: cells flagged with a `tst_flags` flag (`#| slow`, `#| gpu`) are not executed
   (`#| eval: false` is added to a copy): nbdev would run them when they import anything.
   Output: <build>/nbs/<notebook>.ipynb, in a temporary build folder outside the repository (not
   nbdev's _proc/, which nbdev_docs and Quarto own where they exist); --keep-build DIR keeps it.
2. Quarto-only bits are translated for MkDocs (`translate_nb`): the front-matter cell becomes the page
   title and summary, `output: asis` cells (show_doc) become markdown, `#| exports` source becomes an
   open "Exported source" block, `#|` options are applied and dropped, callouts become admonitions,
   Pandoc `{...}` attributes become HTML, links to the hosted docs become relative.
3. MkDocs Material + mkdocs-jupyter build the site (a page per notebook, index first, then the
   notebooks in path order); MathJax 2.7 is vendored from the `jupyter-server-mathjax` package so no
   page asks anything of another host; the result replaces docs/ (plus .nojekyll for GitHub Pages).
The README is refreshed from index.ipynb on the way (tools/make_readme.py).
"""
from __future__ import annotations
import argparse, concurrent.futures as cf, copy, hashlib, html, json, multiprocessing as mp, os, re, shutil
import subprocess, sys, tempfile, time
from pathlib import Path

import yaml

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
MATHJAX_CONFIG = 'TeX-AMS-MML_HTMLorMML-full,Safe,hacnn'  # `hacnn` = config/hacnn.js written below

# ---------------------------------------------------------------- step 1: nbdev processing
def _mixed_hint(msg: str) -> str:
    "A hint when the cell nbdev could not run mixes imports with other code (nbdev runs all of such a cell)."
    import ast
    src = msg.split(':\n', 1)[-1]
    try: body = ast.parse(src).body
    except SyntaxError: return ''
    has = lambda *t: any(isinstance(n, t) for b in body for n in ast.walk(b))  # nbdev's own test (_do_eval)
    if has(ast.Import, ast.ImportFrom) and has(ast.Expr, ast.Assign, ast.If, ast.With, ast.For):
        return ('\n  hint: this cell mixes imports with other code: nbdev\'s docs processing runs every cell that '
                'imports (and every export/show_doc cell) but no other cell, so the rest fails. Put the imports '
                'in a cell of their own (same rule breaks `nbdev_docs` where Quarto exists).')
    return ''

def skip_flagged(nb: dict, flags: set[str]) -> dict:
    """Cells flagged with a test flag (`#| slow`, `#| gpu`) get `#| eval: false`: nbdev's docs processing runs every
    cell that imports something, and such a cell may train for minutes. Their saved outputs are shown as they are."""
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        opts, _ = split_directives(''.join(c['source']) if isinstance(c['source'], list) else c['source'])
        if flags & set(opts) and 'eval' not in opts:
            src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
            c['source'] = '#| eval: false\n' + src
    return nb

def _proc_one(src: Path, dst: Path) -> float:
    "nbdev's per-notebook docs processing (what nbdev_proc_nbs runs in each worker); returns the seconds it took."
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    t = time.time(); nbdev.serve_drv.main((src, dst, FilterDefaults))
    return time.time() - t

def nbdev_process(nbs: list[Path], build: Path, workers: int, keep_going: bool, flags: set[str]) -> dict[Path, Path]:
    "Process `nbs` (copies in build/src with flagged cells not evaluated) into build/nbs in parallel; {notebook: processed}."
    src, proc = build / 'src', build / 'nbs'
    for d in (src, proc): d.mkdir(parents=True)
    os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ.setdefault('MKL_NUM_THREADS', '1')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    # the workers document this checkout: its package first on the path (whatever pip installed where)
    # (spawned workers copy this process's sys.path; the kernels they start read PYTHONPATH)
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
    done, failed, slow = {}, {}, []
    if str(TOOLS) not in sys.path: sys.path.insert(0, str(TOOLS))
    import build_docs  # this file as a module the spawned workers can import (as nbdev_proc_nbs, one process each)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context('spawn')) as ex:
        futs = {}
        for nb in nbs:
            rel = nb.relative_to(NBS)
            copy_, dst = src / rel, proc / rel
            for d in (copy_, dst): d.parent.mkdir(parents=True, exist_ok=True)
            copy_.write_text(json.dumps(skip_flagged(json.loads(nb.read_text(encoding='utf-8')), flags), indent=1), encoding='utf-8')
            futs[ex.submit(build_docs._proc_one, copy_, dst)] = (nb, dst)
        for f in cf.as_completed(futs):
            nb, dst = futs[f]
            try:
                secs = f.result(); done[nb] = dst
                if secs > 20: slow.append(f'{nb.relative_to(NBS)} {secs:.0f} s')
            except Exception as e:  # name the notebook and the cell nbdev could not run
                errs = re.findall(r'^(\w+(?:Error|Exception|Interrupt|Exit): .*)$', str(e.__cause__ or ''), re.M)
                failed[nb] = f'{e}'.rstrip() + (f'\n  -> {errs[0]}' if errs else '') + _mixed_hint(str(e))
    if slow: print('note: slow docs processing (cells that import run in full): ' + ', '.join(slow), file=sys.stderr)
    for nb, why in failed.items():
        print(f'ERROR: nbdev could not process {nb.relative_to(ROOT)}:\n  {why}', file=sys.stderr)
    if failed and not keep_going:
        sys.exit(f'docs build stopped: {len(failed)} notebook(s) failed (use --keep-going to build the rest)')
    return done

# ---------------------------------------------------------------- step 2: Quarto -> MkDocs
_re_dir = re.compile(r'^\s*#\|\s?(.*?)\s*$')

def split_directives(src: str) -> tuple[dict, str]:
    "Leading `#| key: value` / `#| flag` lines of a code cell -> (options, remaining source)."
    lines, opts = src.splitlines(), {}
    while lines and _re_dir.match(lines[0]):
        body = _re_dir.match(lines[0]).group(1)
        k, sep, v = body.partition(':')
        if sep and not k.strip().count(' '): opts[k.strip()] = v.strip().strip('"\'')
        elif body: opts[body.split()[0]] = ' '.join(body.split()[1:]) or True
        lines.pop(0)
    return opts, '\n'.join(lines).strip('\n')

def _false(v) -> bool: return str(v).lower() in ('false', 'no', '0')

def _attrs(spec: str) -> str:
    "Pandoc attributes `{#id .cls key=val}` -> HTML attribute string."
    out, classes = [], []
    for tok in re.findall(r'(?:[^\s"]+="[^"]*")|(?:[^\s"]+=\S+)|\S+', spec):
        if tok.startswith('#'): out.append(f'id="{html.escape(tok[1:])}"')
        elif tok.startswith('.'): classes.append(tok[1:])
        elif '=' in tok:
            k, v = tok.split('=', 1); v = v.strip('"')
            if k in ('width', 'height') and v.endswith('%'): out.append(f'style="{k}:{v}"')
            else: out.append(f'{k}="{html.escape(v)}"')
    if classes: out.append(f'class="{" ".join(classes)}"')
    return ' '.join(out)

_re_img_attr = re.compile(r'!\[([^\]]*)\]\(([^)\s]+)\)\{([^}]*)\}')
_re_link_attr = re.compile(r'(?<!!)\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}')
_re_head_attr = re.compile(r'^(#{1,6}\s+.*?)\s*\{([^}]*)\}\s*$', re.M)
_re_callout = re.compile(r'^:::+\s*\{\s*\.callout-(\w+)([^}]*)\}\s*\n(.*?)^:::+\s*$', re.M | re.S)
_re_fence_div = re.compile(r'^:::+.*$\n?', re.M)

def _callout(m: re.Match) -> str:
    kind, rest, body = m.group(1), m.group(2), m.group(3).strip('\n')
    title = re.search(r'title="([^"]*)"', rest)
    head = re.match(r'^#{1,6}\s+(.*)\n', body)  # Quarto also takes a leading heading as the title
    if head: body = body[head.end():]
    t = title.group(1) if title else head.group(1) if head else kind.capitalize()
    kind = {'important': 'danger', 'caution': 'warning'}.get(kind, kind)
    return (f'<div class="admonition {kind}">\n<p class="admonition-title">{html.escape(t)}</p>\n\n'
            f'{body}\n\n</div>\n')

class Linker:
    "Rewrites links to the hosted docs and to notebooks into links between the site's pages."
    def __init__(self, host: str, pages: dict[str, str]):
        self.host = host.rstrip('/') + '/'
        self.pages = pages  # notebook path relative to nbs/ -> page file name
    def __call__(self, text: str) -> str:
        text = text.replace(self.host, '')
        def nb_link(m):
            target, frag = m.group(2), m.group(3) or ''
            page = self.pages.get(target.lstrip('./'))
            return f'{m.group(1)}{page}{frag}' if page else m.group(0)
        return re.sub(r'(\]\(|href=")([^)"#\s]+\.ipynb)(#[^)"\s]*)?', nb_link, text)

def translate_md(text: str, link: Linker) -> str:
    "Quarto/Pandoc markdown -> markdown that nbconvert's renderer (CommonMark + raw HTML) shows the same."
    text = _re_callout.sub(_callout, text)
    text = _re_fence_div.sub('', text)  # other fenced divs: keep the content, drop the fences
    text = _re_img_attr.sub(lambda m: f'<img src="{m.group(2)}" alt="{html.escape(m.group(1))}" {_attrs(m.group(3))}>', text)
    text = _re_link_attr.sub(lambda m: f'<a href="{m.group(2)}" {_attrs(m.group(3))}>{m.group(1)}</a>', text)
    def head(m):
        ids = re.findall(r'#([\w.:-]+)', m.group(2))
        anchor = f'<div id="{ids[0]}"></div>\n\n' if ids else ''
        return anchor + m.group(1)
    text = _re_head_attr.sub(head, text)
    return link(text)

def _slug(s: str) -> str:
    "The id mkdocs-jupyter gives a heading (mkdocs_jupyter.utils.slugify)."
    import unicodedata
    s = unicodedata.normalize('NFKD', s).encode('ascii', 'ignore').decode('ascii')
    return re.sub(r'[-\s]+', '-', re.sub(r'[^\w\s-]', '', s).strip().lower())

def showdoc_anchors(md: str) -> str:
    "Before each show_doc heading, an anchor with nbdev's id (`name.lower()`, dots kept) if it differs."
    def add(m):
        name = re.sub(r'<[^>]+>|\\', '', m.group(2)).strip()
        nbdev_id = name.lower()
        if nbdev_id == _slug(name) or not re.fullmatch(r'[\w.]+', nbdev_id): return m.group(0)
        return f'<div id="{nbdev_id}" class="nbdev-anchor"></div>\n\n{m.group(0)}'
    return re.sub(r'^(#{2,5})\s+(\S+)\s*$', add, md, flags=re.M)

def unlink_code(md: str) -> str:
    "nbdev links names in docments comments even inside the signature's code block: keep the name, drop the link there."
    return re.sub(r'^```.*?^```', lambda m: re.sub(r'\[([^\]\n]+)\]\([^)\s]+\)', r'\1', m.group(0)), md, flags=re.M | re.S)

def _text(out: dict, mime: str) -> str | None:
    v = out.get('data', {}).get(mime) if 'data' in out else None
    if v is None and mime == 'text/plain' and out.get('output_type') == 'stream': v = out.get('text')
    return ''.join(v) if isinstance(v, list) else v

def md_cell(src: str) -> dict: return {'cell_type': 'markdown', 'metadata': {}, 'source': src}

def front_matter(cell: dict) -> dict | None:
    src = ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
    m = re.match(r'^\s*---\s*\n(.*?)\n---\s*$', src, re.S)
    if cell['cell_type'] != 'raw' or not m: return None
    try: return yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError: return None

def translate_nb(nb: dict, link: Linker) -> tuple[dict, dict]:
    "A processed notebook (nbdev _proc) -> a notebook mkdocs-jupyter renders as Quarto would; and its front matter."
    nb, cells, fm = copy.deepcopy(nb), [], {}
    for cell in nb['cells']:
        cell['source'] = ''.join(cell['source']) if isinstance(cell.get('source'), list) else cell.get('source', '')
        cell.get('metadata', {}).pop('has_sd', None); cell.pop('has_sd', None)
        t = cell['cell_type']
        if t == 'raw':
            f = front_matter(cell)
            if f is not None and not fm:
                fm = f
                head = f"# {f.get('title', '')}\n\n" if f.get('title') else ''
                desc = f"> {f['description']}\n" if f.get('description') else ''
                if head or desc: cells.append(md_cell(translate_md(head + desc, link)))
            elif cell.get('metadata', {}).get('format') in ('text/html', 'text/markdown', 'html', 'markdown') or \
                 cell.get('metadata', {}).get('raw_mimetype') in ('text/html', 'text/markdown'):
                cells.append(cell)
            continue
        if t == 'markdown':
            if not cell['source'].strip() or 'THIS FILE WAS AUTOGENERATED' in cell['source']: continue
            cell['source'] = translate_md(cell['source'], link)
            cells.append(cell); continue
        # code cell
        opts, src = split_directives(cell['source'])
        cell['source'] = src
        outs = cell.get('outputs', [])
        if _false(opts.get('include', True)): continue
        if _false(opts.get('output', True)): outs = cell['outputs'] = []
        if opts.get('output') == 'asis':  # show_doc and friends: the output *is* the document
            md = '\n\n'.join(x for o in outs for x in [_text(o, 'text/markdown') or _text(o, 'text/plain')] if x)
            if md.strip(): cells.append(md_cell(showdoc_anchors(translate_md(unlink_code(md), link))))
            continue
        fold = opts.get('code-fold')
        if fold and src:  # `#| exports`: the exported source, in an open (or closed) box
            summary = opts.get('code-summary', 'Code')
            cells.append(md_cell(f'<details class="nbdev-code-fold"{" open" if fold == "show" else ""}>\n'
                                 f'<summary>{html.escape(summary)}</summary>\n\n```python\n{src}\n```\n\n</details>\n'))
            if not outs: continue
            cell['source'] = ''
        echo = not _false(opts.get('echo', True)) and bool(cell['source'].strip())
        if not echo and not outs: continue
        for o in outs:  # links in rendered markdown outputs
            if 'data' in o and 'text/markdown' in o['data']:
                o['data']['text/markdown'] = translate_md(_text(o, 'text/markdown'), link)
        tags = cell.setdefault('metadata', {}).setdefault('tags', [])
        if not echo: tags.append('hide-input')
        cell['metadata'] = {'tags': tags} if tags else {}
        cells.append(cell)
    for i, c in enumerate(cells):  # ids from content and place (nbdev gives its show_doc cells random ids)
        c['id'] = hashlib.sha256(f'{i}:{c["source"]}'.encode()).hexdigest()[:8]
    nb['cells'] = cells
    return nb, fm

# ---------------------------------------------------------------- step 3: MkDocs
MATHJAX_LOCAL_CONFIG = """// hacnn_nbdev: MathJax's HTML-CSS output with the STIX-Web fonts of this folder; nothing from another host.
// (NativeMML, which Chromium would otherwise get, wants TeX fonts this package does not ship; and the
// font-detection face `MathJax_Blank` points at about:blank, which Chromium reports as a CORS error.)
// Checked in Chromium by tools/test_docs.py: no request fails, no console error, all $...$ typeset.
MathJax.Hub.Config({
  MMLorHTML: {prefer: "HTML"},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               linebreaks: {automatic: true},
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  // the hidden assistive MathML copy names TeX web fonts (not shipped): let it use the system's fonts
  NativeMML: {styles: {
    "@font-face /*1*/": {"font-family": "MathJax_Caligraphic-WEB", src: "local('MathJax_Caligraphic')"},
    "@font-face /*2*/": {"font-family": "MathJax_Caligraphic-WEB", "font-weight": "bold", src: "local('MathJax_Caligraphic')"},
    "@font-face /*3*/": {"font-family": "MathJax_AMS-WEB", src: "local('MathJax_AMS')"},
    "@font-face /*4*/": {"font-family": "MathJax_Script-WEB", src: "local('MathJax_Script')"},
    "@font-face /*5*/": {"font-family": "MathJax_Fraktur-WEB", src: "local('MathJax_Fraktur')"},
    "@font-face /*6*/": {"font-family": "MathJax_Fraktur-WEB", "font-weight": "bold", src: "local('MathJax_Fraktur')"}}},
  menuSettings: {zoom: "None"}
});
MathJax.Ajax.loadComplete("[MathJax]/config/hacnn.js");
"""

def vendor_mathjax(dst: Path):
    "Copy MathJax 2.7 from the jupyter-server-mathjax package (a PyPI package; no CDN)."
    import jupyter_server_mathjax
    src = Path(jupyter_server_mathjax.__file__).parent / 'static'
    # all of it but the SVG output's fonts (its jax is not in the package; HTML-CSS is used)
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in ('__pycache__',) or n.endswith('.py')
                                                       or (n == 'SVG' and Path(d).name == 'output')])
    (dst / 'config' / 'hacnn.js').write_text(MATHJAX_LOCAL_CONFIG)

def mkdocs_config(cfg, nav: list, docs_dir: Path, site_dir: Path) -> dict:
    "mkdocs.yml at the repo root (theme, plugins) + what comes from settings.ini and nbs/."
    base = yaml.safe_load((ROOT / 'mkdocs.yml').read_text())
    host = cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')
    base.update(site_name=cfg.title, site_description=cfg.description, site_author=cfg.author,
                site_url=host.rstrip('/') + '/', copyright=f'© {cfg.copyright}',
                docs_dir=str(docs_dir), site_dir=str(site_dir), nav=nav)
    for p in base.get('plugins', []):
        if isinstance(p, dict) and 'mkdocs-jupyter' in p:
            p['mkdocs-jupyter']['custom_mathjax_url'] = f'assets/mathjax/MathJax.js?config={MATHJAX_CONFIG}'
    base['hooks'] = [str(TOOLS / 'mkdocs_hooks.py')]
    base.setdefault('extra', {})['social'] = [{'icon': 'fontawesome/brands/github', 'link': cfg.git_url,
                                               'name': 'source on GitHub'}]
    return base

# ---------------------------------------------------------------- step 4: check and finish the HTML
_re_ext_res = re.compile(r'<(?:script|img|iframe|source|link)\b[^>]*?\b(?:src|href)="(?:https?:)?//[^"]*"[^>]*>', re.I)
_re_mermaid = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>', re.S)

def finish_html(site: Path):
    "Drop nbconvert's mermaid loader (it names a CDN; we draw no diagrams); check that no page loads anything from another host."
    bad = []
    for f in sorted(site.rglob('*.html')):
        s = f.read_text(encoding='utf-8')
        s = _re_mermaid.sub('', s)
        depth = '../' * (len(f.relative_to(site).parts) - 1)
        def shared(m):  # mkdocs-jupyter inlines JupyterLab's 570 kB stylesheet in every page: one shared file
            css = m.group(1)
            if len(css) < 20_000: return m.group(0)
            name = f'assets/stylesheets/nb-{hashlib.sha256(css.encode()).hexdigest()[:10]}.css'
            (site / name).write_text(css, encoding='utf-8')
            return f'<link rel="stylesheet" href="{depth}{name}">'
        s = re.sub(r'<style type="text/css">(.*?)</style>', shared, s, flags=re.S)
        for m in _re_ext_res.finditer(s):
            if re.match(r'<link\b', m.group(0)) and re.search(r'rel="(canonical|alternate)"', m.group(0)): continue
            bad.append(f'{f.relative_to(site)}: {m.group(0)[:120]}')
        f.write_text(s, encoding='utf-8')
    if bad: sys.exit('pages would load resources from another host:\n  ' + '\n  '.join(bad))

def _source_date_epoch() -> str:
    "Last commit time of nbs/ (sitemap dates then change only when the notebooks do)."
    try: return subprocess.check_output(['git', 'log', '-1', '--format=%ct', '--', 'nbs'], cwd=ROOT, text=True).strip() or '0'
    except Exception: return '0'

def main():
    global NBS
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=None, help='site folder (default: doc_path of settings.ini)')
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument('--keep-going', action='store_true', help='build the pages of the notebooks that work')
    ap.add_argument('--no-readme', action='store_true', help='do not refresh README.md')
    ap.add_argument('--keep-build', default=None, help='build in this folder and keep it (processed notebooks, mkdocs.yml, site)')
    a = ap.parse_args()
    t0 = time.time()
    os.chdir(ROOT)
    from nbdev.config import get_config
    cfg = get_config()
    NBS = Path(cfg.nbs_path)
    out = Path(a.out) if a.out else Path(cfg.doc_path)
    if a.keep_build:
        build = Path(a.keep_build).resolve(); shutil.rmtree(build, ignore_errors=True); build.mkdir(parents=True)
    else: build = Path(tempfile.mkdtemp(prefix='hacnn_nbdev-docs-'))
    try: build_site(a, cfg, build, out, t0)
    finally:
        if not a.keep_build: shutil.rmtree(build, ignore_errors=True)

def build_site(a, cfg, build: Path, out: Path, t0: float):
    "Steps 1-4 in `build`; then `out` is replaced by the site and README.md refreshed."
    from nbdev.doclinks import nbglob
    nbs = sorted(nbglob(NBS, func=Path), key=lambda p: (p.relative_to(NBS) != Path('index.ipynb'), str(p.relative_to(NBS))))
    done = nbdev_process(nbs, build, a.workers, a.keep_going, set(cfg.get('tst_flags', '').split()))
    t1 = time.time()

    stage, site = build / 'mkdocs', build / 'site'
    stage.mkdir(parents=True)
    procd, pages = {}, {}
    for nb in nbs:
        if nb not in done: continue
        j = json.loads(done[nb].read_text(encoding='utf-8'))
        fm = next((f for c in j['cells'] for f in [front_matter(dict(c))] if f is not None), {})
        rel = nb.relative_to(NBS).as_posix()
        page = Path(fm.get('output-file') or re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower())).with_suffix('.ipynb').name
        if page in pages.values(): sys.exit(f'two notebooks would make the page {page}: {rel} and another')
        procd[rel], pages[rel] = j, page
    link = Linker(cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/'), {k: Path(v).with_suffix('.html').name for k, v in pages.items()})
    nav = []
    for rel, j in procd.items():
        tnb, fm = translate_nb(j, link)
        (stage / pages[rel]).write_text(json.dumps(tnb, indent=1, ensure_ascii=False), encoding='utf-8')
        title = 'Home' if rel == 'index.ipynb' else str(fm.get('title') or Path(rel).stem)
        nav.append({title: pages[rel]})
    (stage / 'assets').mkdir()
    shutil.copy(TOOLS / 'docs_extra.css', stage / 'assets' / 'hacnn.css')
    conf = mkdocs_config(cfg, nav, stage, site)
    (build / 'mkdocs.yml').write_text(yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    env = dict(os.environ, SOURCE_DATE_EPOCH=_source_date_epoch(), NO_MKDOCS_2_WARNING='1')
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '-q', '--strict', '-f', str(build / 'mkdocs.yml')], env=env)
    if r.returncode: sys.exit(f'mkdocs build failed ({r.returncode})')
    finish_html(site)
    vendor_mathjax(site / 'assets' / 'mathjax')
    (site / '.nojekyll').write_text('')
    t2 = time.time()

    if out.exists():  # replace the folder's contents (it is committed; removed pages must go)
        for p in out.iterdir(): shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.copytree(site, out, dirs_exist_ok=True)
    if not a.no_readme:
        subprocess.run([sys.executable, str(TOOLS / 'make_readme.py')], check=True)
    print(f'docs: {len(nav)} pages in {out}/ (nbdev processing {t1 - t0:.1f} s, mkdocs {t2 - t1:.1f} s, '
          f'total {time.time() - t0:.1f} s)' + (f'; SKIPPED (broken): {", ".join(str(n.relative_to(NBS)) for n in nbs if n not in done)}' if len(done) < len(nbs) else ''))

NBS = ROOT / 'nbs'
if __name__ == '__main__': main()
