"""The design's promises about the code itself: dependencies one way, data/metrics/synthetic free of the
model, one module per notebook, and the exported code's density (lines <= 100, no `;`-chained statements)."""
import importlib.util, json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def test_import_graph_is_one_way():
    imp = _tool('imports')
    g = imp.graph()
    assert imp.problems(g) == []
    assert 'model' not in imp.closure(g, 'data') and 'model' not in imp.closure(g, 'metrics')
    assert 'evaluate' not in imp.closure(g, 'train')          # no sideways import between the two top rooms


def test_one_module_per_notebook():
    owners = {}
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            s = ''.join(c['source'])
            if c['cell_type'] == 'code' and s.startswith('#| default_exp'):
                owners.setdefault(s.split()[2], []).append(nb.name)
    assert all(len(v) == 1 for v in owners.values()), owners
    mods = {p.stem for p in (ROOT / 'hacnn_nbdev').glob('*.py')} - {'__init__', '_modidx'}
    assert mods == set(owners), mods ^ set(owners)


def test_density():
    d = _tool('density')
    for f in sorted((ROOT / 'hacnn_nbdev').glob('*.py')):
        if f.name == '_modidx.py': continue
        s = d.module_stats(f, 100)
        assert not s['long'] and not s['semis'], (f.name, s['long'][:5], s['semis'])
