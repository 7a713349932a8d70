"""Does attention pay for itself at the CPU demo's scale? The demo (its network, recipe and two DDP
processes) against the same run with every attention switched off (Table 5's "No attention": no soft
spatial or channel attention, fixed horizontal stripes instead of learned regions), on synthetic worlds
that differ in the detector's misalignment, over seeds; also longer (`_e24`) and twice as wide (`_x2`), and with
soft attention only or hard attention only (Table 5's SSA+SCA and HRA rows). Each run is a full `hacnn_nbdev.demo.demo`
(7.5–10 min on a 2-core machine); a run folder that already holds a finished run is scored, not trained
again, so the script can be stopped and started. Writes every run's rank-1 / mAP / mINP, a table of
the means and a table of each model minus no attention (seed by seed) to `--json`.

    .venv/bin/python benchmarks/demo_ablation.py --json benchmarks/results/demo_ablation.json       # all runs
    .venv/bin/python benchmarks/demo_ablation.py --only default_ha_s0,default_none_s0              # some runs
    .venv/bin/python benchmarks/demo_ablation.py --only jitter2_ha_e24_s0 --merge --json benchmarks/results/demo_ablation.json  # add a run
    .venv/bin/python benchmarks/demo_ablation.py --collect --json benchmarks/results/demo_ablation.json  # tables from finished runs only

A model name may end in `_e<N>` to train N epochs instead of the demo's 16 and in `_x<k>` to make every Inception
width k times the demo's (e.g. `jitter1.5_none_e24_s0`, `jitter1.5_ha_x2_s0`).
"""
from __future__ import annotations
import argparse, json, os, platform, re, time
from pathlib import Path
from statistics import mean
from hacnn_nbdev.demo import DEMO_RECIPE, DEMO_WORLD, demo

OFF = dict(spatial_attention=False, channel_attention=False, hard_attention=False)
WORLDS = {'default': dict(DEMO_WORLD), 'jitter1.5': dict(DEMO_WORLD, jitter=1.5), 'jitter2': dict(DEMO_WORLD, jitter=2.0)}
MODELS = {'ha': {},                              # the demo's recipe as it is
          'none': dict(OFF, theta_lr_mult=1.0),  # no attention at all (and so no regions' FCs to speed up)
          'ha_theta1': dict(theta_lr_mult=1.0),  # the demo with the regions' FCs at the common learning rate
          'soft': dict(hard_attention=False, theta_lr_mult=1.0),          # Table 5's SSA+SCA: soft attention, fixed stripes
          'hard': dict(spatial_attention=False, channel_attention=False)}  # Table 5's HRA: learned regions (10x lr), no soft attention
RUNS = [f'default_{m}_s{s}' for m in ('ha', 'none') for s in (0, 1, 2)] + [f'jitter2_{m}_s{s}' for m in ('ha', 'none') for s in (0, 1)] + \
       ['jitter1.5_ha_s0', 'jitter1.5_none_s0', 'default_ha_theta1_s0', 'default_ha_theta1_s1', 'jitter2_ha_theta1_s0'] + \
       [f'jitter1.5_{m}_e24_s{s}' for m in ('ha', 'none') for s in (0, 1, 2)] + [f'jitter1.5_{m}_x2_s{s}' for m in ('ha', 'none') for s in (0, 1)] + \
       [f'jitter1.5_{m}_x2_s0' for m in ('ha_theta1', 'soft')] + ['jitter1.5_hard_x2_s0', 'jitter1.5_hard_x2_s1']
KEYS = ('rank1', 'mAP', 'mINP')


SUFFIX = re.compile(r'(_e\d+|_x\d+)+$')  # `_e<N>`: N epochs; `_x<k>`: every Inception width times k


def parse(name: str) -> tuple:
    "'jitter2_ha_theta1_s0' -> ('jitter2', 'ha_theta1', 0); a model may end in `_e<N>` and/or `_x<k>` (see `overrides`)"
    w, rest = name.split('_', 1); m, s = rest.rsplit('_s', 1)
    if w not in WORLDS or SUFFIX.sub('', m) not in MODELS:
        raise SystemExit(f'unknown run {name!r}: expected <world>_<model>[_e<epochs>][_x<width factor>]_s<seed> with world in {list(WORLDS)} and model in {list(MODELS)}')
    return w, m, int(s)


def overrides(m: str) -> dict:
    "The TrainConfig overrides of model name `m` ('none_e24_x2' -> MODELS['none'], epochs=24, widths twice the demo's)."
    o = dict(MODELS[SUFFIX.sub('', m)])
    if e := re.search(r'_e(\d+)', m): o['epochs'] = int(e[1])
    if x := re.search(r'_x(\d+)', m): o['widths'] = ','.join(str(int(v) * int(x[1])) for v in DEMO_RECIPE['widths'].split(','))
    return o


def row(w: str, m: str, seed: int, s: dict, seconds: float) -> dict:
    "One run's entry in the results, from the demo's summary `s` (what `demo` returns and metrics.json holds)."
    return dict(world=w, model=m, seed=seed, **{k: s[k] for k in KEYS}, untrained_rank1=s['untrained']['rank1'],
                world_params=s['world'], procs=s['procs'], epochs=s['epochs'], widths=s.get('widths'), seconds=round(seconds, 1))


def means_table(rows: dict) -> str:
    "Markdown: the mean rank-1 / mAP / mINP of each (world, model) over its seeds."
    t = ['| world | model | seeds | rank-1 | mAP | mINP |', '|---|---|---|---|---|---|']
    for w in WORLDS:
        for m in dict.fromkeys(r['model'] for r in rows.values()):
            rs = [r for r in rows.values() if r['world'] == w and r['model'] == m]
            if rs: t.append(f"| {w} | {m} | {','.join(str(r['seed']) for r in rs)} | " + ' | '.join(f'{mean(r[k] for r in rs):.3f}' for k in KEYS) + ' |')
    return '\n'.join(t)


def differences_table(rows: dict) -> str:
    "Markdown: each model minus no attention with the same suffix, in points, seed by seed (same world, recipe and seed) and on average."
    t = ['| world | model | seed | rank-1 | mAP | mINP |', '|---|---|---|---|---|---|']
    for w in WORLDS:
        for m in dict.fromkeys(r['model'] for r in rows.values()):
            base = SUFFIX.sub('', m)
            if base == 'none': continue
            suffix = m[len(base):]; pairs = []
            for r in sorted((r for r in rows.values() if r['world'] == w and r['model'] == m), key=lambda r: r['seed']):
                o = rows.get(f"{w}_none{suffix}_s{r['seed']}")
                if o: pairs.append([100 * (r[k] - o[k]) for k in KEYS]); t.append(f"| {w} | {m} | {r['seed']} | " + ' | '.join(f'{d:+.1f}' for d in pairs[-1]) + ' |')
            if len(pairs) > 1: t.append(f"| {w} | {m} | mean of {len(pairs)} | " + ' | '.join(f'{mean(c):+.1f}' for c in zip(*pairs)) + ' |')
    return '\n'.join(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', default=None, help='comma-separated run names (default: all of RUNS)')
    ap.add_argument('--runs', default='runs/ablation', help='folder of the run folders (default runs/ablation)')
    ap.add_argument('--worlds', default='data/ablation', help='folder of the worlds (default data/ablation)')
    ap.add_argument('--json', default=None, help='write the results here (default: print only)')
    ap.add_argument('--collect', action='store_true', help="read the finished runs' metrics.json instead of running or scoring them (runs not finished are left out)")
    ap.add_argument('--merge', action='store_true', help="keep the runs already in --json that this call does not run (e.g. with --only)")
    a = ap.parse_args()
    names = a.only.split(',') if a.only else RUNS
    rows = json.loads(Path(a.json).read_text())['runs'] if a.merge and a.json and Path(a.json).is_file() else {}
    for name in names:
        w, m, seed = parse(name); tic = time.perf_counter()
        if a.collect:
            if not (f := Path(a.runs) / name / 'metrics.json').is_file(): print(f'{name}: not finished ({f} missing), left out'); continue
            s = json.loads(f.read_text()); rows[name] = row(w, m, seed, s, s['timing']['total']); continue
        s = demo(Path(a.worlds) / w, Path(a.runs) / name, threads=2, seed=seed, world=WORLDS[w], progress=False,
                 log=lambda msg: print(f'  {name}: {msg}', flush=True), **overrides(m))
        if s is None: raise SystemExit(f'{name} was stopped; run again to continue')
        rows[name] = row(w, m, seed, s, time.perf_counter() - tic)
        print(f"{name}: rank-1 {s['rank1']:.3f}  mAP {s['mAP']:.3f}  mINP {s['mINP']:.3f}", flush=True)
    table, diffs = means_table(rows), differences_table(rows)
    print(table, diffs, sep='\n\n')
    if a.json:
        out = dict(what=__doc__.split('\n\n')[0].replace('\n', ' '), recipe=DEMO_RECIPE, models=MODELS, worlds=WORLDS, runs=rows,
                   table=table, differences=diffs, machine=dict(cpus=os.cpu_count(), python=platform.python_version()))
        Path(a.json).write_text(json.dumps(out, indent=1) + '\n'); print('wrote', a.json)


if __name__ == '__main__': main()
