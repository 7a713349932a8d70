"""The package's import graph, from the exported modules: `python tools/imports.py` (add --dot for Graphviz).

Each line is `module -> the hacnn_nbdev modules it imports`; the rules of the design are checked at the end:
the data, metrics and synthetic rooms (and the utilities below them) know nothing of the model.
"""
import ast, sys
from pathlib import Path

PKG = Path(sys.argv[sys.argv.index('--pkg') + 1]) if '--pkg' in sys.argv else Path(__file__).resolve().parent.parent / 'hacnn_nbdev'
MODEL_FREE = ('core', 'cli', 'data', 'loaders', 'metrics', 'ranking', 'synthetic', 'render', 'baseline')
MODEL_SIDE = {'inception', 'soft_attention', 'hard_attention', 'harmonious', 'model', 'checkpoint', 'train',
              'evaluate', 'viz', 'deploy', 'toolbox', 'demo', 'experiments', 'realdata', 'torchreid_compat', 'runtime'}

def graph() -> dict:
    "module -> sorted list of the package modules it imports (at any depth of its code)."
    g = {}
    for f in sorted(PKG.glob('*.py')):
        if f.stem in ('__init__', '_modidx'): continue
        deps = set()
        try: tree = ast.parse(f.read_text())
        except SyntaxError as e: sys.exit(f"{f}: not valid Python ({e}); run nbdev_export first")
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                if n.level == 1 and n.module: deps.add(n.module.split('.')[0])
                elif n.level == 1: deps.update(a.name for a in n.names)
                elif n.module and n.module.startswith('hacnn_nbdev.'): deps.add(n.module.split('.')[1])
            elif isinstance(n, ast.Import):
                deps.update(a.name.split('.')[1] for a in n.names if a.name.startswith('hacnn_nbdev.'))
        g[f.stem] = sorted(deps - {f.stem})
    return g

def closure(g:dict, m:str) -> set:
    seen, todo = set(), [m]
    while todo:
        for d in g.get(todo.pop(), []):
            if d not in seen: seen.add(d); todo.append(d)
    return seen

def problems(g:dict) -> list:
    "Breaks of the design's rules: a model-free room that reaches the model side, or a cycle."
    out = [f"{m} reaches {sorted(closure(g, m) & MODEL_SIDE)}" for m in MODEL_FREE
           if m in g and closure(g, m) & MODEL_SIDE]
    return out + [f"{m} imports itself through {sorted(closure(g, m))}" for m in g if m in closure(g, m)]

if __name__ == '__main__':
    g = graph()
    if '--dot' in sys.argv:
        print('digraph hacnn_nbdev {\n  rankdir=LR;')
        for m, ds in g.items(): print(''.join(f'  "{m}" -> "{d}";\n' for d in ds), end='')
        print('}')
    else:
        w = max(map(len, g))
        for m, ds in g.items(): print(f"{m:{w}} -> {', '.join(ds) or '(nothing)'}")
        bad = problems(g)
        print('\n' + ('\n'.join('BROKEN: ' + b for b in bad) if bad else 'rules hold: one way, no cycle; data, metrics, synthetic know nothing of the model'))
        sys.exit(1 if bad else 0)
