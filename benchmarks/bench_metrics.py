"""Speed and memory of `hacnn_nbdev.metrics.evaluate_rank` against a full `np.argsort` of the same matrix.

Market-1501-sized case: 3,368 queries × 15,913 gallery images, 750 test identities + 2,793 distractors (pid 0),
6 cameras, simulated L2-normalised 128-d features (`simulate_features`). Three regimes of model quality:
  good    a feature quality like HA-CNN's on Market-1501 (mAP ≈ 70%): most queries have few candidates,
  weak    a poor model (mAP ≈ 5%): true matches deep in the list, many candidates per query,
  random  uniform random distances: the worst case (a true match anywhere, candidates ≈ the whole row).
Ours and `np.argsort(distmat, axis=1)` (what most evaluators do first) run in rounds in one process, their order
alternating from round to round, with the thread count fixed by `--threads` (NumPy's sorts are single-threaded
either way). The reported ratio is the median over rounds of ours / argsort in wall-clock time; the same ratio
in CPU time (`time.process_time`, less sensitive to other processes on the machine) is recorded beside it.
Peak memory is the tracemalloc peak of one call (NumPy reports its buffers to tracemalloc), against the matrix.
Correctness on the same matrices: against the naive evaluator (and torchreid's Python evaluator when installed)
on a subset of queries.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_metrics.py [--threads 1] [--rounds 7] \\
        [--out benchmarks/results/metrics.json]

This is a measurement, not a test: the numbers depend on the machine and its load.
"""
import os, argparse
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--threads', type=int, default=1, help='OpenMP/MKL/torch threads (stated in the output)')
ap.add_argument('--rounds', type=int, default=7, help='timed rounds per regime (ours and argsort each round)')
ap.add_argument('--check-queries', type=int, default=300, help='queries checked against the naive/torchreid evaluators')
ap.add_argument('--regimes', default='good,weak,random', help='comma-separated subset of good,weak,random')
ap.add_argument('--out', default='benchmarks/results/metrics.json')
args = ap.parse_args()
for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): os.environ[v] = str(args.threads)
import json, time, platform, statistics, tracemalloc, importlib.util, warnings
import numpy as np, torch
torch.set_num_threads(args.threads)
from hacnn_nbdev.metrics import simulate_features, compute_distance, evaluate_rank, evaluate_rank_naive

TARGET = 0.25
NOISE = {'good': 1.1, 'weak': 2.2, 'random': 1.1}


def timed(f):
    "(wall seconds, CPU seconds, result) of one call."
    w, c = time.perf_counter(), time.process_time()
    out = f()
    return time.perf_counter() - w, time.process_time() - c, out


def peak(f):
    "Peak bytes allocated (tracemalloc) while f runs, above what was allocated before."
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    f()
    p = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return p - base


def torchreid_eval():
    "torchreid's Python evaluator, loaded from its file (its package import needs torchvision), or None."
    spec = importlib.util.find_spec('torchreid')
    if spec is None: return None
    path = os.path.join(spec.submodule_search_locations[0], 'reid', 'metrics', 'rank.py')
    if not os.path.exists(path): return None
    m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('_tr_rank', path))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m.__spec__.loader.exec_module(m)
    return lambda *a: m.eval_market1501(*a, 50)


def case(name):
    "The regime's (3368, 15913) float32 distance matrix and its labels."
    fs = simulate_features(n_ids=750, n_query=3368, n_gallery=15913, n_distractors=2793, dim=128,
                           noise=NOISE[name], seed=0)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    if name == 'random': return np.random.default_rng(0).random((3368, 15913), dtype=np.float32), lab
    return compute_distance(fs.q_feats, fs.g_feats), lab


def run(name, tr):
    d, lab = case(name)
    rounds, res = [], None
    for i in range(args.rounds):  # order alternates, so machine load and cache state hit both alike
        pair = {}
        for who in (('ours', 'argsort') if i % 2 == 0 else ('argsort', 'ours')):
            if who == 'ours': *pair['ours'], res = timed(lambda: evaluate_rank(d, *lab))
            else: *pair['argsort'], _ = timed(lambda: np.argsort(d, axis=1))
        rounds.append(pair)
    med = lambda who, k: statistics.median(r[who][k] for r in rounds)
    ratio = statistics.median(r['ours'][0] / r['argsort'][0] for r in rounds)
    ratio_cpu = statistics.median(r['ours'][1] / r['argsort'][1] for r in rounds)
    m_ours, m_sort = peak(lambda: evaluate_rank(d, *lab)), peak(lambda: np.argsort(d, axis=1))
    n = args.check_queries
    sub = (d[:n], lab[0][:n], lab[1], lab[2][:n], lab[3])
    a, b = evaluate_rank(*sub), evaluate_rank_naive(*sub)
    check = {'queries': n, 'max_abs_diff_vs_naive': float(max(np.abs(a.cmc - b.cmc).max(), abs(a.mAP - b.mAP),
                                                             abs(a.mINP - b.mINP)))}
    if tr is not None:
        t_tr, _, (cmc_t, map_t) = timed(lambda: tr(*sub))
        check.update(max_abs_diff_vs_torchreid_python=float(max(np.abs(a.cmc - cmc_t).max(), abs(a.mAP - map_t))),
                     torchreid_python_seconds_for_subset=t_tr)
    r = {'distmat': list(d.shape), 'distmat_MB': d.nbytes / 2**20, 'result': res.scores(),
         'evaluate_rank_s': med('ours', 0), 'argsort_s': med('argsort', 0), 'ratio_vs_argsort': ratio,
         'evaluate_rank_cpu_s': med('ours', 1), 'argsort_cpu_s': med('argsort', 1), 'ratio_vs_argsort_cpu': ratio_cpu,
         'rounds': rounds, 'evaluate_rank_peak_MB': m_ours / 2**20, 'argsort_peak_MB': m_sort / 2**20,
         'peak_vs_distmat': m_ours / d.nbytes, 'check': check}
    print(f"{name:7s} {d.shape[0]}×{d.shape[1]} {d.dtype}  {res}\n"
          f"        evaluate_rank {r['evaluate_rank_s']:.3f}s | np.argsort {r['argsort_s']:.3f}s | "
          f"ratio {ratio:.3f} (CPU time: {ratio_cpu:.3f}; target ≤ {TARGET})\n"
          f"        peak extra memory {m_ours / 2**20:.1f} MB = {m_ours / d.nbytes:.3f}× the "
          f"{d.nbytes / 2**20:.0f} MB distance matrix (argsort: {m_sort / 2**20:.0f} MB)\n        check {check}",
          flush=True)
    return r


def main():
    tr = torchreid_eval()
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')),
               platform.processor())
    results = {'machine': {'cpu': cpu, 'cores': os.cpu_count(), 'threads': args.threads,
                           'python': platform.python_version(), 'numpy': np.__version__, 'torch': torch.__version__,
                           'load_avg_start': os.getloadavg()},
               'command': (f'OMP_NUM_THREADS={args.threads} python benchmarks/bench_metrics.py '
                           f'--threads {args.threads} --rounds {args.rounds}'),
               'target_ratio': TARGET, 'cases': {}}
    print(f'{cpu} | {os.cpu_count()} cores | {args.threads} thread(s) | numpy {np.__version__} | '
          f'load {os.getloadavg()[0]:.1f}', flush=True)
    for name in args.regimes.split(','): results['cases'][name] = run(name, tr)
    results['machine']['load_avg_end'] = os.getloadavg()
    print(f"\n{'regime':8s}{'mAP':>8s}{'ours s':>9s}{'argsort s':>11s}{'ratio':>8s}{'CPU ratio':>11s}")
    for name, c in results['cases'].items():
        print(f"{name:8s}{100 * c['result']['mAP']:7.1f}%{c['evaluate_rank_s']:9.3f}{c['argsort_s']:11.3f}"
              f"{c['ratio_vs_argsort']:8.3f}{c['ratio_vs_argsort_cpu']:11.3f}")
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    json.dump(results, open(args.out, 'w'), indent=1)
    print(f'threads: {args.threads} | load {os.getloadavg()[0]:.1f} | wrote {args.out}')


if __name__ == '__main__': main()
