"""How dense the exported code is: lines over a limit and statements chained with `;`, per module.

    python tools/density.py            # table for hacnn_nbdev/*.py
    python tools/density.py --check    # exit 1 if any line is over --max or any `;` chains statements
"""
import argparse, io, sys, tokenize
from pathlib import Path

def module_stats(path:Path, limit:int) -> dict:
    "Lines, mean length, lines over `limit`, and `;` tokens (statements joined on one line) of one file."
    text = path.read_text()
    rows = text.splitlines()
    gen = set(range(1))                                   # line 1: the module docstring nbdev writes
    for i, l in enumerate(rows):                          # the `__all__ = [...]` block nbdev writes
        if l.startswith('__all__'):
            j = i
            while not rows[j].rstrip().endswith(']'): j += 1
            gen |= set(range(i, j + 1))
    lines = [l for i, l in enumerate(rows) if i not in gen and l.strip() and not l.lstrip().startswith('#')]
    semis = sum(1 for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.OP and t.string == ';')
    long = [i + 1 for i, l in enumerate(rows) if len(l) > limit and i not in gen]
    return dict(lines=len(lines), mean=sum(map(len, lines)) / max(len(lines), 1), long=long, semis=semis)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--max', type=int, default=100, help='longest line allowed')
    p.add_argument('--check', action='store_true', help='exit 1 when a module breaks the rules')
    p.add_argument('paths', nargs='*', default=sorted(str(p) for p in Path('hacnn_nbdev').glob('*.py') if p.name != '_modidx.py'))
    a = p.parse_args(argv)
    bad, tot = 0, dict(lines=0, chars=0, long=0, semis=0)
    print(f"{'module':28} {'lines':>6} {'mean':>5} {'>' + str(a.max):>5} {';':>4}")
    for f in a.paths:
        s = module_stats(Path(f), a.max)
        bad += len(s['long']) + s['semis']
        for k, v in (("lines", s["lines"]), ("chars", s["mean"] * s["lines"]), ("long", len(s["long"])), ("semis", s["semis"])):
            tot[k] += v
        print(f"{Path(f).name:28} {s['lines']:6} {s['mean']:5.1f} {len(s['long']):5} {s['semis']:4}")
    print(f"{'all':28} {tot['lines']:6} {tot['chars'] / max(tot['lines'], 1):5.1f} {tot['long']:5} {tot['semis']:4}")
    if a.check and bad: sys.exit(1)

if __name__ == '__main__': main()
