"""hacnn_nbdev.deploy as the installed package: parity of every inference path with eager PyTorch, fallbacks, faults.

Tiny widths keep it fast; BN layers get random running statistics so that folding has something to fold.
CUDA / mixed-precision tests run only where a GPU is present (skipped on the CPU-only CI machines).
"""
import json, math, subprocess, sys, warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import hacnn_nbdev.deploy as deploy
from hacnn_nbdev.core import ConvBlock, seed_everything
from hacnn_nbdev.checkpoint import save_checkpoint, load_model, model_checkpoint
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.hard_attention import HardAttention
from hacnn_nbdev.deploy import (fold_bn, fold_batchnorms, channels_last_inputs, ToChannelsLast, inference_precision,
                                InferenceModel, optimize_for_inference, check_parity, export_onnx, OnnxFeatureExtractor,
                                count_flops, throughput, summarize, cpu_flags, cpu_bf16, cast_network, matmul_limit,
                                precision_parity, parity_table, REDUCED_RTOL)

TINY = dict(widths=(16, 32, 48), feat_dim=32)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none on this machine)')


def trained_like(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=g) - .5); bn.running_var.copy_(.5 + 1.5 * torch.rand(n, generator=g))
            if bn.affine:
                with torch.no_grad(): bn.weight.copy_(.5 + torch.rand(n, generator=g)); bn.bias.copy_(.4 * torch.rand(n, generator=g) - .2)
    return m


def images(n=3, h=160, w=64, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def tiny():
    seed_everything(0)
    return trained_like(HACNN(7, **TINY)).eval()


@pytest.fixture(scope='module')
def fast(tiny):
    return optimize_for_inference(tiny, amp='off')


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    "As on a CPU without bf16 units (or off Linux): `cpu_bf16` finds none."
    monkeypatch.setattr(deploy, 'cpu_bf16', lambda flags=None: None)


# ---- BN folding ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('affine', [True, False])
def test_fold_bn_conv(bias, affine):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias)
    bn = trained_like(nn.BatchNorm2d(6, affine=affine)).eval()
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad(): torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    assert (conv.bias is None) == (not bias)                       # the original layer is untouched


def test_fold_bn_linear_and_refusals():
    lin, bn = nn.Linear(5, 3), trained_like(nn.BatchNorm1d(3)).eval()
    x = torch.randn(4, 5)
    with torch.no_grad(): torch.testing.assert_close(fold_bn(lin, bn)(x), bn(lin(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='running statistics'): fold_bn(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))


def test_fold_batchnorms_whole_model(tiny):
    m = HACNN(7, **TINY); m.load_state_dict(tiny.state_dict()); m.eval()
    n_bn = sum(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert fold_batchnorms(m) == n_bn > 0
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    x = images()
    with torch.no_grad(): assert (m(x) - tiny(x)).abs().max() < 1e-5
    with pytest.raises(ValueError, match='eval-mode'): fold_batchnorms(HACNN(3, **TINY))


def test_fold_batchnorms_leaves_unfoldable_alone():
    seq = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3)).eval()  # BN after ReLU: not foldable
    trained_like(seq)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad(): want = seq(x)
    assert fold_batchnorms(seq) == 0
    with torch.no_grad(): torch.testing.assert_close(seq(x), want)


def test_channels_last_inputs():
    m = HACNN(7, **TINY).eval()
    assert channels_last_inputs(m) == 9
    t = torch.randn(2, 3, 4, 5)
    assert ToChannelsLast()(t).is_contiguous(memory_format=torch.channels_last)
    assert ToChannelsLast()(torch.randn(2, 3)).shape == (2, 3)


# ---- optimize_for_inference ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('n', [1, 3, 8])
def test_optimized_parity_batch_sizes(tiny, fast, n):
    x = images(n, seed=n)
    with torch.no_grad(): err = check_parity(fast(x), tiny(x), 1e-4)
    assert err < 1e-4 and fast(x).shape == (n, 2 * TINY['feat_dim'])


def test_optimized_other_input_size(tiny, fast):
    x = images(2, 256, 128)
    with torch.no_grad(): check_parity(fast(x), tiny(x), 1e-4)


@pytest.mark.parametrize('fold,cl', [(False, False), (True, False), (False, True)])
def test_optimized_flag_combinations(tiny, fold, cl):
    m = optimize_for_inference(tiny, fold_bn=fold, channels_last=cl, amp='off')
    x = images()
    with torch.no_grad(): check_parity(m(x), tiny(x), 1e-4)
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == (not fold)


@pytest.mark.parametrize('flag', ['spatial_attention', 'channel_attention', 'hard_attention', 'cross_attention'])
def test_optimized_ablations(flag):
    m = trained_like(HACNN(5, **TINY, **{flag: False})).eval()
    f = optimize_for_inference(m, amp='off')
    x = images()
    with torch.no_grad(): check_parity(f(x), m(x), 1e-4)


def test_original_untouched_and_mode_restored(tiny):
    m = HACNN(7, **TINY); m.load_state_dict(tiny.state_dict()); m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f = optimize_for_inference(m)
    assert m.training                                               # caller's mode is back
    for k, v in m.state_dict().items(): assert torch.equal(v, before[k]), k   # BN statistics not updated, weights not folded
    assert isinstance(f, InferenceModel) and not any(p.requires_grad for p in f.parameters())
    out = f(images())
    assert not out.requires_grad and out.dtype == torch.float32


def test_from_checkpoint_to_deployment(tmp_path, tiny):
    save_checkpoint(model_checkpoint(tiny, epoch=1), tmp_path / 'm.pt')
    x = images()
    for amp, tol in (('off', 1e-4), ('bf16', None)):
        f = optimize_for_inference(load_model(tmp_path / 'm.pt'), amp=amp)
        with torch.no_grad(): check_parity(f(x), tiny(x), tol or REDUCED_RTOL * tiny(x).abs().max().item())


def test_flops_unchanged_by_optimization(tiny, fast):
    x = images(1)
    assert count_flops(fast, x) == count_flops(tiny, x) > 0


def test_check_parity_refuses():
    a = torch.zeros(2, 4)
    assert check_parity(a, a) == 0
    with pytest.raises(ValueError, match='differ'): check_parity(a + 1e-3, a)
    with pytest.raises(ValueError, match='shape'): check_parity(a[:, :2], a)
    with pytest.raises(ValueError, match='differ'): check_parity(a * float('nan'), a)   # NaN never passes


# ---- precision, devices, compile fallbacks -----------------------------------------------------------------------

def test_inference_precision_choices():
    assert inference_precision('cpu', 'off') is None and inference_precision('cpu', None) is None
    assert inference_precision('cpu') == (torch.bfloat16 if cpu_bf16() else None)   # 'auto': the CPU decides
    assert inference_precision('cuda') == torch.float16                 # dtype choice only; no GPU is touched
    assert inference_precision('cuda', 'bf16') == torch.bfloat16 and inference_precision('cpu', 'bf16') == torch.bfloat16
    with pytest.warns(UserWarning, match='fp32'): assert inference_precision('cpu', 'fp16') is None
    with pytest.raises(ValueError, match='unknown amp'): inference_precision('cpu', 'int8')


def test_fp16_on_cpu_falls_back_to_fp32(tiny):
    with pytest.warns(UserWarning, match='fp32'): f = optimize_for_inference(tiny, amp='fp16')
    assert f.dtype is None
    x = images()
    with torch.no_grad(): check_parity(f(x), tiny(x), 1e-4)


def test_bf16_on_cpu(tiny):
    f = optimize_for_inference(tiny, amp='bf16')
    x = images(4)
    with torch.no_grad(): want = tiny(x)
    err = check_parity(f(x), want, REDUCED_RTOL * want.abs().max().item())
    assert f(x).dtype == torch.float32 and err > 0 and f.cast and f.dtype == torch.bfloat16
    assert {p.dtype for p in f.parameters()} == {torch.bfloat16}                  # a bf16 network, not autocast
    assert not any(p.requires_grad for p in f.parameters())
    assert f(images(1)).shape == (1, 2 * TINY['feat_dim'])
    assert tiny.stem[0].weight.dtype == torch.float32                             # the original is untouched


def test_auto_precision_follows_the_cpu(tiny, no_bf16_cpu):
    assert inference_precision('cpu') is None and inference_precision('cpu', 'bf16') == torch.bfloat16
    f = optimize_for_inference(tiny)                                              # 'auto' on a CPU without bf16
    x = images()
    assert f.dtype is None
    with torch.no_grad(): check_parity(f(x), tiny(x), 1e-4)


def test_auto_precision_on_a_bf16_cpu(tiny, monkeypatch):
    monkeypatch.setattr(deploy, 'cpu_bf16', lambda flags=None: 'amx_bf16')
    assert inference_precision('cpu') == torch.bfloat16 and optimize_for_inference(tiny).dtype == torch.bfloat16
    assert inference_precision('cuda') == torch.float16                          # a GPU is not a CPU


def test_cast_network_samples_regions_in_fp32():
    net = cast_network(trained_like(HACNN(5, **TINY)).eval(), torch.bfloat16)
    hard = [x for x in net.modules() if isinstance(x, HardAttention)]
    assert hard and all('sample' in vars(h) for h in hard)                      # the method is replaced per module
    x = torch.randn(2, 16, 40, 16, dtype=torch.bfloat16)
    theta = torch.zeros(2, hard[0].T, 2, dtype=torch.bfloat16)
    out = hard[0].sample(x, theta)
    assert out.dtype == torch.bfloat16
    with torch.no_grad(): want = HardAttention.sample(hard[0].float(), x.float(), theta.float())
    torch.testing.assert_close(out.float(), want, atol=0.02, rtol=0.02)


def tiny_world(root, n_ids=4, cams=2, per_cam=2):
    "A few JPEGs named like Market's, each identity a colour: query = first image per (id, cam)."
    from PIL import Image
    rng, recs = np.random.default_rng(0), []
    for pid in range(1, n_ids + 1):
        base = rng.integers(0, 256, 3)
        for cam in range(cams):
            for k in range(per_cam):
                arr = np.clip(base + rng.integers(-30, 31, (128, 64, 3)), 0, 255).astype(np.uint8)
                path = root / f'{pid:04d}_c{cam + 1}s1_{k:06d}_00.jpg'
                Image.fromarray(arr).save(path)
                recs.append((str(path), pid, cam))
    q = [r for r in recs if r[0].endswith('_000000_00.jpg')]
    return SimpleNamespace(query=q, gallery=[r for r in recs if r not in q])


def test_precision_parity(tmp_path, tiny):
    ds = tiny_world(tmp_path)
    rows = precision_parity(tiny, ds, amps=('off', 'off', 'bf16'), batch_size=5)
    a, b, c = rows
    assert [r['dtype'] for r in rows] == ['float32', 'float32', 'bfloat16']
    assert a['images'] == len(ds.query) + len(ds.gallery) and a['max_diff'] == b['max_diff'] == 0
    assert (a['rank1'], a['mAP'], a['mINP']) == (b['rank1'], b['mAP'], b['mINP']) and b['same_top1'] == 100
    assert all(0 <= r[k] <= 100 for r in rows for k in ('rank1', 'mAP', 'mINP', 'same_top1'))
    assert 0 < c['max_diff'] < REDUCED_RTOL * c['max_feature']
    table = parity_table(rows)
    assert table.count('\n') == 4 and 'bfloat16' in table and '+0.00 / +0.00 / +0.00' in table


# ---- CPU detection -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('text, want', [
    ('processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n', 'amx_bf16'),
    ('processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n', 'avx512_bf16'),
    ('processor\t: 0\nflags\t\t: fpu sse avx2 fma\n', None),
    ('processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n', None),                # ARM: not claimed
    ('', None)])
def test_cpu_flags_and_bf16(tmp_path, text, want):
    p = tmp_path / 'cpuinfo'
    p.write_text(text)
    flags = cpu_flags(p)
    assert cpu_bf16(flags) == want and isinstance(flags, frozenset)


def test_cpu_bf16_elsewhere(monkeypatch):
    assert cpu_flags('/no/such/cpuinfo') == frozenset()
    monkeypatch.setattr(deploy, 'cpu_flags', lambda path='/proc/cpuinfo': frozenset())   # no /proc: torch's probe
    assert cpu_bf16() in (None, 'amx_bf16', 'avx512_bf16')
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: False)            # torch without oneDNN
    assert cpu_bf16({'amx_bf16'}) is None


def test_matmul_limit_dtypes():
    for dt in (torch.float32, torch.bfloat16):
        g = matmul_limit(n=128, seconds=0.05, dtype=dt)
        assert math.isfinite(g) and g > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given when CUDA is absent')
def test_cuda_requested_without_gpu(tiny):
    with pytest.raises(RuntimeError, match='no CUDA GPU'): optimize_for_inference(tiny, device='cuda')


def test_compile_failure_keeps_eager(tiny, monkeypatch):
    def broken(*a, **k): raise RuntimeError('no C++ compiler')
    monkeypatch.setattr(torch, 'compile', broken)
    with pytest.warns(UserWarning, match='torch.compile failed'): f = optimize_for_inference(tiny, compile=True, amp='off')
    x = images()
    with torch.no_grad(): check_parity(f(x), tiny(x), 1e-4)


@cuda
def test_cuda_fp16_path(tiny):
    f = optimize_for_inference(tiny, device='cuda')
    assert f.dtype == torch.float16 and f.device.type == 'cuda'
    x = images(4)
    with torch.no_grad(): check_parity(f(x).cpu(), tiny(x), 5e-2)     # input on the CPU is moved by the module


@cuda
def test_cuda_fp32_parity(tiny):
    f = optimize_for_inference(tiny, device='cuda', amp='off')
    x = images(4)
    with torch.no_grad(): check_parity(f(x).cpu(), tiny(x), 1e-3)


# ---- ONNX ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def onnx_file(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp('onnx') / 'sub' / 'tiny.onnx')   # parent folder is created


@pytest.mark.parametrize('n', [1, 4])
def test_onnx_parity_dynamic_batch(tiny, onnx_file, n):
    ort = OnnxFeatureExtractor(onnx_file, threads=1)
    x = images(n, seed=10 + n)
    with torch.no_grad(): assert check_parity(ort(x), tiny(x), 1e-4) < 1e-4
    assert ort(x.numpy()).shape == (n, 2 * TINY['feat_dim'])


def test_onnx_file_is_valid(onnx_file):
    import onnx
    m = onnx.load(str(onnx_file)); onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ['images'] and [o.name for o in m.graph.output] == ['features']


def test_onnx_needs_onnxscript(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxscript', None)              # as if it were not installed
    with pytest.raises(ImportError, match='onnxscript'): export_onnx(tiny, tmp_path / 'x.onnx')
    assert not (tmp_path / 'x.onnx').exists()


# ---- measuring -----------------------------------------------------------------------------------------------------

def test_throughput_and_summary():
    calls = {'a': 0, 'b': 0}
    def f(k): calls[k] += 1
    r = throughput({'a': lambda: f('a'), 'b': lambda: f('b')}, batch=2, rounds=3, min_time=0.0)
    assert len(r['a']['wall']) == len(r['b']['cpu']) == 3 and calls['a'] >= 4    # warm-up + at least one call per round
    s = summarize(r, 'a')
    assert s['a']['ratio'] == 1.0 and s['b']['median'] > 0
    assert 'ratio' not in summarize(r)['a']
    calls['a'] = 0
    throughput({'a': lambda: f('a')}, batch=1, rounds=2, min_time=0.0, warmup=False)
    assert calls['a'] == 2                                                        # no warm-up call


# ---- benchmarks/gpu.py: its CPU dry run (the GPU run itself needs a GPU) ------------------------------------------

def test_gpu_benchmark_dry_run(tmp_path):
    out = tmp_path / 'gpu.json'
    script = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu.py'
    env = {**__import__('os').environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, str(script), '--dry-run', '--out', str(out)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    R = json.loads(out.read_text())
    assert R['dry_run'] and R['machine']['device'] == 'cpu' and R['channels_last'] is True
    assert {'widths', 'compile', 'cudnn_benchmark', 'gflops_per_image', 'train', 'infer'} <= set(R)
    assert 'fp32' in R['train'] and set(R['train']) == set(R['infer'])
    for v in R['train'].values():
        assert {'images_s', 'step_ms', 'peak_memory_MB', 'loss_first', 'loss_last', 'batch'} <= set(v)
        assert all(math.isfinite(v[k]) and v[k] > 0 for k in ('images_s', 'step_ms', 'peak_memory_MB', 'loss_last'))
    for rows in R['infer'].values():
        assert set(rows) == {'b1', 'b4'}
        for v in rows.values():
            assert math.isfinite(v['images_s']) and v['images_s'] > 0 and v['peak_memory_MB'] > 0
    assert '| train b4 | fp32 |' in r.stdout                                   # the table is printed
