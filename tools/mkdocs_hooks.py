"""MkDocs hooks for the docs build (named in the mkdocs.yml that tools/build_docs.py writes).

mkdocs-jupyter builds a page's table of contents from a second, markdown rendering of the notebook
in which it deletes every `inline code` span: a heading such as "One call: `plot_attention` and
`attention_grid`" then gets the TOC entry "One call: and" pointing at an id the page does not have.
Here the TOC is read from the page's own HTML instead (the headings nbconvert rendered, with their
ids), so every TOC link lands on its heading and show_doc headings are listed as on nbdev's site.
"""
from __future__ import annotations
import html as _html, re
from mkdocs_jupyter import convert, plugin

_bodies: dict[str, str] = {}
_nb2html = convert.nb2html

def unique_heading_ids(body: str) -> str:
    "A page's heading ids made unique (id, id_1, id_2, ... as Python-Markdown does), anchor links too."
    seen: dict[str, int] = {}
    def uniq(m):
        i = m.group(3); n = seen.get(i, 0); seen[i] = n + 1
        if n == 0: return m.group(0)
        return m.group(0).replace(f'id="{i}"', f'id="{i}_{n}"', 1).replace(f'href="#{i}"', f'href="#{i}_{n}"')
    return re.sub(r'<h([1-6])([^>]*)\bid="([^"]+)".*?</h\1>', uniq, body, flags=re.S)

def _nb2html_keep(nb_path, *args, **kwargs):
    body = unique_heading_ids(_nb2html(nb_path, *args, **kwargs))
    _bodies[str(nb_path)] = body
    return body

_re_h = re.compile(r'<h([1-6])\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)

def _text(h: str) -> str:
    h = re.sub(r'<a class="anchor-link"[^>]*>.*?</a>', '', h, flags=re.S)
    return _html.unescape(re.sub(r'<[^>]+>', '', h)).strip()

def toc_tokens_from_html(nb_path, toc_depth):
    "(toc tokens, title) from the headings of the rendered page; nested by level like Python-Markdown's."
    body = _bodies.get(str(nb_path), '')
    body = re.sub(r'<(pre|script|style)\b.*?</\1>', '', body, flags=re.S)
    root: list = []; stack: list = []
    title = None
    for lvl, hid, inner in _re_h.findall(body):
        lvl = int(lvl)
        name = _text(inner)
        if lvl == 1 and title is None: title = name
        if lvl > toc_depth: continue
        tok = {'level': lvl, 'id': hid, 'name': _html.escape(name), 'children': []}
        while stack and stack[-1]['level'] >= lvl: stack.pop()
        (stack[-1]['children'] if stack else root).append(tok)
        stack.append(tok)
    return root, title

if not (hasattr(convert, 'nb2html') and hasattr(plugin, '_get_nb_toc_tokens')):  # settings.ini pins mkdocs-jupyter<0.27
    raise ImportError('mkdocs_hooks.py: this mkdocs-jupyter lacks convert.nb2html / plugin._get_nb_toc_tokens')
convert.nb2html = _nb2html_keep
plugin._get_nb_toc_tokens = toc_tokens_from_html
