"""hacnn_nbdev.torchreid_compat against torchreid 0.2.5 itself, with random weights: the converted model gives
torchreid's features and logits, the converter reads torchreid's files and refuses what it cannot use, the
command works, and the project's other paths (attention pictures, evaluation, fused model, ONNX) take the variant.

torchreid's package __init__ needs torchvision, so only its model file is imported, by path; tests that need it
are skipped when torchreid is not installed.
"""
import contextlib, copy, importlib.util, io, os, pickle, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hacnn_nbdev.checkpoint import CheckpointError, load_checkpoint, load_model
from hacnn_nbdev.model import HACNN, model_complexity
from hacnn_nbdev.torchreid_compat import (TORCHREID_INPUT, TorchreidHACNN, TorchreidInceptionA, convert_cli,
                                          convert_file, convert_main, convert_torchreid, load_torchreid,
                                          read_torchreid, save_converted, torchreid_key, torchreid_kwargs)

SPEC = importlib.util.find_spec('torchreid')
needs_torchreid = pytest.mark.skipif(SPEC is None, reason='torchreid is not installed (pip install torchreid==0.2.5)')
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}


# ---- torchreid's model, random but non-trivial weights ------------------------------------------------------------

def torchreid_hacnn():
    "torchreid's reid/models/hacnn.py as a module (its package __init__ needs torchvision)."
    f = Path(SPEC.submodule_search_locations[0]) / 'reid/models/hacnn.py'
    spec = importlib.util.spec_from_file_location('_torchreid_hacnn', f)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def pictures(n, seed):
    "Smooth random colour fields plus noise: images that differ enough for theta to differ."
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.randn(n, 3, 8, 4, generator=g), size=(160, 64), mode='bilinear')
    return smooth + 0.3 * torch.randn(n, 3, 160, 64, generator=g)


def run_theirs(m, x):
    "torchreid's forward without its deprecation warnings, its theta matrices built in x's dtype."
    old = torch.get_default_dtype()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.set_default_dtype(x.dtype)                 # transform_theta builds theta with torch.zeros
        try: return m(x)
        finally: torch.set_default_dtype(old)


def randomised(m, seed=0):
    "Random conv biases, BN affine parameters and hard-attention FCs; BN statistics from 16 pictures, perturbed."
    g = torch.Generator().manual_seed(seed)
    u = lambda n, lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for conv in [c for c in m.modules() if isinstance(c, nn.Conv2d)]: conv.bias.copy_(u(len(conv.bias), -.5, .5))
        for name, p in m.named_parameters():
            if name.endswith('hard_attn.fc.weight'): p.normal_(0, 0.3, generator=g)
        for b in bns: b.momentum = None; b.reset_running_stats()
        run_theirs(m.train(), pictures(16, seed + 100))
        for b in bns:
            b.momentum, n = 0.1, b.num_features
            b.weight.copy_(u(n, .5, 1.5)); b.bias.copy_(u(n, -.2, .2))
            b.running_mean.add_(u(n, -.1, .1)); b.running_var.mul_(u(n, .8, 1.2))
    return m.eval()


def converted(theirs, dtype=torch.float32):
    "torchreid's model in `dtype` and the variant converted from it in that dtype."
    t = copy.deepcopy(theirs).to(dtype)
    v = TorchreidHACNN(**torchreid_kwargs(t.state_dict())).to(dtype)
    v.load_state_dict(convert_torchreid(t.state_dict()))
    return t.eval(), v.eval()


@pytest.fixture(scope='module')
def tr():
    if SPEC is None: pytest.skip('torchreid is not installed (pip install torchreid==0.2.5)')
    return torchreid_hacnn()


@pytest.fixture(scope='module')
def theirs(tr):
    torch.manual_seed(0)
    return randomised(tr.HACNN(751, loss='softmax', use_gpu=False), seed=0)


@pytest.fixture(scope='module')
def ours(theirs):
    return converted(theirs)[1]


@pytest.fixture(scope='module')
def x():
    return pictures(4, 1)


@pytest.fixture(scope='module')
def f_theirs(theirs, x):
    with torch.no_grad(): return run_theirs(theirs, x)


def maxdiff(a, b): return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


# ---- the same features and logits ------------------------------------------------------------------------------------

@needs_torchreid
def test_eval_features_float32(ours, f_theirs, x):
    with torch.no_grad(): f = ours(x)
    assert f.shape == (4, 1024)
    assert maxdiff(f, f_theirs) <= 1e-5
    maps = ours.attention_maps(x)                         # the check is not vacuous: attention is not flat
    assert all(lv['spatial'].std() > 1e-3 for lv in maps) and maps[0]['theta'].std(0).min() > 1e-3


@needs_torchreid
def test_eval_features_float64_exact(theirs, x):
    t, v = converted(theirs, torch.float64)
    with torch.no_grad(): assert maxdiff(run_theirs(t, x.double()), v(x.double())) <= 1e-12


@needs_torchreid
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_training_logits_and_bn_updates(theirs, x, dtype, tol):
    "Train mode: both logits agree, and so does every BN's running state after the step (Note 6: per-region BN)."
    t, v = (m.train() for m in converted(theirs, dtype))
    (ga, la), (gb, lb) = run_theirs(t, x.to(dtype)), v(x.to(dtype))
    assert ga.shape == gb.shape == la.shape == lb.shape == (4, 751)
    assert maxdiff(ga, gb) <= tol and maxdiff(la, lb) <= tol
    after, mine = convert_torchreid(t.state_dict()), v.state_dict()
    assert max(maxdiff(after[k], mine[k]) for k in mine) <= (1e-9 if dtype == torch.float64 else 1e-4)
    assert all(int(mine[k]) == int(after[k]) for k in mine if k.endswith('num_batches_tracked'))


@needs_torchreid
def test_pooled_streams_would_differ_in_training(theirs, x):
    "The per-stream BN of training is what makes the logits agree: pooling the regions changes them."
    t, v = (m.train() for m in converted(theirs, torch.float64))
    la = run_theirs(t, x.double())[1]
    ins, outs, thetas = v.global_branch(x.double())
    lb = v.local_cls(v.local_fc(v.local_streams(ins, outs, thetas).flatten(1)))
    assert maxdiff(la, lb) > 1e-2


@needs_torchreid
def test_other_widths_classes_and_seed(tr):
    torch.manual_seed(3)
    t = randomised(tr.HACNN(10, loss='softmax', nchannels=[32, 64, 96], feat_dim=64, use_gpu=False), seed=3)
    assert torchreid_kwargs(t.state_dict()) == dict(num_classes=10, widths=(32, 64, 96), feat_dim=64, n_regions=4)
    _, v = converted(t)
    xs = pictures(3, 7)
    with torch.no_grad(): assert maxdiff(run_theirs(t, xs), v(xs)) <= 1e-5


@needs_torchreid
def test_regions_are_torchreids(theirs, ours, x):
    "The boxes our pictures draw are torchreid's theta: level-1 theta straight from torchreid's modules."
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        theta1 = theirs.ha1(theirs.inception1(theirs.conv(x)))[1]
    maps = ours.attention_maps(x)
    assert maxdiff(maps[0]['theta'], theta1) <= 1e-5
    torch.testing.assert_close(maps[0]['boxes'], ours.ha[0].hard.boxes(theta1), atol=1e-5, rtol=0)


@needs_torchreid
def test_initial_theta_is_torchreids(tr):
    "A fresh variant starts its regions where a fresh torchreid model does (Note 4)."
    fresh = tr.HACNN(5, use_gpu=False)
    v = TorchreidHACNN(5)
    for l, ha in enumerate((fresh.ha1, fresh.ha2, fresh.ha3)):
        assert torch.equal(v.ha[l].hard.fc.bias, ha.hard_attn.fc.bias)
        assert torch.equal(v.ha[l].hard.fc.weight, ha.hard_attn.fc.weight)


# ---- the variant without torchreid ------------------------------------------------------------------------------------

def test_variant_contracts():
    torch.manual_seed(0)
    m, x = TorchreidHACNN(7, widths=(16, 32, 48), feat_dim=32), torch.randn(2, 3, 160, 64)
    g, l = m.train()(x)
    assert g.shape == l.shape == (2, 7)
    f = m.eval()(x)
    assert f.shape == (2, 64)
    torch.testing.assert_close(f[:, :32].norm(dim=1), torch.ones(2))
    assert m.arch == 'hacnn-torchreid' and m.input_spec == TORCHREID_INPUT
    assert m.model_kwargs == dict(num_classes=7, widths=(16, 32, 48), feat_dim=32, n_regions=4)
    assert all(isinstance(lv[0], TorchreidInceptionA) for lv in m.global_levels)
    assert model_complexity(m).params == model_complexity(HACNN(7, widths=(16, 32, 48), feat_dim=32)).params


def test_streams_one_at_a_time_only_in_training():
    torch.manual_seed(0)
    m, x = TorchreidHACNN(7, widths=(16, 32, 48), feat_dim=32), torch.randn(3, 3, 160, 64)
    ins, outs, thetas = m.train().global_branch(x)
    assert maxdiff(m.local_branch(ins, outs, thetas), m.local_streams(ins, outs, thetas).flatten(1)) > 1e-3
    m.eval()
    with torch.no_grad():
        ins, outs, thetas = m.global_branch(x)
        assert maxdiff(m.local_branch(ins, outs, thetas), m.local_streams(ins, outs, thetas).flatten(1)) <= 1e-6


def test_torchreid_key():
    cases = {'module.inception1.0.stream1.0.conv.weight': 'global_levels.0.0.streams.0.0.0.weight',
             'module.module.conv.conv.bias': 'stem.0.bias',
             'inception3.1.stream3.1.bn.running_var': 'global_levels.2.1.streams.2.1.1.running_var',
             'ha2.soft_attn.spatial_attn.conv1.conv.weight': 'ha.1.soft.spatial.conv.0.weight',
             'ha2.soft_attn.spatial_attn.conv2.bn.bias': 'ha.1.soft.spatial.scale.1.bias',
             'ha3.soft_attn.channel_attn.conv1.conv.weight': 'ha.2.soft.channel.excite.0.0.weight',
             'ha1.soft_attn.conv.bn.num_batches_tracked': 'ha.0.soft.blend.1.num_batches_tracked',
             'ha1.hard_attn.fc.weight': 'ha.0.hard.fc.weight',
             'local_conv2.stream1.1.conv.weight': 'local_levels.1.streams.0.1.0.weight',
             'fc_global.1.running_mean': 'global_fc.1.running_mean', 'classifier_local.bias': 'local_cls.bias'}
    for theirs, ours in cases.items(): assert torchreid_key(theirs) == ours


@needs_torchreid
def test_every_torchreid_tensor_finds_a_place(theirs):
    "Every torchreid name maps into the variant; only the conv biases (absorbed) are left over."
    want = set(TorchreidHACNN(751).state_dict())
    left = {torchreid_key(k) for k in theirs.state_dict()} - want
    assert left and all(k.endswith('.0.bias') for k in left)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in theirs.modules())
    assert len(left) == n_conv
    assert want - {torchreid_key(k) for k in theirs.state_dict()} == {
        f'ha.{l}.hard.{b}' for l in range(3) for b in ('scale', 'centres')}


# ---- files, errors, the checkpoint ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tr_file(theirs, tmp_path_factory):
    "torchreid's checkpoint as torchreid writes it: DataParallel prefixes, epoch and rank1 beside the weights."
    p = tmp_path_factory.mktemp('tr') / 'hacnn_market_xent.pth.tar'
    torch.save({'state_dict': {f'module.{k}': v for k, v in theirs.state_dict().items()}, 'epoch': 60,
                'rank1': 0.8}, p)
    return p


@needs_torchreid
def test_load_torchreid_file(tr_file, f_theirs, x):
    m = load_torchreid(tr_file)
    assert not m.training and isinstance(m, TorchreidHACNN)
    with torch.no_grad(): assert maxdiff(m(x), f_theirs) <= 1e-5


@needs_torchreid
def test_other_file_layouts(theirs, tmp_path, f_theirs, x):
    "A bare state dict, and the legacy (non-zip) torch.save format of older torchreid files."
    sd = theirs.state_dict()
    torch.save(sd, tmp_path / 'bare.pth')
    torch.save({'state_dict': sd}, tmp_path / 'legacy.pth.tar', _use_new_zipfile_serialization=False)
    for name in ('bare.pth', 'legacy.pth.tar'):
        with torch.no_grad(): assert maxdiff(load_torchreid(tmp_path / name)(x), f_theirs) <= 1e-5


@needs_torchreid
def test_untrusted_objects_need_trust(theirs, tmp_path, f_theirs, x):
    p = tmp_path / 'np.pth.tar'
    torch.save({'state_dict': theirs.state_dict(), 'rank1': np.float64(0.8)}, p)
    with pytest.raises(CheckpointError, match='trust=True') as e: read_torchreid(p)
    assert '\n' not in str(e.value) and str(p) in str(e.value)
    with torch.no_grad(): assert maxdiff(load_torchreid(p, trust=True)(x), f_theirs) <= 1e-5


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'): read_torchreid(tmp_path / 'none.pth.tar')
    (tmp_path / 'junk.pth.tar').write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='is not a torch checkpoint'): read_torchreid(tmp_path / 'junk.pth.tar')
    (tmp_path / 'cut.pth.tar').write_bytes(pickle.dumps({'a': 1})[:5])
    with pytest.raises(CheckpointError, match='cut.pth.tar'): read_torchreid(tmp_path / 'cut.pth.tar')
    torch.save({'state_dict': {'foo.weight': torch.zeros(2)}}, tmp_path / 'other.pth.tar')
    with pytest.raises(CheckpointError, match="other.pth.tar.*not torchreid's HACNN state dict"):
        load_torchreid(tmp_path / 'other.pth.tar')


@needs_torchreid
def test_converter_errors_are_one_line_and_name_the_keys(theirs, tr):
    sd = theirs.state_dict()
    cases = [({k: v for k, v in sd.items() if k != 'local_conv2.stream1.0.conv.weight'},
              'missing local_levels.1.streams.0.0.0.weight; unexpected none'),
             ({**sd, 'extra.weight': torch.zeros(1)}, 'missing none; unexpected extra.weight'),
             ({**sd, 'fc_local.0.weight': torch.zeros(512, 7)}, 'shapes local_fc.0.weight (512, 7) (want (512, 1536))'),
             ([1, 2], "expected torchreid's state dict"),
             ({'state_dict': {'a': 1}}, "expected torchreid's state dict")]
    for bad, words in cases:
        with pytest.raises(CheckpointError) as e: convert_torchreid(bad)
        assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
    glob = tr.HACNN(751, learn_region=False, use_gpu=False)     # the global branch alone: not supported
    with pytest.raises(CheckpointError, match=r'missing local_levels\.0\..* and \d+ more; unexpected none'):
        convert_torchreid(glob.state_dict())


@needs_torchreid
def test_converted_checkpoint(tr_file, tmp_path, f_theirs, x):
    model, path = convert_file(tr_file, tmp_path / 'market.pt')
    ck = load_checkpoint(path)                                   # tensors only: loads with weights_only=True
    assert ck['arch'] == 'hacnn-torchreid' and ck['epoch'] == 60 and ck['source'] == str(tr_file)
    assert ck['model_kwargs'] == {'num_classes': 751, 'widths': [128, 256, 384], 'feat_dim': 512, 'n_regions': 4}
    assert ck['input_spec'] == {'height': 160, 'width': 64, 'mean': [0.485, 0.456, 0.406],
                                'std': [0.229, 0.224, 0.225]}
    m = load_model(path)                                         # the project's loader builds the variant
    assert type(m) is TorchreidHACNN and not m.training
    with torch.no_grad(): assert maxdiff(m(x), f_theirs) <= 1e-5
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match='refusing to overwrite'): convert_file(tr_file, path)
    with pytest.raises(FileExistsError, match='refusing to overwrite'): save_converted(model, path)
    assert path.read_bytes() == before
    save_converted(model, path, overwrite=True)


# ---- the command --------------------------------------------------------------------------------------------------

def in_process(*argv):
    "Run hacnn_convert on `argv` here: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: convert_main([str(a) for a in argv]); code = 0
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def test_command_mistakes(tmp_path):
    code, _, err = in_process('--out', tmp_path / 'x.pt')
    assert code == 2 and err.startswith('hacnn_convert: error: --source and --out are required'), err
    code, _, err = in_process('--source', tmp_path / 'none.pth.tar', '--out', tmp_path / 'x.pt')
    assert code == 2 and 'none.pth.tar' in err and 'does not exist' in err and len(err.splitlines()) == 1
    code, _, err = in_process('--sauce', 'a')
    assert code == 2 and 'unrecognized arguments' in err
    assert not (tmp_path / 'x.pt').exists()


@needs_torchreid
def test_command_converts_and_refuses_to_overwrite(tr_file, tmp_path):
    out = tmp_path / 'market.pt'
    code, stdout, err = in_process('--source', tr_file, '--out', out)
    assert code == 0 and out.is_file() and 'TorchreidHACNN(num_classes=751' in stdout, err
    code, _, err = in_process('--source', tr_file, '--out', out)
    assert code == 2 and 'refusing to overwrite' in err and len(err.splitlines()) == 1
    assert convert_cli(source=str(tr_file), out=str(tmp_path / 'again.pt')) is None   # callable from Python too


@needs_torchreid
def test_command_as_a_script(tr_file, tmp_path):
    "As a console script runs it: convert_main() in a fresh process (and convert_cli() through call_parse)."
    for i, entry in enumerate(('convert_main', 'convert_cli')):
        script = tmp_path / f'hacnn_convert_{i}.py'
        script.write_text(f'from hacnn_nbdev.torchreid_compat import {entry}\n{entry}()\n')
        out = tmp_path / f'market_{i}.pt'
        p = subprocess.run([sys.executable, str(script), '--source', str(tr_file), '--out', str(out)],
                           capture_output=True, text=True, env=ENV, timeout=300)
        assert p.returncode == 0 and out.is_file() and 'wrote' in p.stdout, p.stderr


# ---- the project's other paths take the variant --------------------------------------------------------------------

@needs_torchreid
def test_attention_pictures(ours, x):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from hacnn_nbdev.viz import attention_arrays, plot_attention
    levels = attention_arrays(ours, x)
    assert [lv['spatial'].shape for lv in levels] == [(4, 40, 16), (4, 20, 8), (4, 10, 4)]
    assert all(lv['boxes'].shape == (4, 4, 4) for lv in levels)
    assert all(0 <= lv['spatial'].min() and lv['spatial'].max() <= 1 for lv in levels)
    fig = plot_attention(ours, x[0])
    assert len(fig.axes) == 7
    plt.close(fig)


@needs_torchreid
def test_evaluation(ours, theirs):
    "Features through the evaluation's extractor, then ranks: the same as from torchreid's features."
    from hacnn_nbdev.runtime import extract_features
    from hacnn_nbdev.metrics import compute_distance, evaluate_rank
    imgs, pids, cams = pictures(8, 11), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.tensor([0, 1] * 4)
    loader = [(imgs[i:i + 3], pids[i:i + 3], cams[i:i + 3]) for i in range(0, 8, 3)]
    f, p, c = extract_features(ours, loader, progress=False)
    with torch.no_grad(): ft = run_theirs(theirs, imgs)
    assert maxdiff(f, ft) <= 1e-5 and (p == pids.numpy()).all()
    q, g = slice(0, 8, 2), slice(1, 8, 2)
    mine = evaluate_rank(compute_distance(f[q], f[g]), p[q], p[g], c[q], c[g], max_rank=4)
    ref = evaluate_rank(compute_distance(ft[q], ft[g]), p[q], p[g], c[q], c[g], max_rank=4)
    np.testing.assert_allclose(mine.cmc, ref.cmc)
    assert mine.mAP == pytest.approx(ref.mAP) and mine.num_valid == 4


@needs_torchreid
def test_fused_inference(ours, f_theirs, x):
    from hacnn_nbdev.deploy import optimize_for_inference
    fast = optimize_for_inference(ours, amp='off')                # raises if it strays from eager by > 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.net.modules())
    assert maxdiff(fast(x), f_theirs) <= 1e-5


@needs_torchreid
def test_onnx_export(ours, f_theirs, x, tmp_path):
    for mod in ('onnx', 'onnxscript', 'onnxruntime'): pytest.importorskip(mod)
    from hacnn_nbdev.deploy import export_onnx, OnnxFeatureExtractor
    p = export_onnx(ours, tmp_path / 'hacnn_torchreid.onnx')     # checks onnxruntime against PyTorch itself
    assert maxdiff(OnnxFeatureExtractor(p)(x), f_theirs) <= 1e-5
