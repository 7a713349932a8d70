"""How the CPU demo should use two cores: one training process with 2 torch threads, or a DDP job of 2
processes with 1 thread each (what `hacnn_demo` does). Interleaved rounds of the demo's real training
(its world, its network, its recipe), each a fresh run of `epochs` epochs; images/s from the runs' own
metrics logs, first epoch left out (warm-up). The result is the median of the per-round ratios.

    .venv/bin/python benchmarks/bench_demo_ddp.py --rounds 3 --out benchmarks/results
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, statistics, tempfile, time
from pathlib import Path
import torch
from hacnn_nbdev.demo import DEMO_WORLD, train_processes
from hacnn_nbdev.synthetic import make_world
from hacnn_nbdev.train import RECIPES, TrainConfig, read_history, train


def one_run(kind: str, root: Path, work: Path, epochs: int) -> float:
    "images/s of one fresh run: 'single' = 1 process x 2 threads, 'ddp' = 2 processes x 1 thread."
    out = work / kind; shutil.rmtree(out, ignore_errors=True)
    recipe = {**RECIPES['demo'], 'epochs': epochs, 'eval_every': 0}
    if kind == 'single':
        train(TrainConfig(root=str(root), out=str(out), threads=2, progress=False, **recipe))
    else:
        codes = train_processes(TrainConfig(root=str(root), out=str(out), threads=1, progress=False, **recipe), procs=2)
        assert codes == [0, 0], codes
    h = read_history(out)[1:]
    return sum(r['images'] for r in h) / sum(r['time'] for r in h)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds (default 3)')
    ap.add_argument('--epochs', type=int, default=3, help='epochs per run; the first is warm-up (default 3)')
    ap.add_argument('--world', default='data/synthetic', help="the demo's world (made if missing)")
    ap.add_argument('--out', default=None, help='folder for demo_ddp.json (default: print only)')
    a = ap.parse_args()
    make_world(a.world, **{'workers': 2, **DEMO_WORLD})
    work, rows, load0 = Path(tempfile.mkdtemp()), [], os.getloadavg()
    for r in range(a.rounds):
        order = ('single', 'ddp') if r % 2 == 0 else ('ddp', 'single')
        res = {k: one_run(k, Path(a.world), work, a.epochs) for k in order}
        rows.append(res); print(f"round {r + 1}: 1 process x 2 threads {res['single']:.1f} img/s, 2 processes x 1 thread {res['ddp']:.1f} img/s "
                                f"-> {res['ddp'] / res['single']:.2f}x")
    ratio = statistics.median(r['ddp'] / r['single'] for r in rows)
    summary = dict(rounds=rows, ratio_median=ratio, epochs=a.epochs, cpus=os.cpu_count(), torch=torch.__version__,
                   python=platform.python_version(), load_start=load0, load_end=os.getloadavg(), when=time.strftime('%Y-%m-%d %H:%M'))
    print(f"median: the demo's 2-process DDP job trains {ratio:.2f}x as many images/s as one 2-thread process")
    if a.out: Path(a.out).mkdir(parents=True, exist_ok=True); (Path(a.out) / 'demo_ddp.json').write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__': main()
