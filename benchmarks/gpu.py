#!/usr/bin/env python
"""HA-CNN on a GPU, one command: training and inference images/s and peak GPU memory.

    python benchmarks/gpu.py                   # paper's network; AMP bf16 if supported, else fp16
    python benchmarks/gpu.py --compile         # + torch.compile (compile time reported apart)
    python benchmarks/gpu.py --amp fp16 --batch 64    # choose the precision and the training batch
    python benchmarks/gpu.py --dry-run         # the same code on the CPU, tiny network, 2 steps (CI)

What it runs, on synthetic batches already on the device (so it measures the network, not the
data pipeline): the training step of `hacnn_train` — forward, the loss of Eq. 7 on both branches,
backward, Adam (Sec. 4) — with channels-last memory, `torch.backends.cudnn.benchmark` (autotuned
convolutions), autocast in the chosen precision (a GradScaler with fp16) and, with --compile,
`torch.compile`; and inference through `hacnn_nbdev.deploy.optimize_for_inference` (BN folded,
channels-last, autocast) at several batch sizes. Every configuration is also run in fp32 for the
ratio. Peak memory is
`torch.cuda.max_memory_allocated` per configuration (on the CPU: the process's peak resident
memory so far).

Prints a table and writes a JSON file (--out, default benchmarks/results/gpu.json).
"""
import argparse, json, math, os, platform, resource, sys, time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'fp16', 'off'),
                help="autocast dtype: auto = bf16 where supported, else fp16 (CPU: bf16 or fp32)")
ap.add_argument('--batch', type=int, default=32, help='training batch (Sec. 4: 32)')
ap.add_argument('--infer-batches', default='1,32,256', help='inference batches, comma-separated')
ap.add_argument('--widths', default='128,256,384', help='Inception widths d1,d2,d3 (Sec. 4)')
ap.add_argument('--classes', type=int, default=751, help="classifier outputs (Market-1501's 751)")
ap.add_argument('--steps', type=int, default=50, help='timed training steps per configuration')
ap.add_argument('--warmup', type=int, default=10, help='untimed steps (autotuning, compiling)')
ap.add_argument('--seconds', type=float, default=5.0, help='timed seconds per inference batch size')
ap.add_argument('--compile', action='store_true', help='torch.compile (train and infer)')
ap.add_argument('--no-fp32', action='store_true', help='skip the fp32 reference runs')
ap.add_argument('--device', default='cuda', help="'cuda', 'cuda:1', ...")
ap.add_argument('--out', default='benchmarks/results/gpu.json', help='JSON file to write')
ap.add_argument('--dry-run', action='store_true',
                help='on the CPU: widths 16,32,48, batch 4, 2 steps; checks the script, not speed')
args = ap.parse_args()
if args.dry_run:
    args.device, args.widths, args.batch, args.classes = 'cpu', '16,32,48', 4, 10
    args.steps, args.warmup, args.seconds, args.infer_batches = 2, 1, 0.0, '1,4'

import torch
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.train import hacnn_loss
from hacnn_nbdev.deploy import optimize_for_inference, count_flops, cpu_bf16

dev = torch.device(args.device)
if dev.type == 'cuda' and not torch.cuda.is_available():
    sys.exit(f"--device {args.device}: no CUDA GPU is visible to torch {torch.__version__}; "
             "run on a machine with one, or check the script with --dry-run")
cuda = dev.type == 'cuda'


def amp_dtype(amp):
    "The autocast dtype of `amp` on this device (None: fp32)."
    if amp == 'off': return None
    if cuda:
        if amp == 'auto':
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    if amp == 'fp16': return None                        # CPU fp16 convolutions: slow or missing
    return torch.bfloat16 if amp == 'bf16' or cpu_bf16() else None


def name(dt): return {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}[dt]


def sync():
    if cuda: torch.cuda.synchronize(dev)


def reset_peak():
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mb():
    if cuda: return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: kB


def widths(): return tuple(int(w) for w in args.widths.split(','))


def bench_train(dt):
    "Training steps/s of a fresh network in autocast dtype `dt` (None: fp32)."
    torch.manual_seed(0)
    model = HACNN(args.classes, widths=widths()).to(dev, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999), fused=True)
    scaler = torch.amp.GradScaler(dev.type, enabled=cuda and dt == torch.float16)
    net = torch.compile(model) if args.compile else model
    x = torch.randn(args.batch, 3, 160, 64, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,), device=dev)
    losses = []

    def step():
        with torch.autocast(dev.type, dtype=dt, enabled=dt is not None):
            g, l = net(x)
        loss, _ = hacnn_loss(g.float(), l.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    reset_peak()
    t = time.perf_counter()
    for _ in range(args.warmup): losses.append(step().item())
    sync()
    t_warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps): last = step()
    sync()
    dt_s = time.perf_counter() - t
    losses.append(last.item())
    return {'images_s': args.steps * args.batch / dt_s, 'step_ms': 1e3 * dt_s / args.steps,
            'warmup_seconds': t_warm, 'peak_memory_MB': peak_mb(), 'loss_first': losses[0],
            'loss_last': losses[-1], 'steps': args.steps, 'batch': args.batch}


def bench_infer(dt):
    "Inference images/s of `optimize_for_inference` in `dt` at each batch size."
    torch.manual_seed(0)
    model = HACNN(args.classes, widths=widths()).to(dev).eval()
    amp = {None: 'off', torch.bfloat16: 'bf16', torch.float16: 'fp16'}[dt]
    out = {}
    for b in (int(v) for v in args.infer_batches.split(',')):
        x = torch.randn(b, 3, 160, 64, device=dev)
        reset_peak()
        t = time.perf_counter()
        tol = 1e-2 if cuda and dt is None else None       # fp32 convolutions may run in TF32 on GPUs
        fast = optimize_for_inference(model, amp=amp, compile=args.compile, device=dev, example=x,
                                      atol=tol)
        for _ in range(3): fast(x)                       # cuDNN autotuning, lazy allocations
        sync()
        t_prep, n, t = time.perf_counter() - t, 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t < args.seconds:
            fast(x)
            n += 1
            if n % 10 == 0 or args.seconds == 0: sync()
        sync()
        secs = time.perf_counter() - t
        out[f'b{b}'] = {'batch': b, 'images_s': n * b / secs, 'ms_per_batch': 1e3 * secs / n,
                        'prepare_seconds': t_prep, 'peak_memory_MB': peak_mb(), 'calls': n}
        del fast
    return out


def machine():
    m = {'device': str(dev), 'torch': torch.__version__, 'python': platform.python_version(),
         'threads': torch.get_num_threads()}
    if cuda:
        p = torch.cuda.get_device_properties(dev)
        m.update(gpu=p.name, memory_GB=p.total_memory / 2 ** 30, capability=f'{p.major}.{p.minor}',
                 cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                 bf16=torch.cuda.is_bf16_supported())
    else: m.update(gpu=None, cpu=platform.processor() or platform.machine(), cpu_bf16=cpu_bf16())
    return m


def main():
    t0 = time.perf_counter()
    if cuda: torch.backends.cudnn.benchmark = True      # autotuned convolutions for fixed shapes
    dts = [amp_dtype(args.amp)] + ([] if args.no_fp32 else [None])
    dts = list(dict.fromkeys(dts))                       # fp32 once when the amp is fp32 already
    x1 = torch.randn(1, 3, 160, 64)
    R = {'command': ' '.join([sys.executable] + sys.argv), 'dry_run': args.dry_run,
         'machine': machine(), 'widths': list(widths()), 'channels_last': True,
         'cudnn_benchmark': cuda, 'compile': args.compile,
         'gflops_per_image': count_flops(HACNN(args.classes, widths=widths()).eval(), x1) / 1e9,
         'train': {}, 'infer': {}}
    for dt in dts:
        R['train'][name(dt)] = bench_train(dt)
        print(f"train {name(dt)}: {R['train'][name(dt)]['images_s']:.1f} images/s", flush=True)
        R['infer'][name(dt)] = bench_infer(dt)
        rates = ', '.join(f"{k} {v['images_s']:.1f}/s" for k, v in R['infer'][name(dt)].items())
        print(f"infer {name(dt)}: {rates}", flush=True)
    R['seconds'] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(R, indent=1))
    print(render(R))
    print(f"wrote {out}")


def render(R):
    m, g = R['machine'], R['gflops_per_image']
    where = m['gpu'] or f"CPU {m.get('cpu')} (dry run: checks the script, not the speed)"
    L = [f"HA-CNN widths {R['widths']} on {where}; torch {m['torch']}; channels-last; "
         f"cudnn.benchmark {R['cudnn_benchmark']}; compile {R['compile']}; "
         f"{g:.3f} GFLOPs/image (eval)",
         '', '| task | precision | images/s | × fp32 | peak memory (MB) | warm-up / prepare (s) |',
         '|---|---|---:|---:|---:|---:|']
    base = R['train'].get('fp32')
    for k, v in R['train'].items():
        ratio = f"{v['images_s'] / base['images_s']:.2f}" if base else ''
        L.append(f"| train b{v['batch']} | {k} | {v['images_s']:.1f} | {ratio} | "
                 f"{v['peak_memory_MB']:.0f} | {v['warmup_seconds']:.1f} |")
    base = R['infer'].get('fp32', {})
    for k, rows in R['infer'].items():
        for b, v in rows.items():
            ratio = f"{v['images_s'] / base[b]['images_s']:.2f}" if b in base else ''
            L.append(f"| infer {b} | {k} | {v['images_s']:.1f} | {ratio} | "
                     f"{v['peak_memory_MB']:.0f} | {v['prepare_seconds']:.1f} |")
    return '\n'.join(L)


if __name__ == '__main__': main()
