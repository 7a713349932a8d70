#!/usr/bin/env python
"""Run the miniature Tables 5-7 and the misalignment sweep of nbs/12_experiments.ipynb on the CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments.py            # the committed results' plan
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments.py --budget 3600 --seeds 0,1,2
    # two runners side by side on one results file:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments.py --part 0/2 & OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments.py --part 1/2

Finished runs are appended to --results (JSON lines) and skipped when it is run again, so an interrupted
plan continues where it stopped. Worlds go to --worlds, checkpoints and logs to --runs.
Then re-execute nbs/12_experiments.ipynb to redraw its tables from --results. The demo-scale ablation
(benchmarks/demo_ablation.py) is another plan of the same harness.
"""
import argparse, time, os
from hacnn_nbdev.experiments import BASE, paper_plan, run_plan

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--results', default='benchmarks/results/experiments.jsonl', help='JSON-lines file of finished runs')
    ap.add_argument('--worlds', default='data/experiments', help='where the synthetic worlds are written')
    ap.add_argument('--runs', default='runs/experiments', help='where checkpoints and logs go')
    ap.add_argument('--seeds', default='0,1', help='seeds of Tables 5-7')
    ap.add_argument('--sweep_jitters', default='0,1,2,3', help='detector-jitter levels of the sweep')
    ap.add_argument('--sweep_seeds', default='0,1', help='seeds of the sweep')
    ap.add_argument('--part', default='0/1', help='i/n: run only the plan entries whose index is i modulo n (for n runners side by side)')
    ap.add_argument('--budget', type=float, default=float('inf'), help='start no new run after this many seconds')
    a = ap.parse_args()
    ints = lambda s: tuple(int(x) for x in s.split(','))
    plan = paper_plan(BASE, seeds=ints(a.seeds), sweep_jitters=tuple(float(x) for x in a.sweep_jitters.split(',')),
                      sweep_seeds=ints(a.sweep_seeds))
    i, n = (int(v) for v in a.part.split('/'))
    plan = plan[i::n]
    print(f"{len(plan)} runs planned (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); results -> {a.results}")
    t0 = time.time()
    recs = run_plan(plan, a.results, budget_s=a.budget, log=lambda m: print(m, flush=True), worlds_dir=a.worlds,
                    runs_dir=a.runs)
    print(f"done in {time.time() - t0:.0f} s: {sum(r is not None for r in recs)} of {len(plan)} runs have results")

if __name__ == '__main__': main()
