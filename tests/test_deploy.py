"""hacnn_nbdev.deploy as the installed package: parity of every inference path with eager PyTorch, fallbacks, faults.

Tiny widths keep it fast; BN layers get random running statistics so that folding has something to fold.
CUDA / mixed-precision tests run only where a GPU is present (skipped on the CPU-only CI machines).
"""
import sys, warnings

import pytest
import torch
from torch import nn

from hacnn_nbdev.core import ConvBlock, save_checkpoint, seed_everything
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.deploy import (fold_bn, fold_batchnorms, channels_last_inputs, ToChannelsLast, inference_precision,
                                InferenceModel, optimize_for_inference, check_parity, export_onnx, OnnxFeatureExtractor,
                                count_flops, throughput, summarize)

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
    return optimize_for_inference(tiny)


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
    m = optimize_for_inference(tiny, fold_bn=fold, channels_last=cl)
    x = images()
    with torch.no_grad(): check_parity(m(x), tiny(x), 1e-4)
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == (not fold)


@pytest.mark.parametrize('flag', ['spatial_attention', 'channel_attention', 'hard_attention', 'cross_attention'])
def test_optimized_ablations(flag):
    m = trained_like(HACNN(5, **TINY, **{flag: False})).eval()
    f = optimize_for_inference(m)
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
    ck = {'format': 'hacnn_nbdev.checkpoint/1', 'model': tiny.state_dict(), 'model_kwargs': tiny.model_kwargs, 'epoch': 1}
    save_checkpoint(ck, tmp_path / 'm.pt')
    f = optimize_for_inference(HACNN.from_checkpoint(tmp_path / 'm.pt'))
    x = images()
    with torch.no_grad(): check_parity(f(x), tiny(x), 1e-4)


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
    assert inference_precision('cpu') is None and inference_precision('cpu', 'off') is None and inference_precision('cpu', None) is None
    assert inference_precision('cuda') == torch.float16                 # dtype choice only; no GPU is touched
    assert inference_precision('cuda', 'bf16') == torch.bfloat16 and inference_precision('cpu', 'bf16') == torch.bfloat16
    with pytest.warns(UserWarning, match='fp32'): assert inference_precision('cpu', 'fp16') is None
    with pytest.raises(ValueError, match='unknown amp'): inference_precision('cpu', 'int8')


def test_fp16_on_cpu_falls_back_to_fp32(tiny):
    with pytest.warns(UserWarning, match='fp32'): f = optimize_for_inference(tiny, amp='fp16')
    assert f.dtype is None
    x = images()
    with torch.no_grad(): check_parity(f(x), tiny(x), 1e-4)


def test_bf16_autocast_on_cpu(tiny):
    f = optimize_for_inference(tiny, amp='bf16')
    x = images()
    with torch.no_grad(): err = check_parity(f(x), tiny(x), 5e-2)
    assert f(x).dtype == torch.float32 and err > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given when CUDA is absent')
def test_cuda_requested_without_gpu(tiny):
    with pytest.raises(RuntimeError, match='no CUDA GPU'): optimize_for_inference(tiny, device='cuda')


def test_compile_failure_keeps_eager(tiny, monkeypatch):
    def broken(*a, **k): raise RuntimeError('no C++ compiler')
    monkeypatch.setattr(torch, 'compile', broken)
    with pytest.warns(UserWarning, match='torch.compile failed'): f = optimize_for_inference(tiny, compile=True)
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
