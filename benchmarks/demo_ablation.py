"""Does attention pay for itself at the CPU demo's scale? The demo's network, recipe (`RECIPES['demo']`)
and two DDP processes against the same run with every attention switched off (Table 5's "No attention":
no soft spatial or channel attention, fixed horizontal stripes instead of learned regions), on
synthetic worlds that differ in the detector's misalignment, over seeds; also longer (`_e24`) and twice
as wide (`_x2`), and with soft attention only or hard attention only (Table 5's SSA+SCA and HRA rows).

A plan of `hacnn_nbdev.experiments` (the one ablation harness, `nbs/12_experiments.ipynb`): each run
is `run_one` on the demo's world (7.5-10 min on a 2-core machine); finished runs are appended to
--results (JSON lines) and skipped when the script runs again, so it can be stopped and started. The
runs made before this script used the harness are read from --legacy (`demo_ablation.json`, never
written): each of its runs counts as finished under the harness's key of the same run.

    .venv/bin/python benchmarks/demo_ablation.py                                     # every run
    .venv/bin/python benchmarks/demo_ablation.py --only jitter2_ha_e24_s0,jitter2_none_e24_s0
    .venv/bin/python benchmarks/demo_ablation.py --tables                            # tables only

Run names: `<world>_<model>[_e<N>][_x<k>]_s<seed>`; `_e<N>` trains N epochs instead of the demo's 16,
`_x<k>` makes every Inception width k times the demo's (e.g. `jitter1.5_none_e24_s0`, `jitter1.5_ha_x2_s0`).
"""
from __future__ import annotations
import argparse, inspect, json, re, time
from dataclasses import asdict
from pathlib import Path
from hacnn_nbdev.experiments import (EXPERIMENT_WORLD, RECORD_FORMAT, Setup, gains_table, read_results, run_key,
                                     run_plan, runs_table, world_kwargs)
from hacnn_nbdev.synthetic import make_world
from hacnn_nbdev.train import RECIPES

OFF = dict(spatial_attention=False, channel_attention=False, hard_attention=False)
MODELS = {'ha': {},                                        # the demo's recipe as it is
          'none': dict(OFF, theta_lr_mult=1.0),            # no attention at all (so no regions' FCs to speed up)
          'ha_theta1': dict(theta_lr_mult=1.0),            # the demo with the regions' FCs at the common rate
          'soft': dict(hard_attention=False, theta_lr_mult=1.0),           # SSA+SCA: soft attention, fixed stripes
          'hard': dict(spatial_attention=False, channel_attention=False)}  # HRA: learned regions (10x lr), no soft
WORLDS = {'default': 1.0, 'jitter1.5': 1.5, 'jitter2': 2.0}  # the demo's world at these detector jitters
RUNS = ([f'default_{m}_s{s}' for m in ('ha', 'none') for s in (0, 1, 2)]
        + [f'jitter2_{m}_s{s}' for m in ('ha', 'none') for s in (0, 1)]
        + ['jitter1.5_ha_s0', 'jitter1.5_none_s0', 'default_ha_theta1_s0', 'default_ha_theta1_s1',
           'jitter2_ha_theta1_s0']
        + [f'jitter1.5_{m}_e24_s{s}' for m in ('ha', 'none') for s in (0, 1, 2)]
        + [f'jitter1.5_{m}_x2_s{s}' for m in ('ha', 'none') for s in (0, 1)]
        + [f'jitter1.5_{m}_x2_s0' for m in ('ha_theta1', 'soft')] + ['jitter1.5_hard_x2_s0', 'jitter1.5_hard_x2_s1'])
SUFFIX = re.compile(r'(_e\d+|_x\d+)+$')
LEGACY_GENERATOR = 'hacnn_nbdev.synthetic/2'  # the world generator of every run in demo_ablation.json


def demo_world() -> dict:
    "`world_kw` that makes `ensure_world` draw the demo's world: make_world's own defaults, not the experiments'."
    defaults = {k: p.default for k, p in inspect.signature(make_world).parameters.items()}
    return {k: defaults[k] for k in EXPERIMENT_WORLD}


def plan_entry(name: str) -> tuple:
    "'jitter1.5_none_e24_s0' -> ('none_e24', 0, Setup of that world and recipe)."
    w, rest = name.split('_', 1)
    label, seed = rest.rsplit('_s', 1)
    model = SUFFIX.sub('', label)
    if w not in WORLDS or model not in MODELS or not seed.isdigit():
        raise SystemExit(f"unknown run {name!r}: expected <world>_<model>[_e<epochs>][_x<width factor>]_s<seed> "
                         f"with world in {list(WORLDS)} and model in {list(MODELS)}")
    recipe = {**RECIPES['demo'], 'threads': 1}
    if e := re.search(r'_e(\d+)', label): recipe['epochs'] = int(e[1])
    if x := re.search(r'_x(\d+)', label):
        recipe['widths'] = ','.join(str(int(v) * int(x[1])) for v in RECIPES['demo']['widths'].split(','))
    setup = Setup(n_ids=500, jitter=WORLDS[w], world_seed=0, world_kw=demo_world(), recipe=recipe, procs=2)
    return label, int(seed), setup


def configs(names) -> dict:
    "label -> TrainConfig fields of its model ('none_e24' -> MODELS['none'])."
    return {plan_entry(n)[0]: MODELS[SUFFIX.sub('', plan_entry(n)[0])] for n in names}


def legacy_records(path: str | Path) -> dict:
    "The runs of demo_ablation.json as the harness's records, by key (their world checked against the setup)."
    p = Path(path)
    if not p.is_file(): return {}
    out = {}
    for name, r in json.loads(p.read_text())['runs'].items():
        label, seed, setup = plan_entry(name)
        want = {**{k: v.default for k, v in inspect.signature(make_world).parameters.items()}, **world_kwargs(setup)}
        got = r['world_params']['params']
        if any(json.dumps(want[k]) != json.dumps(v) for k, v in got.items()):
            raise SystemExit(f"{path}: run {name!r} was made on another world ({got}) than its plan's")
        key = run_key(label, seed, setup, LEGACY_GENERATOR)
        out[key] = dict(format=RECORD_FORMAT, key=key, name=label, seed=seed, overrides=MODELS[SUFFIX.sub('', label)],
                        setup=json.loads(json.dumps(asdict(setup))), generator=LEGACY_GENERATOR,
                        metrics={'joint': {k: r[k] for k in ('rank1', 'mAP', 'mINP')}},
                        untrained={'rank1': r['untrained_rank1']}, seconds=r['seconds'], legacy_name=name)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', default=None, help='comma-separated run names (default: all of RUNS)')
    ap.add_argument('--results', default='benchmarks/results/demo_ablation.jsonl', help='JSON lines of finished runs')
    ap.add_argument('--legacy', default='benchmarks/results/demo_ablation.json', help='runs made before (read only)')
    ap.add_argument('--runs', default='runs/ablation', help='folder of the run folders')
    ap.add_argument('--worlds', default='data/ablation', help='folder of the worlds')
    ap.add_argument('--budget', type=float, default=float('inf'), help='start no new run after this many seconds')
    ap.add_argument('--tables', action='store_true', help='print the tables of the finished runs; run nothing')
    a = ap.parse_args()
    names = a.only.split(',') if a.only else RUNS
    plan, legacy = [plan_entry(n) for n in names], legacy_records(a.legacy)
    todo = [p for p in plan if run_key(*p) not in legacy]
    if not a.tables and todo:
        t0 = time.time()
        print(f"{len(todo)} of {len(plan)} runs to do ({len(plan) - len(todo)} in {a.legacy}); results -> {a.results}")
        run_plan(todo, a.results, a.budget, log=lambda m: print(m, flush=True), worlds_dir=a.worlds,
                 runs_dir=a.runs, configs=configs(names))
        print(f"done in {time.time() - t0:.0f} s")
    done = {**legacy, **read_results(a.results)}
    records = [done.get(run_key(*p)) for p in plan] + [done.get(run_key(*p, LEGACY_GENERATOR)) for p in plan]
    records = list({r['key']: r for r in records if r}.values())
    labels = dict.fromkeys(r['name'] for r in records)
    pairs = {m: 'none' + m[len(SUFFIX.sub('', m)):] for m in labels if SUFFIX.sub('', m) != 'none'}
    print(runs_table(records), gains_table(records, {m: b for m, b in pairs.items() if b in labels}), sep='\n\n')


if __name__ == '__main__': main()
