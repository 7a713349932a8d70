#!/usr/bin/env python
"""A rehearsal at the paper's scale: a synthetic world with Market-1501's exact split sizes, the
paper's full network and recipe for one epoch on the CPU, then a full evaluation.

    .venv/bin/python benchmarks/rehearsal.py --scale 0.02              # a small dress rehearsal (~1 min)
    .venv/bin/python benchmarks/rehearsal.py --threads 2               # the full one (see below for time)
    .venv/bin/python benchmarks/rehearsal.py --amp bf16                # the same step in bf16 autocast

The world (`hacnn_nbdev.synthetic`'s people, cameras and renderer, planned by `plan_world`, then
trimmed and topped up here to exact counts) has Market-1501's sizes as torchreid and this project
read it: 751 training identities with 12,936 images; 750 test identities with 3,368 queries (at
most one per identity and camera) and 13,120 gallery images, plus 2,793 distractors (pid 0: people
in no split) — 15,913 gallery images — plus 3,819 junk boxes (pid -1: badly misaligned detections,
which the reader drops, as torchreid does); 6 cameras, 128×64 JPEGs. `--scale s` multiplies every
count by s (at least 2 identities a side).

Phases run as child processes so that each one's peak memory (max RSS) is its own:
  world   plan, render and write the JPEGs (reused when `--root` already holds the same world)
  train   `hacnn_nbdev.train.train` with `recipe('paper')` (Sec. 4: widths 128/256/384, Adam 5e-4,
          batch 32, constant lr, no augmentation, softmax on both branches) for `--epochs` epochs
  eval    `evaluate_model` of the trained network on the full query × gallery split, in fp32 and
          through `optimize_for_inference` (the deployment path; bf16 where the CPU has it)
It reports time per epoch, images/s, peak memory, checkpoint size, evaluation time and memory, and
what 150 epochs would take on this CPU: epochs × 12,936 images / (measured training images/s) plus
one full evaluation (features scale with the number of images, ranking with queries × gallery).
Writes --json (default <out>/rehearsal.json) and prints a table.
"""
import argparse, json, os, resource, shutil, subprocess, sys, time
from pathlib import Path

MARKET = dict(train_ids=751, test_ids=750, train=12936, query=3368, gallery=13120,
              distractors=2793, junk=3819)                  # torchreid's counts of Market-1501
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--scale', type=float, default=1.0, help="fraction of Market-1501's sizes (1: exact)")
ap.add_argument('--root', default=None, help='the world folder (default data/rehearsal_<scale>)')
ap.add_argument('--out', default=None, help='run folder (default runs/rehearsal_<scale>)')
ap.add_argument('--json', default=None, help='results file (default <out>/rehearsal.json)')
ap.add_argument('--epochs', type=int, default=1, help='epochs trained (the paper: 150)')
ap.add_argument('--threads', type=int, default=os.cpu_count(), help='torch threads for train/eval')
ap.add_argument('--render-workers', type=int, default=1, help='processes rendering the world')
ap.add_argument('--amp', default='off', choices=('off', 'bf16', 'auto'), help="training autocast")
ap.add_argument('--seed', type=int, default=0, help="the world's and the run's seed")
ap.add_argument('--phase', default='all', choices=('all', 'world', 'train', 'eval'),
                help='run one phase only (the others are read from <out>)')
args = ap.parse_args()
tag = f"{args.scale:g}".replace('.', 'p')
ROOT = Path(args.root or f'data/rehearsal_{tag}')
OUT = Path(args.out or f'runs/rehearsal_{tag}')
JSON = Path(args.json or OUT / 'rehearsal.json')
T0 = time.perf_counter()


def log(*a): print(f"[{time.perf_counter() - T0:6.0f}s]", *a, flush=True)


def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kB


def targets(s):
    "Market-1501's counts times s (identities at least 2 a side, images at least 2 per identity)."
    t = {k: max(round(v * s), 2 if k.endswith('ids') else 0) for k, v in MARKET.items()}
    t['train'] = max(t['train'], 2 * t['train_ids'])
    t['query'] = min(max(t['query'], t['test_ids']), 6 * t['test_ids'])
    t['gallery'] = max(t['gallery'], 2 * t['test_ids'])
    return t


# ---- world ---------------------------------------------------------------------------------------
def plan_exact(t, seed):
    """`plan_world`'s plan, trimmed and topped up to the counts `t`. Returns (world, junk world)."""
    import numpy as np
    from hacnn_nbdev.synthetic import plan_world
    n = max(t['train_ids'], t['test_ids'])
    w = plan_world(seed, 2 * n, (16, 30), 6, n_distractors=t['distractors'])
    rng = np.random.default_rng([seed, 99])
    ims = [im for im in w['images']                         # drop surplus identities
           if im['pid'] == 0 or (im['pid'] <= n and im['pid'] <= t['train_ids'])
           or (im['pid'] > n and im['pid'] - n <= t['test_ids'])]
    train = [im for im in ims if im['split'] == 'train']
    test = [im for im in ims if im['split'] in ('query', 'gallery') and im['pid'] > 0]
    distr = [im for im in ims if im['pid'] == 0]
    train = thin(train, t['train'], rng, keep=2)
    test = fit_queries(test, t['query'], rng)
    query = [im for im in test if im['split'] == 'query']
    gallery = thin_gallery([im for im in test if im['split'] == 'gallery'], t['gallery'], rng)
    w['images'] = train + query + gallery + distr
    junk = plan_world(seed + 1, 2, (4, 4), 6, n_distractors=t['junk'], jitter=2.0)
    junk['images'] = [dict(im, pid=-1, name='-1' + im['name'][4:]) for im in junk['images']
                      if im['pid'] == 0]
    return w, junk


def thin(ims, n, rng, keep):
    "Drop random images until n are left, keeping at least `keep` per identity."
    if len(ims) < n: sys.exit(f"the plan has {len(ims)} training images, fewer than {n}")
    per = {}
    for im in ims: per[im['pid']] = per.get(im['pid'], 0) + 1
    order, drop = rng.permutation(len(ims)), set()
    for i in order:
        if len(ims) - len(drop) == n: break
        if per[ims[i]['pid']] > keep:
            drop.add(int(i))
            per[ims[i]['pid']] -= 1
    return [im for i, im in enumerate(ims) if i not in drop]


def fit_queries(test, n, rng):
    """Exactly n queries (one per identity and camera): demote surplus queries to gallery images,
    or move a gallery image of a well-covered camera to an unused camera and make it that camera's
    query."""
    q = [im for im in test if im['split'] == 'query']
    for i in rng.permutation(len(q))[:max(0, len(q) - n)]: q[i]['split'] = 'gallery'
    frame, pids = 10 ** 5, sorted({im['pid'] for im in test})
    for _ in range(100 * n):
        if sum(im['split'] == 'query' for im in test) >= n: break
        pid = int(rng.choice(pids))
        mine = [im for im in test if im['pid'] == pid]
        used = {im['cam'] for im in mine}
        by_cam = {c: [im for im in mine if im['cam'] == c and im['split'] == 'gallery'] for c in used}
        rich = [c for c in sorted(used) if len(by_cam[c]) >= 3]
        free = [c for c in range(6) if c not in used]
        if not rich or not free: continue
        im = by_cam[int(rng.choice(rich))][0]
        frame += 1
        im.update(cam=int(rng.choice(free)), split='query')
        im['name'] = f"{pid:04d}_c{im['cam'] + 1}s1_{frame:06d}_00.jpg"
    else: sys.exit(f"could not reach {n} queries: too few cameras left free per identity")
    return test


def thin_gallery(gal, n, rng):
    "Drop random gallery images until n are left; every identity keeps images in two cameras."
    if len(gal) < n: sys.exit(f"the plan has {len(gal)} gallery images, fewer than {n}")
    cams = {}
    for im in gal: cams.setdefault(im['pid'], {}).setdefault(im['cam'], 0)
    for im in gal: cams[im['pid']][im['cam']] += 1
    drop = set()
    for i in rng.permutation(len(gal)):
        if len(gal) - len(drop) == n: break
        c = cams[gal[i]['pid']]
        left = sum(v > 0 for v in c.values()) - (c[gal[i]['cam']] == 1)
        if left >= 2:
            drop.add(int(i))
            c[gal[i]['cam']] -= 1
    return [im for i, im in enumerate(gal) if i not in drop]


def _render(job):
    from PIL import Image
    from hacnn_nbdev.synthetic import render_image, SPLIT_DIRS
    world, idx, root, jitter = job
    for i in idx:
        im = world['images'][i]
        arr = render_image(world, i, jitter=jitter, occlusion=0.1, clutter=0.5)
        Image.fromarray(arr).save(Path(root) / SPLIT_DIRS[im['split']] / im['name'], quality=90)
    return len(idx)


def phase_world(t):
    meta_path = ROOT / 'rehearsal_world.json'
    want = dict(targets=t, seed=args.seed, generator='benchmarks/rehearsal.py/1')
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} == want:
            log(f"world: reusing {ROOT}")
            return meta
        sys.exit(f"--root {ROOT} holds another world ({meta_path}); remove it or pick another --root")
    if ROOT.exists() and any(ROOT.iterdir()):
        sys.exit(f"--root {ROOT} exists and is not a rehearsal world; expected an empty or new folder")
    from concurrent.futures import ProcessPoolExecutor
    from hacnn_nbdev.synthetic import SPLIT_DIRS
    t0 = time.perf_counter()
    world, junk = plan_exact(t, args.seed)
    t_plan = time.perf_counter() - t0
    for d in SPLIT_DIRS.values(): (ROOT / d).mkdir(parents=True, exist_ok=True)
    jobs = [(w, range(s, min(len(w['images']), s + 500)), str(ROOT), jit)
            for w, jit in ((world, 1.0), (junk, 2.0)) for s in range(0, len(w['images']), 500)]
    if args.render_workers > 1:
        with ProcessPoolExecutor(args.render_workers) as ex: n = sum(ex.map(_render, jobs))
    else: n = sum(_render(j) for j in jobs)
    counts = {s: sum(im['split'] == s for im in world['images']) for s in SPLIT_DIRS}
    meta = dict(want, counts=counts, junk=len(junk['images']), images=n,
                plan_seconds=t_plan, seconds=time.perf_counter() - t0,
                MB=sum(p.stat().st_size for p in ROOT.rglob('*.jpg')) / 1e6)
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"world: {n} images in {meta['seconds']:.0f} s ({meta['MB']:.0f} MB) at {ROOT}")
    return meta


# ---- train and eval (child processes) ---------------------------------------------------------
def phase_train():
    import torch
    from hacnn_nbdev.train import train, recipe
    run = OUT / 'run'
    if run.exists(): shutil.rmtree(run)
    cfg = recipe('paper', root=str(ROOT), dataset='synthetic', out=str(run), epochs=args.epochs,
                 threads=args.threads, device='cpu', amp=args.amp, seed=args.seed, progress=False)
    t0 = time.perf_counter()
    tr = train(cfg, log=lambda m: None)
    wall = time.perf_counter() - t0
    h = tr.history
    ck = run / 'last.pt'
    return dict(wall_seconds=wall, epochs=[{k: r[k] for k in ('epoch', 'images', 'time',
                'images_per_s', 'loss', 'acc')} for r in h], checkpoint_MB=ck.stat().st_size / 1e6,
                peak_rss_MB=peak_mb(), threads=torch.get_num_threads(), amp=args.amp,
                train_images=len(tr.ds.train), train_ids=tr.num_classes)


def phase_eval():
    import torch
    from hacnn_nbdev.checkpoint import load_model
    from hacnn_nbdev.data import get_dataset
    from hacnn_nbdev.evaluate import evaluate_model
    from hacnn_nbdev.deploy import optimize_for_inference
    torch.set_num_threads(args.threads)
    model = load_model(OUT / 'run' / 'last.pt')
    ds = get_dataset('synthetic', ROOT)
    out = dict(query=len(ds.query), gallery=len(ds.gallery),
               distractors=sum(r[1] == 0 for r in ds.gallery))
    for name, net in (('fp32', model), ('deploy', None)):
        rss0 = peak_mb()
        t0 = time.perf_counter()
        if net is None: net = optimize_for_inference(model)
        ev = evaluate_model(net, ds, spec=model.input_spec, progress=False)
        r = ev.results['SQ']
        out[name] = dict(seconds=time.perf_counter() - t0, timing=ev.timing,
                         dtype=str(getattr(net, 'dtype', None) or 'float32').replace('torch.', ''),
                         rank1=100 * float(r.cmc[0]), mAP=100 * r.mAP, mINP=100 * r.mINP,
                         peak_rss_MB=peak_mb(), peak_rss_before_MB=rss0)
        del ev
    out['threads'] = torch.get_num_threads()
    return out


def child(phase):
    "Run one phase in a fresh process; its result is read back from <out>/<phase>.json."
    cmd = [sys.executable, __file__, '--phase', phase, '--scale', str(args.scale), '--root', str(ROOT),
           '--out', str(OUT), '--epochs', str(args.epochs), '--threads', str(args.threads),
           '--amp', args.amp, '--seed', str(args.seed)]
    env = {**os.environ, 'OMP_NUM_THREADS': str(args.threads), 'MKL_NUM_THREADS': str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads((OUT / f'{phase}.json').read_text())


# ---- report ----------------------------------------------------------------------------------
def extrapolate(R):
    "Full-scale time of 150 epochs and one evaluation, from this run's rates."
    tr, ev, full = R['train'], R['eval'], MARKET
    rate = sum(e['images'] for e in tr['epochs']) / sum(e['time'] for e in tr['epochs'])
    epoch_s = full['train'] / rate
    n_img, n_full = ev['query'] + ev['gallery'], full['query'] + full['gallery'] + full['distractors']
    qg, qg_full = ev['query'] * ev['gallery'], full['query'] * (full['gallery'] + full['distractors'])
    e = {}
    for k in ('fp32', 'deploy'):
        tm = ev[k]['timing']
        e[k] = tm.get('features', 0) * n_full / n_img + tm.get('SQ', 0) * qg_full / qg
    return dict(train_images_per_s=rate, epoch_seconds_full=epoch_s,
                epochs150_hours=150 * epoch_s / 3600, eval_seconds_full=e,
                distance_matrix_MB_full=qg_full * 4 / 1e6)


def render(R):
    w, tr, ev, x = R['world'], R['train'], R['eval'], R['extrapolation']
    c = w['counts']
    L = [f"# Rehearsal at {R['scale']:g} × Market-1501's size", '',
         f"world: {c['train']} train ({w['targets']['train_ids']} ids), {c['query']} query, "
         f"{c['gallery']} gallery incl. {w['targets']['distractors']} distractors, {w['junk']} junk "
         f"(dropped on reading); {w['MB']:.0f} MB of JPEGs, made in {w['seconds']:.0f} s",
         f"network: the paper's (widths 128/256/384), recipe('paper'); threads {tr['threads']}, "
         f"training amp {tr['amp']}; {R['machine']}; load {R['load_start']:.1f} → {R['load_end']:.1f}",
         f"command: `{R['command']}`", '',
         '| what | value |', '|---|---:|']
    for e in tr['epochs']:
        L.append(f"| epoch {e['epoch']}: seconds / images/s / loss | {e['time']:.0f} / "
                 f"{e['images_per_s']:.1f} / {e['loss']:.3f} |")
    L += [f"| training: peak memory (max RSS) | {tr['peak_rss_MB']:.0f} MB |",
          f"| checkpoint (last.pt: weights, Adam state, RNG) | {tr['checkpoint_MB']:.1f} MB |"]
    for k in ('fp32', 'deploy'):
        v = ev[k]
        L.append(f"| evaluation {k} ({v['dtype']}): {ev['query']} × {ev['gallery']}: seconds / "
                 f"rank-1 / mAP / mINP | {v['seconds']:.1f} / {v['rank1']:.1f} / {v['mAP']:.1f} / "
                 f"{v['mINP']:.1f} |")
    L.append(f"| evaluation: peak memory (max RSS of the eval process) | {ev['deploy']['peak_rss_MB']:.0f} MB |")
    L += [f"| full scale: one epoch (12,936 images at {x['train_images_per_s']:.1f}/s) | "
          f"{x['epoch_seconds_full'] / 60:.1f} min |",
          f"| full scale: 150 epochs (Sec. 4) | {x['epochs150_hours']:.1f} h |",
          f"| full scale: evaluation fp32 / deploy | {x['eval_seconds_full']['fp32']:.0f} s / "
          f"{x['eval_seconds_full']['deploy']:.0f} s |",
          f"| full scale: distance matrix 3,368 × 15,913 fp32 | {x['distance_matrix_MB_full']:.0f} MB |"]
    return '\n'.join(L)


def main():
    if args.phase in ('train', 'eval'):
        res = phase_train() if args.phase == 'train' else phase_eval()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f'{args.phase}.json').write_text(json.dumps(res, indent=1))
        return
    t = targets(args.scale)
    load0 = os.getloadavg()[0]
    log(f"targets at scale {args.scale:g}: {t}; threads {args.threads}")
    R = dict(scale=args.scale, command=' '.join([sys.executable] + sys.argv), load_start=load0)
    R['world'] = phase_world(t)
    if args.phase == 'world': return
    R['train'] = child('train')
    log(f"train: {R['train']['wall_seconds']:.0f} s; peak {R['train']['peak_rss_MB']:.0f} MB")
    R['eval'] = child('eval')
    log(f"eval: fp32 {R['eval']['fp32']['seconds']:.0f} s, deploy {R['eval']['deploy']['seconds']:.0f} s")
    import platform
    R['machine'] = f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}"
    R['load_end'] = os.getloadavg()[0]
    R['extrapolation'] = extrapolate(R)
    R['seconds'] = time.perf_counter() - T0
    JSON.parent.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(R, indent=1))
    print(render(R))
    log(f"wrote {JSON}")


if __name__ == '__main__': main()
