#!/usr/bin/env python
"""Speed of hacnn_nbdev side by side with torchreid's HACNN port (the peer), in one run: `make bench`.

    .venv/bin/python benchmarks/run.py --out benchmarks/results [--threads 2] [--quick]

Measured, with the thread count fixed (`--threads`, default: all cores) and stated in the output:
  eval b32 / eval b1    eval-mode feature extraction, images/s: peer eager vs ours eager, ours
                        `optimize_for_inference` in fp32 and in bf16 (the bf16 network; bf16 by
                        autocast beside it), each also torch.compile'd, and ours ONNX (onnxruntime)
  train b32             one optimiser step (forward, CE on both heads, backward, Adam), images/s:
                        the paper's widths against the peer, the demo's 32/64/96 against today's
                        `hacnn_train` step; fp32 vs bf16 autocast, fused Adam, (--train-compile)
                        torch.compile
  folder -> features    JPEG folder -> DataLoader (decode, resize, normalise) -> features, images/s
  evaluator             Market-1501-sized case (3,368 × 15,913, 1,024-d): distances + CMC/mAP, queries/s
  data loading          decode + resize + normalise with 0/1/2 DataLoader workers, images/s
  matmul limits         best GFLOP/s of a 2048² matrix product in fp32 and in bf16: the machine's
                        practical ceilings; every path is reported as a % of both
Candidates run interleaved (round after round, rotating order) so that machine load hits them alike;
the ratio ours/peer is the median of per-round ratios. Wall-clock numbers are the result; CPU-time
ratios are recorded beside them as a check that is less sensitive to other processes.
Writes <out>/bench.json and <out>/bench.png, and prints the table.
"""
import argparse, os, sys, time
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--out', default='benchmarks/results', help='folder for bench.json and bench.png')
ap.add_argument('--threads', type=int, default=os.cpu_count(), help='torch/onnxruntime intra-op threads')
ap.add_argument('--rounds', type=int, default=5, help='interleaved rounds per comparison')
ap.add_argument('--min-time', type=float, default=1.0, help='seconds per candidate per round (eval)')
ap.add_argument('--images', type=int, default=256, help='JPEGs in the synthetic folder')
ap.add_argument('--peer-queries', type=int, default=842, help="queries the peer's (Python) evaluator ranks: a quarter of Market's 3,368")
ap.add_argument('--quick', action='store_true', help='a fast smoke run (few rounds, small folder): numbers are rough')
ap.add_argument('--no-compile', action='store_true', help='skip the torch.compile candidates of inference (4 compiles)')
ap.add_argument('--train-compile', action='store_true',
                help='also torch.compile the training step (minutes of compiling per network)')
ap.add_argument('--only', default='', help='comma-separated sections to run: eval,train,folder,evaluator (default: all)')
args = ap.parse_args()
if args.quick: args.rounds, args.min_time, args.images, args.peer_queries = 2, 0.3, 96, 200
for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): os.environ[v] = str(args.threads)
os.environ.setdefault('MPLBACKEND', 'Agg')

import copy, json, platform, subprocess, tempfile, warnings, importlib.util, logging
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
torch.set_num_threads(args.threads)
warnings.filterwarnings('ignore', category=UserWarning)        # the peer's deprecated F.upsample etc.
warnings.filterwarnings('ignore', category=DeprecationWarning)
logging.getLogger('torch.onnx').setLevel(logging.ERROR)

from hacnn_nbdev.core import seed_everything
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.inception import InceptionA, InceptionB
from hacnn_nbdev.loaders import build_test_loader
from hacnn_nbdev.train import hacnn_loss, make_optimizer, TrainConfig
from hacnn_nbdev.metrics import simulate_features, compute_distance, evaluate_rank
from hacnn_nbdev.deploy import (optimize_for_inference, export_onnx, OnnxFeatureExtractor, count_flops, matmul_limit,
                                throughput, summarize, check_parity, cpu_bf16, InferenceModel, fold_batchnorms,
                                channels_last_inputs)

T0 = time.perf_counter()
def log(*a): print(f"[{time.perf_counter() - T0:5.0f}s]", *a, flush=True)

# ---- the peer: torchreid 0.2.5, its model and metric files imported by path -----------------------------------------
def torchreid_file(rel:str, name:str):
    "Import one file of the installed torchreid package without running torchreid/__init__.py (it needs torchvision/cv2)."
    spec = importlib.util.find_spec('torchreid')
    if spec is None: sys.exit("torchreid is not installed: `make bench` installs it (bench_requirements = torchreid==0.2.5)")
    path = Path(spec.origin).parent / rel
    m = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    m.__spec__.loader.exec_module(m)
    return m

peer_models = torchreid_file('reid/models/hacnn.py', '_peer_hacnn')
peer_rank = torchreid_file('reid/metrics/rank.py', '_peer_rank')
peer_distance = torchreid_file('reid/metrics/distance.py', '_peer_distance')
from importlib.metadata import version
PEER = f"torchreid {version('torchreid')} HACNN (eager, as shipped; use_gpu=False)"

def peer_model(num_classes=751, widths=(128, 256, 384)):
    return peer_models.HACNN(num_classes, loss='softmax', use_gpu=False, nchannels=list(widths))

def trained_like(m, seed=0):
    "Random but non-trivial BN statistics (a freshly built model would make BN folding trivially right)."
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            n = bn.num_features; u = lambda a, b: a + (b - a) * torch.rand(n, generator=g)
            bn.running_mean.copy_(u(-.5, .5)); bn.running_var.copy_(u(.5, 2.))
            with torch.no_grad(): bn.weight.copy_(u(.5, 1.5)); bn.bias.copy_(u(-.2, .2))
    return m

def machine():
    lscpu = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    model = next((l.split(':', 1)[1].strip() for l in lscpu.splitlines() if l.startswith('Model name')), platform.processor())
    return {'cpu': model, 'nproc': os.cpu_count(), 'threads': args.threads, 'python': platform.python_version(),
            'torch': torch.__version__, 'onnxruntime': version('onnxruntime'), 'peer': PEER,
            'load_avg_start': os.getloadavg()}

def stats(res, base, **extra):
    "Summaries by wall clock (the result) and by CPU time (the check)."
    wall, cpu = summarize(res, base, 'wall'), summarize(res, base, 'cpu')
    return {k: {'images_s': wall[k]['median'], 'ratio': wall[k]['ratio'], 'ratio_cpu_time': cpu[k]['ratio'],
                'rounds_images_s': res[k]['wall'], **extra.get(k, {})} for k in res}

# ---- sections --------------------------------------------------------------------------------------------------------
def bf16_autocast(ours):
    "The fp32 optimized network run under CPU autocast bf16 (the alternative to a bf16 network; measured beside it)."
    net = copy.deepcopy(ours).eval()
    fold_batchnorms(net)
    channels_last_inputs(net)
    net = net.to(memory_format=torch.channels_last)
    for q in net.parameters(): q.requires_grad_(False)
    return InferenceModel(net, torch.device('cpu'), True, torch.bfloat16, cast=False).eval()

def inference_paths(ours, x, bf16, compile):
    "name -> (module, precision) of our inference paths at the batch size of `x`; compile seconds."
    paths = {'ours optimized': (optimize_for_inference(ours, amp='off'), 'fp32')}
    if bf16:
        paths['ours bf16'] = (optimize_for_inference(ours, amp='bf16'), 'bf16')
        paths['ours bf16 autocast'] = (bf16_autocast(ours), 'bf16')
    secs = {}
    if compile:
        for k, amp in [('ours optimized + compile', 'off')] + ([('ours bf16 + compile', 'bf16')] if bf16 else []):
            t = time.perf_counter()
            paths[k] = (optimize_for_inference(ours, amp=amp, compile=True, example=x), 'bf16' if amp == 'bf16' else 'fp32')
            secs[k] = time.perf_counter() - t
            log(f"compiled {k} for batch {len(x)} in {secs[k]:.0f} s")
    return paths, secs

def bench_eval(ours, peer, onnx, batch, flops, bf16):
    x = torch.randn(batch, 3, 160, 64)
    paths, secs = inference_paths(ours, x, bf16, not args.no_compile)
    fns = {'peer': lambda: peer(x), 'ours eager': lambda: ours(x)}
    fns.update({k: (lambda m=m: m(x)) for k, (m, _) in paths.items()})
    if onnx is not None: fns['ours onnx'] = lambda: onnx(x)
    with torch.no_grad():
        ref = ours(x)
        parity = {k: check_parity(m(x), ref, 1.0) / ref.abs().max().item() for k, (m, _) in paths.items()}
        res = throughput(fns, batch, rounds=args.rounds, min_time=args.min_time)
    out = stats(res, 'peer')
    prec = {k: p for k, (_, p) in paths.items()}
    for k, v in out.items():
        v['gflops'] = v['images_s'] * flops['peer' if k == 'peer' else 'ours'] / 1e9
        v['precision'] = prec.get(k, 'fp32')
        if k in parity: v['max_rel_diff'] = parity[k]
        if k in secs: v['compile_seconds'] = secs[k]
    return out

def bench_train(widths, tf, with_peer):
    """Training steps of the recipe's network at `widths`: the peer (paper widths) and ours as `hacnn_train` runs it today
    (channels-last, fp32, Adam from `make_optimizer`), with bf16 autocast, fused Adam, and optionally torch.compile."""
    x, y = torch.randn(32, 3, 160, 64), torch.randint(0, 751, (32,))
    xcl = x.contiguous(memory_format=torch.channels_last)
    def stepper(model, cl=True, bf16=False, fused=False, compile=False, cl_units=False):
        model.train()
        if cl: model = model.to(memory_format=torch.channels_last)
        if cl_units:   # the local streams' regions come out of grid_sample in NCHW: convert at every Inception unit
            for u in model.modules():
                if isinstance(u, (InceptionA, InceptionB)):
                    u.register_forward_pre_hook(lambda mod, a: (a[0].contiguous(memory_format=torch.channels_last),))
        if fused: opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999), fused=True)
        else: opt = make_optimizer(model.parameters(), TrainConfig())   # the same recipe for both networks: Adam (Sec. 4)
        net = torch.compile(model) if compile else model
        xi = xcl if cl else x
        def step():
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16): g, l = net(xi)
            loss, _ = hacnn_loss(g.float(), l.float(), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if compile:
            t = time.perf_counter(); step(); step(); log(f"compiled the training step (widths {widths}) in {time.perf_counter() - t:.0f} s")
        return step
    seed_everything(0)
    today = 'ours today (hacnn_train on CPU: channels-last fp32)'
    fns = {'peer': stepper(peer_model(751, widths), cl=False)} if with_peer else {}
    fns[today] = stepper(HACNN(751, widths=widths))
    fns['ours NCHW fp32'] = stepper(HACNN(751, widths=widths), cl=False)
    fns['ours bf16 autocast'] = stepper(HACNN(751, widths=widths), bf16=True)
    fns['ours bf16 autocast + fused Adam'] = stepper(HACNN(751, widths=widths), bf16=True, fused=True)
    fns['ours fp32, channels-last local branch'] = stepper(HACNN(751, widths=widths), cl_units=True)
    fns['ours bf16 autocast, channels-last local branch'] = stepper(HACNN(751, widths=widths), bf16=True, cl_units=True)
    if args.train_compile:
        fns['ours compiled fp32 + fused Adam'] = stepper(HACNN(751, widths=widths), fused=True, compile=True)
        fns['ours compiled bf16 + fused Adam'] = stepper(HACNN(751, widths=widths), bf16=True, fused=True, compile=True)
    res = throughput(fns, 32, rounds=max(2, args.rounds - 2), min_time=2 * args.min_time)
    out = stats(res, 'peer' if with_peer else today)
    vs_today = summarize(res, today)
    for k, v in out.items():
        v['gflops'] = v['images_s'] * tf['peer' if k == 'peer' else 'ours'] / 1e9
        v['ratio_vs_today'] = vs_today[k]['ratio']
        v['precision'] = 'bf16' if 'bf16' in k else 'fp32'
    return out

def train_flops(model):
    "FLOPs of one training step per image (forward + backward), by torch's FLOP counter."
    model.train(); x, y = torch.randn(4, 3, 160, 64), torch.randint(0, 10, (4,))
    with FlopCounterMode(display=False) as fc:
        g, l = model(x); hacnn_loss(g, l, y)[0].backward()
    return fc.get_total_flops() / 4

def make_folder(root:Path, n:int):
    "n Market-1501-sized (64×128) JPEGs of smooth random colour fields, named like Market's."
    from PIL import Image
    rng = np.random.default_rng(0); root.mkdir(parents=True, exist_ok=True); recs = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((64, 128), Image.BILINEAR)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, (128, 64, 3)), 0, 255).astype(np.uint8)
        p = root / f'{i // 4 + 1:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg'
        Image.fromarray(arr).save(p, quality=90); recs.append((str(p), i // 4 + 1, i % 6 + 1))
    return recs

def bench_loading(recs):
    "decode + resize + normalise throughput of hacnn_nbdev.data's test loader, by number of workers."
    out = {}
    for w in (0, 1, 2):
        t0 = time.perf_counter(); it = iter(build_test_loader(recs, batch_size=32, workers=w))
        n0 = len(next(it)[0]); t1 = time.perf_counter()           # first batch: includes starting the workers
        n = sum(len(b[0]) for b in it); t2 = time.perf_counter()
        out[f'{w} workers'] = {'images_s': (n0 + n) / (t2 - t0), 'steady_images_s': n / (t2 - t1),
                               'first_batch_seconds': t1 - t0, 'images': n0 + n}
        del it
    return out

def bench_folder(recs, fast, peer, workers):
    "JPEG folder -> features, loading included (a fresh loader each pass, as a one-off extraction would)."
    def extract(m):
        def f():
            with torch.no_grad():
                for xb, _, _ in build_test_loader(recs, batch_size=32, workers=workers): m(xb)
        return f
    res = throughput({'peer': extract(peer), 'ours optimized': extract(fast)}, len(recs),   # models are warm already
                     rounds=max(2, args.rounds - 2), min_time=0, warmup=False)
    return stats(res, 'peer')

def bench_evaluator():
    """Market-1501-sized evaluation from features: distance matrix + CMC/mAP, ours vs torchreid's.
    The gallery is always full size; the peer's Python evaluator takes ~40 ms per query here, so both rank the
    first `--peer-queries` queries for the ratio, and ours also runs the full 3,368."""
    fs = simulate_features(n_ids=750, n_query=3368, n_gallery=15913, n_distractors=2793, dim=1024, noise=1.9, seed=0)
    q, g = torch.from_numpy(fs.q_feats), torch.from_numpy(fs.g_feats)   # noise 1.9 at 1,024-d: mAP ≈ 0.75, like HA-CNN on Market
    def timed(f):
        t = time.perf_counter(); out = f(); return time.perf_counter() - t, out
    def run(k, nq):
        qs, lab = q[:nq], (fs.q_pids[:nq], fs.g_pids, fs.q_camids[:nq], fs.g_camids)
        if k == 'ours': dist, rank = (lambda: compute_distance(qs, g)), (lambda d: (lambda r: (r.cmc, r.mAP))(evaluate_rank(d, *lab)))
        else: dist, rank = (lambda: peer_distance.compute_distance_matrix(qs, g, 'euclidean').numpy()), (lambda d: peer_rank.eval_market1501(d, *lab, 50))
        td, d = timed(dist); tr, (cmc, mAP) = timed(lambda: rank(d))
        return {'queries': nq, 'seconds': td + tr, 'distance_seconds': td, 'rank_seconds': tr, 'queries_s': nq / (td + tr),
                'distance_gflops': 2 * nq * g.shape[0] * q.shape[1] / td / 1e9, 'mAP': float(mAP), 'rank1': float(np.asarray(cmc)[0]),
                'cmc': np.asarray(cmc)[:50]}
    nq = min(args.peer_queries, q.shape[0])
    res = {'peer': run('peer', nq), 'ours': run('ours', nq)}
    full = run('ours', q.shape[0]); full.pop('cmc')
    agree = {'max_abs_cmc': float(np.abs(res['ours'].pop('cmc') - res['peer'].pop('cmc')).max()),
             'abs_mAP': abs(res['ours']['mAP'] - res['peer']['mAP'])}
    return {'case': f'{q.shape[0]} queries × {g.shape[0]} gallery (2,793 distractors), {q.shape[1]}-d features, 6 cameras',
            **res, 'ours_full': full, 'ratio': res['peer']['seconds'] / res['ours']['seconds'], 'agree': agree}

# ---- the run ---------------------------------------------------------------------------------------------------------
def main():
    out_dir = Path(args.out); out_dir.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(','))) or {'eval', 'train', 'folder', 'evaluator'}
    R = {'command': ' '.join(['.venv/bin/python'] + sys.argv), 'machine': machine()}
    bf16 = cpu_bf16() is not None
    R['machine']['cpu_bf16'] = cpu_bf16()
    log(f"threads {args.threads} on {R['machine']['nproc']} cores ({R['machine']['cpu']}; bf16 units: {cpu_bf16()}); "
        f"load {os.getloadavg()}")
    if os.getloadavg()[0] > R['machine']['nproc']:
        log(f"WARNING: the machine is busy (load {os.getloadavg()[0]:.1f} on {R['machine']['nproc']} cores): multi-threaded runs stall on "
            "oversubscribed cores; ratios stay comparable (interleaved), absolute numbers do not. --threads 1 is steadier.")
    R['matmul_limit_gflops'] = matmul_limit(seconds=3.0)
    R['matmul_limit_bf16_gflops'] = matmul_limit(seconds=3.0, dtype=torch.bfloat16)
    log(f"matmul limits: fp32 {R['matmul_limit_gflops']:.0f}, bf16 {R['matmul_limit_bf16_gflops']:.0f} GFLOP/s")

    seed_everything(0)
    ours = trained_like(HACNN(751)).eval(); peer = trained_like(peer_model()).eval()
    x1 = torch.randn(1, 3, 160, 64); x32 = torch.randn(32, 3, 160, 64)
    flops = {'peer': count_flops(peer, x1), 'ours': count_flops(ours, x1)}
    R['flops_per_image'] = dict(flops)

    t = time.perf_counter(); fast = optimize_for_inference(ours, amp='off', example=x32[:4]); t_opt = time.perf_counter() - t
    with torch.no_grad():
        ref = ours(x32)
        R['parity'] = {'optimized_vs_eager_b32': check_parity(fast(x32), ref),
                       'optimized_vs_eager_b1': check_parity(fast(x32[:1]), ref[:1]), 'optimize_seconds': t_opt}
    log(f"optimize_for_inference: {t_opt:.1f} s; max |Δfeature| {R['parity']['optimized_vs_eager_b32']:.1e}")
    tmp = Path(tempfile.mkdtemp(prefix='hacnn_bench_'))
    if 'eval' in only:
        t = time.perf_counter(); path = export_onnx(ours, tmp / 'hacnn.onnx'); t_exp = time.perf_counter() - t
        onnx = OnnxFeatureExtractor(path, threads=args.threads)
        with torch.no_grad(): R['parity']['onnx_vs_eager_b32'] = check_parity(onnx(x32), ref)
        R['onnx'] = {'export_seconds': t_exp, 'MB': path.stat().st_size / 1e6, 'opset': 18}
        log(f"ONNX export {t_exp:.0f} s; max |Δfeature| {R['parity']['onnx_vs_eager_b32']:.1e}")
        R['eval_b32'] = bench_eval(ours, peer, onnx, 32, flops, bf16); log('eval b32', fmt(R['eval_b32']))
        R['eval_b1'] = bench_eval(ours, peer, onnx, 1, flops, bf16); log('eval b1', fmt(R['eval_b1']))
    if 'train' in only:
        paper, demo = (128, 256, 384), (32, 64, 96)
        R['train_flops_per_image'] = {'ours': train_flops(HACNN(751)), 'peer': train_flops(peer_model()),
                                      'ours_demo': train_flops(HACNN(751, widths=demo))}
        R['train_b32'] = bench_train(paper, R['train_flops_per_image'], True); log('train b32', fmt(R['train_b32']))
        tf_demo = {'ours': R['train_flops_per_image']['ours_demo'], 'peer': 0}
        R['train_demo_b32'] = bench_train(demo, tf_demo, False); log('train demo b32', fmt(R['train_demo_b32']))
    if 'folder' in only:
        recs = make_folder(tmp / 'folder', args.images)
        R['data_loading'] = bench_loading(recs); log('data loading', {k: round(v['images_s']) for k, v in R['data_loading'].items()})
        workers = max(R['data_loading'], key=lambda k: R['data_loading'][k]['images_s'])
        R['folder_workers'] = int(workers.split()[0])
        R['folder'] = bench_folder(recs, fast, peer, R['folder_workers']); log('folder -> features', fmt(R['folder']))
    if 'evaluator' in only:
        R['evaluator'] = bench_evaluator(); log('evaluator', {k: R['evaluator'][k] for k in ('ratio', 'agree')})
    R['machine']['load_avg_end'] = os.getloadavg(); R['seconds'] = time.perf_counter() - T0
    if (out_dir / 'metrics.json').exists():  # bench_metrics.py's run (make bench runs it first)
        mj = json.loads((out_dir / 'metrics.json').read_text())
        R['evaluator_vs_argsort'] = {k: c['ratio_vs_argsort'] for k, c in mj['cases'].items()}

    (out_dir / 'bench.json').write_text(json.dumps(R, indent=1))
    table = render(R); print(table); (out_dir / 'bench.md').write_text(table)
    if only >= {'eval', 'train', 'folder', 'evaluator'}: plot(R, out_dir / 'bench.png')
    log(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}" + (f", {out_dir / 'bench.png'}" if (out_dir / 'bench.png').exists() else ''))

def fmt(d): return {k: f"{v['images_s']:.1f}/s ×{v['ratio']:.2f}" for k, v in d.items()}

def render(R):
    m, lim, lim16 = R['machine'], R['matmul_limit_gflops'], R['matmul_limit_bf16_gflops']
    fl, tf = R['flops_per_image'], R.get('train_flops_per_image')
    L = [f"# HA-CNN speed, side by side with the peer", "",
         f"machine: {m['cpu']}, nproc {m['nproc']}, **threads {m['threads']}**, bf16 units: {m.get('cpu_bf16')}; torch {m['torch']}, "
         f"onnxruntime {m['onnxruntime']}; load average {m['load_avg_start'][0]:.2f} at start, {m['load_avg_end'][0]:.2f} at end",
         f"peer: {m['peer']}",
         f"matmul limits (2048² GEMM, best): **fp32 {lim:.0f} GFLOP/s, bf16 {lim16:.0f} GFLOP/s**; FLOPs/image: ours {fl['ours'] / 1e9:.3f} G, "
         f"peer {fl['peer'] / 1e9:.3f} G (eval)" + (f"; train step ours {tf['ours'] / 1e9:.2f} G, peer {tf['peer'] / 1e9:.2f} G, "
                                                  f"demo widths {tf['ours_demo'] / 1e9:.2f} G" if tf else ''),
         f"command: `{R['command']}` ({R['seconds']:.0f} s)", "",
         "| task | candidate | precision | images/s | ratio (wall) | ratio (CPU time) | GFLOP/s | % of fp32 limit | % of bf16 limit |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    names = {'eval_b32': 'eval b32 (vs peer)', 'eval_b1': 'eval b1 (vs peer)', 'train_b32': 'train b32, paper widths (vs peer)',
             'train_demo_b32': 'train b32, demo widths 32/64/96 (vs today)'}
    for task in names:
        for k, v in R.get(task, {}).items():
            L.append(f"| {names[task]} | {k} | {v.get('precision', 'fp32')} | {v['images_s']:.1f} | {v['ratio']:.2f} | "
                     f"{v['ratio_cpu_time']:.2f} | {v['gflops']:.1f} | {100 * v['gflops'] / lim:.0f}% | {100 * v['gflops'] / lim16:.1f}% |")
    if 'train_b32' in R:
        t = R['train_b32']
        L += ["", "training, paper widths, against today's step: " + ', '.join(
            f"{k} ×{v['ratio_vs_today']:.2f}" for k, v in t.items() if k != 'peer')]
    for k, v in R.get('folder', {}).items():
        L.append(f"| folder → features ({R['folder_workers']} workers) | {k} | fp32 | {v['images_s']:.1f} | {v['ratio']:.2f} | {v['ratio_cpu_time']:.2f} | | | |")
    if 'evaluator' in R:
        e = R['evaluator']
        for k in ('peer', 'ours'):
            L.append(f"| evaluator, {e[k]['queries']} queries (queries/s) | {k} | fp32 | {e[k]['queries_s']:.0f} | {1.0 if k == 'peer' else e['ratio']:.2f} | | "
                     f"{e[k]['distance_gflops']:.1f} (distances) | {100 * e[k]['distance_gflops'] / lim:.0f}% | |")
        f = e['ours_full']
        L.append(f"| evaluator, all {f['queries']} queries | ours | fp32 | {f['queries_s']:.0f} | | | {f['distance_gflops']:.1f} (distances) | "
                 f"{100 * f['distance_gflops'] / lim:.0f}% | |")
        L += ["", f"evaluator case: {e['case']}; all queries: mAP {f['mAP']:.3f}, rank-1 {f['rank1']:.3f} in {f['seconds']:.1f} s "
                  f"({f['distance_seconds']:.2f} s distances + {f['rank_seconds']:.2f} s ranking). On the {e['ours']['queries']}-query subset ours and the peer "
                  f"agree to {e['agree']['max_abs_cmc']:.1e} (CMC) and {e['agree']['abs_mAP']:.1e} (mAP); seconds: ours {e['ours']['distance_seconds']:.2f} "
                  f"distances + {e['ours']['rank_seconds']:.2f} ranking, peer {e['peer']['distance_seconds']:.2f} + {e['peer']['rank_seconds']:.2f}."]
    if 'data_loading' in R:
        L += ["", "| data loading (decode + resize + normalise, batch 32) | images/s, whole pass | images/s after the first batch | first batch (s) |",
              "|---|---:|---:|---:|"]
        L += [f"| {k} | {v['images_s']:.0f} | {v['steady_images_s']:.0f} | {v['first_batch_seconds']:.2f} |" for k, v in R['data_loading'].items()]
    p = R['parity']
    line = (f"parity (max |Δfeature| vs eager, batch 32): optimized {p['optimized_vs_eager_b32']:.1e}, "
            f"batch 1 {p['optimized_vs_eager_b1']:.1e}")
    if 'onnx' in R:
        o = R['onnx']
        line += (f"; ONNX/onnxruntime {p['onnx_vs_eager_b32']:.1e}. ONNX export {o['export_seconds']:.0f} s, {o['MB']:.1f} MB "
                 f"(opset {o['opset']})")
    if 'eval_b32' in R:
        rel = {k: v['max_rel_diff'] for k, v in R['eval_b32'].items() if 'max_rel_diff' in v and v['precision'] == 'bf16'}
        if rel: line += "; bf16 paths, max |Δfeature| / max |feature|: " + ', '.join(f"{k} {v:.1e}" for k, v in rel.items())
        comp = {f"{k} b{b}": v['compile_seconds'] for b in (32, 1) for k, v in R[f'eval_b{b}'].items() if 'compile_seconds' in v}
        if comp: line += "; compile seconds: " + ', '.join(f"{k} {v:.0f}" for k, v in comp.items())
    L += ["", line + "."]
    return '\n'.join(L + targets(R))

def targets(R):
    "Issue targets, each as met / not met with the number that decides it (and where the profile is)."
    best = lambda task, keep=lambda k, v: k != 'peer': max(
        ((v['ratio'], k) for k, v in R.get(task, {}).items() if keep(k, v)), default=None)
    rows = [('inference, batch 32, bf16 ≥ 4× the peer', best('eval_b32', lambda k, v: v.get('precision') == 'bf16'), 4),
            ('inference, batch 1 ≥ 6× the peer (any path)', best('eval_b1'), 6),
            ("training step, the paper's widths ≥ 2× the peer", best('train_b32'), 2),
            ("training step, the demo's widths ≥ 2× today's", best('train_demo_b32'), 2)]
    L = ['', '## Targets', '', '| target | best candidate | ratio | met |', '|---|---|---:|---|']
    for name, b, need in rows:
        if b: L.append(f"| {name} | {b[1]} | {b[0]:.2f} | {'yes' if b[0] >= need else 'no'} |")
    for k, r in R.get('evaluator_vs_argsort', {}).items():
        L.append(f"| evaluator ≤ 0.25× a full argsort, {k} regime (bench_metrics.py, 1 thread) | evaluate_rank | "
                 f"{r:.3f} | {'yes' if r <= 0.25 else 'no'} |")
    L += ['', "Where a target is not met, what stops it: the demo's narrow network spends two thirds of a "
          "training step in memory-bound passes (batch norm, ReLU backward, pooling, copies) that bf16 does "
          "not shrink — profile in `nbs/09_train.ipynb`, \"Precision on the CPU\"; the evaluator's floor for "
          "weak models and random distances is NumPy's sort of one row's values — `nbs/08_metrics.ipynb`'s "
          "closing note and `benchmarks/README.md`."]
    return L

def plot(R, path):
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 3, figsize=(19, 9), gridspec_kw={'width_ratios': [1.6, 1.3, 0.7]})
    rows = [(f"{t.replace('_', ' ')}: {k}", v) for t in ('eval_b32', 'eval_b1', 'train_b32', 'train_demo_b32', 'folder')
            for k, v in R[t].items() if k != 'peer' and not k.startswith('ours today')]
    rows.append((f"evaluator ({R['evaluator']['ours']['queries']} queries): ours", {'ratio': R['evaluator']['ratio'], 'images_s': R['evaluator']['ours']['queries_s']}))
    ax = axs[0]; y = np.arange(len(rows))
    ax.barh(y, [v['ratio'] for _, v in rows], color=['tab:green' if v['ratio'] >= 1 else 'tab:red' for _, v in rows])
    ax.axvline(1, color='k', lw=1); ax.axvline(1.5, color='grey', ls='--', lw=1); ax.set_xscale('log', base=2)
    ax.set_yticks(y, [n for n, _ in rows], fontsize=8); ax.invert_yaxis()
    for i, (_, v) in enumerate(rows): ax.text(v['ratio'], i, f" ×{v['ratio']:.2f} ({v['images_s']:.0f}/s)", va='center', fontsize=7)
    ax.set_xlim(0.5, max(v['ratio'] for _, v in rows) * 4)
    ax.set_xlabel('ours / peer (train demo: / today), wall clock (log scale; 1 = same speed; dashed: 1.5×)')
    ax.set_title(f"speed vs torchreid HACNN — {R['machine']['threads']} threads, {R['machine']['cpu']}", fontsize=9)
    ax = axs[1]; lim, lim16 = R['matmul_limit_gflops'], R['matmul_limit_bf16_gflops']
    g = [(f"{t.replace('_', ' ')}: {k}", v['gflops']) for t in ('eval_b32', 'train_b32') for k, v in R[t].items()]
    g += [(f'evaluator distances: {k}', R['evaluator'][k]['distance_gflops']) for k in ('peer', 'ours')]
    ax.barh(range(len(g)), [v for _, v in g], color=['grey' if 'peer' in n else 'tab:blue' for n, _ in g]); ax.axvline(lim, color='r', lw=1.5)
    ax.text(lim, len(g) - 0.6, f' fp32 matmul limit\n {lim:.0f} GFLOP/s', color='r', fontsize=8, va='bottom')
    ax.text(lim * 1.02, 0, f' (bf16 limit: {lim16:.0f} GFLOP/s)', color='r', fontsize=8, va='top')
    ax.set_yticks(range(len(g)), [n for n, _ in g], fontsize=8); ax.invert_yaxis(); ax.set_xlabel('achieved GFLOP/s')
    ax.set_xlim(0, max(lim, max(v for _, v in g)) * 1.35); ax.set_title('achieved vs the machine\'s measured limits', fontsize=9)
    ax = axs[2]; dl = R['data_loading']; xs = [k.split()[0] for k in dl]
    ax.bar(xs, [v['images_s'] for v in dl.values()], color='tab:purple', label='whole pass (incl. worker start)')
    ax.plot(xs, [v['steady_images_s'] for v in dl.values()], 'ko', label='after the first batch')
    need = R['eval_b32']['ours optimized']['images_s']
    ax.axhline(need, color='tab:green', ls='--', label=f'model, optimized b32 ({need:.0f}/s)')
    ax.set_xlabel('DataLoader workers'); ax.set_ylabel('images/s'); ax.legend(fontsize=7, loc='upper right')
    ax.set_title(f"data loading, {dl['0 workers']['images']} JPEGs", fontsize=9)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)

if __name__ == '__main__': main()
