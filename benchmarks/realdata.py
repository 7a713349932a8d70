"""HA-CNN on real pedestrians, on a CPU: the real-data recipe (`hacnn_nbdev.realdata.REAL_RECIPE`) on
CUHK03-NP (camera pair 1, labelled and detected boxes of the same frames) and on CUHK01, against the
same network with every attention off (Table 5's "No attention"), over seeds; an untrained network and
colour histograms beside them; on CUHK03-NP also the misalignment measured on the frame pairs
(`pair_ranks`) and whether the hard regions follow the person from one box to the other (`region_tracking`).
Each run trains in two DDP processes (about 10 minutes on a 2-core CPU); a run folder that already holds
a finished run is only scored, so the script can be stopped and started again.

    .venv/bin/python benchmarks/realdata.py --json benchmarks/results/realdata.json              # every run
    .venv/bin/python benchmarks/realdata.py --only detected_ha_s0,detected_none_s0 --merge ...   # some runs
    .venv/bin/python benchmarks/realdata.py --collect --json benchmarks/results/realdata.json    # tables only

Run names: `<data>_<model>_s<seed>` with data `labeled`, `detected` (CUHK03-NP camera pair 1) or `cuhk01`
(split = seed) and model `ha`, `none` or `ha1` (HA-CNN with the regions' FCs at the common learning rate). The datasets are read from `--cuhk03np` and `--cuhk01`
(default `data/cuhk03-np`, `data/cuhk01`; see data/README.md).
"""
from __future__ import annotations
import argparse, json, platform, time
from pathlib import Path
from statistics import mean, stdev
import torch
from hacnn_nbdev.checkpoint import load_model
from hacnn_nbdev.data import CUHK01, get_dataset
from hacnn_nbdev.evaluate import evaluate_model
from hacnn_nbdev.realdata import (real_config, run_real, histogram_scores, frame_pairs, pair_ranks, region_tracking,
                                  register_pairs, ha_gains)

DATA = {'labeled': 'cuhk03np-labeled', 'detected': 'cuhk03np-detected', 'cuhk01': 'cuhk01'}
RUNS = [f'{d}_{m}_s{s}' for s in (0, 1, 2) for d in ('detected', 'labeled') for m in ('ha', 'none')] + \
       [f'cuhk01_{m}_s{s}' for s in (0, 1, 2) for m in ('ha', 'none')]
KEYS = ('rank1', 'mAP', 'mINP')
MODELS = {'ha': dict(attention=True), 'none': dict(attention=False),
          'ha1': dict(attention=True, theta_lr_mult=1.0)}  # ha1: the regions' FCs at the common learning rate (a diagnostic)


def parse(name):
    d, m, s = name.rsplit('_', 2)
    if d not in DATA or m not in MODELS or not s.startswith('s'):
        raise SystemExit(f"unknown run {name!r}: expected <data>_<model>_s<seed>, data in {list(DATA)}, model in {list(MODELS)}")
    return d, m, int(s[1:])


def root_of(d, a): return a.cuhk01 if d == 'cuhk01' else a.cuhk03np


def one(name, a):
    d, m, s = parse(name)
    cfg = real_config(DATA[d], root_of(d, a), Path(a.runs) / name, **MODELS[m], seed=s,
                      split=s if d == 'cuhk01' else 0, **({'epochs': a.epochs} if a.epochs else {}))
    t = time.time()
    r = run_real(cfg, procs=a.procs, log=print)
    r['seconds'] = round(time.time() - t, 1)
    model = load_model(Path(cfg.out) / 'last.pt')
    if d == 'cuhk01':  # the same split's people, both images of each camera (multi-shot)
        ms = CUHK01(a.cuhk01, split=s, multi_shot=True)
        r['multi_shot'] = evaluate_model(model, ms, progress=False, max_rank=20).results['SQ'].scores()
    elif s in a.analyses:  # the frame pairs: labelled box as query, detected boxes as gallery
        pairs = frame_pairs(a.cuhk03np)
        pr = pair_ranks(model, pairs); pr.pop('ranks')
        r['pairs'] = pr
        if m != 'none': r['tracking'] = region_tracking(model, pairs, register_pairs(pairs, a.cache))
    r.update(data=d, model=m, seed=s)
    return r


def baselines(a):
    out = {}
    for d in ('labeled', 'detected'):
        out[d] = histogram_scores(get_dataset(DATA[d], a.cuhk03np))
    out['cuhk01'] = [histogram_scores(get_dataset('cuhk01', a.cuhk01, split=s)) for s in (0, 1, 2)]
    out['cuhk01_multi_shot'] = [histogram_scores(CUHK01(a.cuhk01, split=s, multi_shot=True)) for s in (0, 1, 2)]
    return out


def tables(res):
    "Means (± sample std over seeds) per data and model, and HA-CNN minus no attention seed by seed."
    runs = res['runs']; rows, diffs = [], []
    for d in DATA:
        for m in ('ha', 'none'):
            rs = [r for r in runs.values() if r['data'] == d and r['model'] == m]
            if not rs: continue
            row = dict(data=d, model=m, n=len(rs))
            for k in KEYS:
                v = [100 * r[k] for r in rs]; row[k] = round(mean(v), 1); row[k + '_sd'] = round(stdev(v), 1) if len(v) > 1 else None
            row['untrained_rank1'] = round(100 * mean(r['untrained']['rank1'] for r in rs), 1)
            rows.append(row)
        diffs += [dict(data=d, **{k: round(v, 1) if k in KEYS else v for k, v in g.items()}) for g in ha_gains(res, d)]
    return rows, diffs


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--json', default='benchmarks/results/realdata.json', help='results file (default: %(default)s)')
    p.add_argument('--runs', default='runs/realdata', help='run folders (default: %(default)s)')
    p.add_argument('--cuhk03np', default='data/cuhk03-np', help='CUHK03-NP folder with labeled/, detected/, pairs.csv')
    p.add_argument('--cuhk01', default='data/cuhk01', help='CUHK01 folder (campus/ inside, or the images)')
    p.add_argument('--cache', default='runs/realdata/registration.json', help='where the box registrations are kept')
    p.add_argument('--only', default='', help='comma-separated run names (default: all)')
    p.add_argument('--merge', action='store_true', help='keep the runs already in --json')
    p.add_argument('--collect', action='store_true', help='rebuild the tables from --json only')
    p.add_argument('--epochs', type=int, default=0, help="epochs instead of the recipe's (a quick trial; 0: the recipe's)")
    p.add_argument('--analyses', default='0,1,2', help='seeds whose CUHK03-NP models get the frame-pair and region analyses (default: %(default)s)')
    p.add_argument('--rescore', action='store_true', help='with --merge: score runs already in --json again')
    p.add_argument('--procs', type=int, default=2, help='training processes per run (default: %(default)s)')
    a = p.parse_args()
    a.analyses = {int(x) for x in a.analyses.split(',') if x}
    path = Path(a.json)
    res = json.loads(path.read_text()) if (a.merge or a.collect) and path.exists() else {'runs': {}}
    if not a.collect:
        names = a.only.split(',') if a.only else RUNS
        for n in names: parse(n)
        res.setdefault('baselines', baselines(a))
        for n in names:
            if n in res['runs'] and not a.rescore: continue  # kept from --json (--merge)
            res['runs'][n] = one(n, a)
            res['machine'] = dict(cpus=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version())
            res['tables'], res['differences'] = tables(res)
            path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(res, indent=1))
            print(n, {k: round(res['runs'][n][k], 3) for k in KEYS}, f"{res['runs'][n]['seconds']:.0f} s", flush=True)
    res['tables'], res['differences'] = tables(res)
    path.write_text(json.dumps(res, indent=1))
    for r in res['tables']: print(r)
    for r in res['differences']: print(r)


if __name__ == '__main__':
    main()
