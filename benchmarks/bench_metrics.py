"""Speed and memory of `hacnn_nbdev.metrics.evaluate_rank` against a plain `np.argsort` of the same matrix.

Market-1501-sized case: 3,368 queries × 15,913 gallery images, 750 test identities + 2,793 distractors (pid 0),
6 cameras, simulated L2-normalised features (`simulate_features`). Three distance regimes:
  realistic  a feature quality like HA-CNN's on Market-1501 (mAP ≈ 75%),
  weak       a poor model (mAP ≈ 10%): most queries take the dense path,
  random     uniform random distances: the worst case for the evaluator.
Ours and np.argsort(distmat, axis=1) run interleaved in one process, `--repeats` times each (median reported),
with the thread count fixed by `--threads` (NumPy's sort is single-threaded either way). Peak memory is the
tracemalloc peak of the call (NumPy reports its buffers to tracemalloc), compared with the distance matrix.
Correctness on the same matrices: against the naive evaluator (and torchreid's Python evaluator when installed)
on a subset of queries.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_metrics.py [--threads 1] [--repeats 5] [--out benchmarks/results/metrics.json]
This is a measurement, not a test: numbers depend on the machine and its load.
"""
import os, sys, argparse
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--threads', type=int, default=1); ap.add_argument('--repeats', type=int, default=5)
ap.add_argument('--check-queries', type=int, default=300, help='queries checked against the naive/torchreid evaluators')
ap.add_argument('--out', default='benchmarks/results/metrics.json')
args = ap.parse_args()
for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): os.environ[v] = str(args.threads)
import json, time, platform, statistics, tracemalloc, importlib.util, warnings
import numpy as np, torch
torch.set_num_threads(args.threads)
from hacnn_nbdev.metrics import simulate_features, compute_distance, evaluate_rank, evaluate_rank_naive

def timed(f):
    t = time.perf_counter(); out = f(); return time.perf_counter() - t, out

def peak(f):
    "Peak bytes allocated (tracemalloc) while f runs, above what was allocated before."
    tracemalloc.start(); base = tracemalloc.get_traced_memory()[0]; f()
    p = tracemalloc.get_traced_memory()[1]; tracemalloc.stop(); return p - base

def torchreid_eval():
    "torchreid's Python evaluator, loaded from its file (its package import needs cv2), or None."
    spec = importlib.util.find_spec('torchreid')
    if spec is None: return None
    path = os.path.join(os.path.dirname(spec.origin), 'reid', 'metrics', 'rank.py')
    if not os.path.exists(path): return None
    m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('_tr_rank', path))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore'); m.__spec__.loader.exec_module(m)
    return lambda *a: m.eval_market1501(*a, 50)

def case(name):
    fs = simulate_features(n_ids=750, n_query=3368, n_gallery=15913, n_distractors=2793, dim=128,
                           noise={'realistic': 1.1, 'weak': 2.2, 'random': 1.1}[name], seed=0)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    if name == 'random': return np.random.default_rng(0).random((3368, 15913), dtype=np.float32), lab
    return compute_distance(fs.q_feats, fs.g_feats), lab

tr = torchreid_eval()
results = {'machine': {'cpu': next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor()),
                       'cores': os.cpu_count(), 'threads': args.threads, 'python': platform.python_version(),
                       'numpy': np.__version__, 'torch': torch.__version__, 'load_avg_start': os.getloadavg()},
           'command': 'OMP_NUM_THREADS=%d python benchmarks/bench_metrics.py --threads %d --repeats %d' % (args.threads, args.threads, args.repeats),
           'cases': {}}
for name in ('realistic', 'weak', 'random'):
    d, lab = case(name)
    ours, ref = [], []
    for _ in range(args.repeats):  # interleaved, so machine load hits both alike
        t, res = timed(lambda: evaluate_rank(d, *lab)); ours.append(t)
        t, _ = timed(lambda: np.argsort(d, axis=1)); ref.append(t)
    t_ours, t_sort = statistics.median(ours), statistics.median(ref)
    m_ours, m_sort = peak(lambda: evaluate_rank(d, *lab)), peak(lambda: np.argsort(d, axis=1))
    n = args.check_queries; sub = (d[:n], lab[0][:n], lab[1], lab[2][:n], lab[3])
    a, b = evaluate_rank(*sub), evaluate_rank_naive(*sub)
    check = {'queries': n, 'max_abs_diff_vs_naive': float(max(np.abs(a.cmc - b.cmc).max(), abs(a.mAP - b.mAP), abs(a.mINP - b.mINP)))}
    if tr is not None:
        t_tr, (cmc_t, map_t) = timed(lambda: tr(*sub))
        check.update(max_abs_diff_vs_torchreid_python=float(max(np.abs(a.cmc - cmc_t).max(), abs(a.mAP - map_t))),
                     torchreid_python_seconds_for_subset=t_tr)
    r = {'distmat': list(d.shape), 'distmat_MB': d.nbytes / 2**20, 'result': res.summary(),
         'evaluate_rank_s': t_ours, 'argsort_s': t_sort, 'ratio_vs_argsort': t_ours / t_sort,
         'evaluate_rank_all_s': ours, 'argsort_all_s': ref,
         'evaluate_rank_peak_MB': m_ours / 2**20, 'argsort_peak_MB': m_sort / 2**20,
         'peak_vs_distmat': m_ours / d.nbytes, 'check': check}
    results['cases'][name] = r
    print(f"{name:9s} {d.shape[0]}×{d.shape[1]} {d.dtype}  {res}\n"
          f"          evaluate_rank {t_ours:.3f}s | np.argsort {t_sort:.3f}s | ratio {t_ours / t_sort:.3f} (target ≤ 0.25)\n"
          f"          peak extra memory {m_ours / 2**20:.1f} MB = {m_ours / d.nbytes:.2f}× the {d.nbytes / 2**20:.0f} MB distance matrix "
          f"(argsort: {m_sort / 2**20:.0f} MB)\n          check {check}", flush=True)
results['machine']['load_avg_end'] = os.getloadavg()
os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
json.dump(results, open(args.out, 'w'), indent=1)
print('threads:', args.threads, '| wrote', args.out)
