"""HA-CNN network (hacnn_nbdev.model and the modules under it), tested as the installed package.

The notebooks 01-05 test each component where it is built; this file pins the public contract of
TEAM.md that train/evaluate/viz/deploy rely on, plus edge cases.  Tiny widths keep it fast.
"""
import itertools, re

import pytest
import torch
import torch.nn.functional as F

from hacnn_nbdev.checkpoint import (CheckpointError, check_checkpoint, load_checkpoint, load_model,
                                    model_checkpoint, save_checkpoint)
from hacnn_nbdev.core import InputSpec, seed_everything
from hacnn_nbdev.model import HACNN, model_complexity

TINY = dict(widths=(16, 32, 48))
FLAGS = ['spatial_attention', 'channel_attention', 'hard_attention', 'cross_attention']


def images(n=2, h=160, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


@pytest.fixture(scope='module')
def tiny():
    seed_everything(0)
    return HACNN(7, **TINY)


# ---- contract ------------------------------------------------------------------------------------

def test_default_signature_and_kwargs():
    m = HACNN(5)
    assert m.model_kwargs == dict(num_classes=5, widths=(128, 256, 384), feat_dim=512, n_regions=4,
                                  spatial_attention=True, channel_attention=True,
                                  hard_attention=True, cross_attention=True)


@pytest.mark.parametrize('hw', [(160, 64), (256, 128)])
def test_train_mode_returns_global_and_local_logits(tiny, hw):
    tiny.train()
    out = tiny(images(3, *hw))
    assert isinstance(out, tuple) and len(out) == 2
    assert [o.shape for o in out] == [(3, 7), (3, 7)]


@pytest.mark.parametrize('hw', [(160, 64), (256, 128)])
def test_eval_mode_returns_two_unit_halves(tiny, hw):
    tiny.eval()
    with torch.no_grad(): f = tiny(images(3, *hw))
    assert f.shape == (3, 2 * 512)
    torch.testing.assert_close(f[:, :512].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(f[:, 512:].norm(dim=1), torch.ones(3))


def test_eval_halves_are_global_then_local(tiny):
    tiny.eval()
    x = images(2)
    with torch.no_grad():
        g, l = tiny.features(x)
        f = tiny(x)
    torch.testing.assert_close(f[:, :512], F.normalize(g, dim=1))
    torch.testing.assert_close(f[:, 512:], F.normalize(l, dim=1))


def test_feat_dim_is_respected():
    m = HACNN(3, feat_dim=64, **TINY).eval()
    with torch.no_grad(): assert m(images(2)).shape == (2, 128)


def test_eval_batch_of_one_matches_batch(tiny):
    tiny.eval()
    x = images(4)
    with torch.no_grad():
        full, one = tiny(x), tiny(x[2:3])
    assert one.shape == (1, 1024)
    torch.testing.assert_close(one, full[2:3], rtol=1e-4, atol=1e-5)


def test_odd_input_size_runs(tiny):
    tiny.eval()
    with torch.no_grad(): assert tiny(images(1, 97, 45)).shape == (1, 1024)


def test_attention_maps_contract(tiny):
    tiny.train()
    maps = tiny.attention_maps(images(2))
    assert tiny.training, 'attention_maps must restore the mode'
    assert len(maps) == 3
    for m, c in zip(maps, TINY['widths']):
        assert {'spatial', 'soft', 'boxes'} <= set(m)
        n, one, h, w = m['spatial'].shape
        assert (n, one) == (2, 1) and m['soft'].shape == (2, c, h, w)
        assert 0 <= m['spatial'].min() and m['spatial'].max() <= 1
        assert 0.5 <= m['soft'].min() and m['soft'].max() <= 1
        assert m['boxes'].shape == (2, 4, 4)
        b = m['boxes']
        assert (b[..., 2] > b[..., 0]).all() and (b[..., 3] > b[..., 1]).all()
    # an untrained model proposes the evenly spaced stripes at every level
    torch.testing.assert_close(maps[0]['boxes'][0], torch.tensor(
        [[0, 0, 1, .25], [0, .25, 1, .5], [0, .5, 1, .75], [0, .75, 1, 1.]]))


# ---- ablation switches ---------------------------------------------------------------------------

@pytest.mark.parametrize('combo', list(itertools.product([True, False], repeat=4)),
                         ids=lambda c: ''.join('TF'[not v] for v in c))
def test_every_flag_combination_trains_and_evaluates(combo):
    seed_everything(0)
    m = HACNN(5, **TINY, **dict(zip(FLAGS, combo)))
    g, l = m(images(2))
    (F.cross_entropy(g, torch.tensor([0, 1])) + F.cross_entropy(l, torch.tensor([2, 3]))).backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, f'parameters without gradient: {unused}'
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    with torch.no_grad(): assert m(images(1)).shape == (1, 1024)


def test_switches_remove_their_parameters():
    n = lambda m: sum(p.numel() for p in m.parameters())
    full = HACNN(5, **TINY)
    assert n(HACNN(5, **TINY, spatial_attention=False)) < n(full)
    assert n(HACNN(5, **TINY, channel_attention=False)) < n(full)
    no_hard = HACNN(5, **TINY, hard_attention=False)
    assert all(ha.hard.fc is None for ha in no_hard.ha)
    no_cross = HACNN(5, **TINY, cross_attention=False)
    assert no_cross.ha[0].hard.fc is not None and no_cross.ha[1].hard.fc is None


def test_no_soft_attention_leaves_global_features_unattended():
    m = HACNN(5, **TINY, spatial_attention=False, channel_attention=False).eval()
    x = images(1)
    with torch.no_grad():
        ins, outs, _ = m.global_branch(x)
        torch.testing.assert_close(outs[0], m.global_levels[0](ins[0]))


# ---- state, checkpoints, determinism, devices ----------------------------------------------------

def test_state_dict_round_trip_via_checkpoint(tmp_path, tiny):
    tiny.eval()
    ck = {'format': 'hacnn_nbdev.checkpoint/1', 'model': tiny.state_dict(),
          'model_kwargs': tiny.model_kwargs, 'epoch': 1}
    save_checkpoint(ck, tmp_path / 'ck.pt')
    back = load_checkpoint(tmp_path / 'ck.pt')
    m2 = HACNN(**back['model_kwargs'])
    m2.load_state_dict(back['model'])                     # strict: every key matches
    m2.eval()
    x = images(2)
    with torch.no_grad(): torch.testing.assert_close(m2(x), tiny(x))
    assert {'ha.0.hard.scale', 'ha.0.hard.centres'} <= set(back['model'])   # buffers are saved


@pytest.fixture()
def tiny_ck(tiny):
    "The checkpoint dict `model_checkpoint` writes for `tiny` (tuples become lists, as in JSON)."
    tiny.eval()
    return model_checkpoint(tiny, epoch=3)


def test_model_checkpoint_listifies_and_passes_the_check(tiny_ck, tiny):
    assert tiny_ck['model_kwargs']['widths'] == list(TINY['widths'])
    ck = check_checkpoint(tiny_ck)
    assert ck['arch'] == 'hacnn' and ck['epoch'] == 3
    assert ck['model_kwargs'] == tiny_ck['model_kwargs']
    assert InputSpec(**ck['input_spec']) == tiny.input_spec


def test_load_model_from_path_str_and_dict(tmp_path, tiny_ck, tiny):
    path = save_checkpoint(tiny_ck, tmp_path / 'ck.pt')
    x = images(2)
    with torch.no_grad(): ref = tiny.eval()(x)
    for src in (path, str(path), tiny_ck, load_checkpoint(path)):
        m = load_model(src)
        assert isinstance(m, HACNN) and not m.training
        assert m.model_kwargs == tiny.model_kwargs        # listified widths come back as a tuple
        assert m.input_spec == InputSpec()
        with torch.no_grad(): torch.testing.assert_close(m(x), ref)


def test_load_model_minimal_dict_with_listified_kwargs(tiny):
    kw = dict(tiny.model_kwargs, widths=list(tiny.model_kwargs['widths']))   # as JSON would give it
    m = load_model({'model': tiny.state_dict(), 'model_kwargs': kw})        # no format, arch, spec
    assert m.model_kwargs['widths'] == TINY['widths'] and m.input_spec == InputSpec()


def test_load_model_missing_and_junk_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt' does not exist"):
        load_model(tmp_path / 'nope.pt')
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    with pytest.raises(CheckpointError, match=r"junk\.pt'.*not a torch checkpoint"):
        load_model(tmp_path / 'junk.pt')


@pytest.mark.parametrize('ck, msg', [
    ({'model': {}}, 'lacks model_kwargs'),
    ({}, 'lacks model and model_kwargs'),
    ({'model_kwargs': dict(num_classes=5)}, 'lacks model;'),
    ({'format': 'other/2', 'model': {}, 'model_kwargs': {}}, "has format 'other/2'"),
    ({'model': {}, 'model_kwargs': {}, 'arch': 'resnet'}, "network 'resnet'"),
], ids=['no-kwargs', 'empty', 'no-weights', 'format', 'arch'])
def test_load_model_refuses_incomplete_checkpoints(ck, msg):
    with pytest.raises(CheckpointError, match=re.escape(msg)):
        load_model(ck)


def test_load_model_refuses_a_bare_state_dict(tmp_path, tiny):
    path = save_checkpoint(tiny.state_dict(), tmp_path / 'sd.pt')
    with pytest.raises(CheckpointError, match=r"sd\.pt' is a bare state_dict"):
        load_model(path)


def test_load_model_wrong_shapes_name_the_file_and_tensors(tmp_path):
    wrong = {'model': HACNN(5, **TINY).state_dict(), 'model_kwargs': dict(num_classes=6, **TINY)}
    with pytest.raises(CheckpointError) as e:
        load_model(save_checkpoint(wrong, tmp_path / 'w.pt'))
    msg = str(e.value)
    assert re.search(r"w\.pt': the weights do not fit HACNN\(", msg)
    assert 'global_cls.weight has shape (5, 512) in the file but (6, 512) in the network' in msg
    assert msg.endswith('(and 1 more)')                # 4 classifier tensors differ, 3 are listed


def test_load_model_missing_or_extra_tensors(tiny):
    sd = dict(tiny.state_dict())
    del sd['stem.0.weight']
    with pytest.raises(CheckpointError, match='stem.0.weight is missing'):
        load_model({'model': sd, 'model_kwargs': tiny.model_kwargs})
    sd = dict(tiny.state_dict(), extra=torch.zeros(1))
    with pytest.raises(CheckpointError, match='extra is not part of the network'):
        load_model({'model': sd, 'model_kwargs': tiny.model_kwargs})


def test_load_model_settings_that_do_not_build(tiny):
    with pytest.raises(CheckpointError, match='do not build HACNN'):
        load_model({'model': tiny.state_dict(), 'model_kwargs': dict(num_classes=5, depth=3)})
    with pytest.raises(CheckpointError, match='do not build HACNN.*multiple of 4'):
        load_model({'model': tiny.state_dict(),
                    'model_kwargs': dict(num_classes=5, widths=(16, 30, 48))})


def test_check_checkpoint_refuses_non_finite_weights(tiny_ck):
    sd = dict(tiny_ck['model'])
    sd['stem.0.weight'] = torch.full_like(sd['stem.0.weight'], float('nan'))
    msg = "last.pt holds non-finite weights (1 tensors, first 'stem.0.weight')"
    with pytest.raises(CheckpointError, match=re.escape(msg)):
        check_checkpoint(dict(tiny_ck, model=sd), 'last.pt')


def test_determinism_under_seed():
    x = images(2)
    outs = []
    for _ in range(2):
        seed_everything(123)
        m = HACNN(5, **TINY)
        g, l = m(x)
        outs.append((m.state_dict(), g.detach(), l.detach()))
    (sd1, g1, l1), (sd2, g2, l2) = outs
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(g1, g2) and torch.equal(l1, l2)
    seed_everything(124)
    assert not torch.equal(HACNN(5, **TINY).stem[0].weight, sd1['stem.0.weight'])


def test_to_moves_parameters_and_buffers():
    m = HACNN(5, **TINY).to(torch.float64).eval()
    tensors = itertools.chain(m.parameters(), m.buffers())
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float64}
    with torch.no_grad(): assert m(images(1).double()).dtype == torch.float64
    meta = HACNN(5, **TINY).to('meta')
    assert {t.device.type for t in itertools.chain(meta.parameters(), meta.buffers())} == {'meta'}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU on this machine')
def test_cuda_forward():
    m = HACNN(5, **TINY).to('cuda').eval()
    with torch.no_grad(): assert m(images(1).cuda()).device.type == 'cuda'


def test_no_cuda_calls_in_modules():
    import inspect
    import hacnn_nbdev.model as mm
    import hacnn_nbdev.hard_attention as ha
    import hacnn_nbdev.soft_attention as sa
    for mod in (mm, ha, sa):
        assert '.cuda(' not in inspect.getsource(mod)


# ---- bad input -----------------------------------------------------------------------------------

def test_widths_must_split_into_four():
    with pytest.raises(ValueError, match='multiple of 4'):
        HACNN(5, widths=(16, 30, 48))


def test_wrong_channel_count_is_refused(tiny):
    tiny.eval()
    with pytest.raises(RuntimeError):
        tiny(torch.randn(1, 1, 160, 64))


# ---- complexity ----------------------------------------------------------------------------------

def test_model_complexity_tiny_is_consistent():
    m = HACNN(9, **TINY)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cx = model_complexity(m, input_size=(160, 64))
    assert cx.params == sum(p.numel() for p in m.parameters())
    assert cx.params - cx.params_no_cls == 2 * (512 + 1) * 9
    assert sum(r[1] for r in cx.rows) == cx.params and sum(r[2] for r in cx.rows) == cx.macs
    assert cx.flops == 2 * cx.macs and cx.depth == max(cx.depth_global, cx.depth_local) >= 30
    same = all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert same, 'model_complexity changed the model'
    assert '| **total** |' in cx.table()


def test_model_complexity_paper_configuration():
    cx = model_complexity(HACNN(751))
    assert cx.params_no_cls == 2_923_458
    assert abs(cx.flops - 1.09e9) / 1.09e9 < 0.005
    assert (cx.depth_global, cx.depth_local) == (30, 31)


# ---- export --------------------------------------------------------------------------------------

def test_onnx_export_with_dynamic_batch(tmp_path):
    "affine_grid needs ONNX opset >= 20; every other op of the model exports (deploy relies on it)."
    ort = pytest.importorskip('onnxruntime')
    import warnings
    m = HACNN(5, **TINY).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(m, (images(1),), tmp_path / 'm.onnx', dynamo=False, opset_version=20,
                          input_names=['x'], dynamic_axes={'x': {0: 'n'}})
    sess = ort.InferenceSession(str(tmp_path / 'm.onnx'))
    x = images(3)
    with torch.no_grad(): ref = m(x).numpy()
    out = sess.run(None, {'x': x.numpy()})[0]
    assert out.shape == (3, 1024) and abs(out - ref).max() < 1e-4
