"Tests for hacnn_nbdev.evaluate: hacnn_eval on a tiny synthetic world, refusing unsafe checkpoints, user errors, MQ/SS."
import json, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pytest, torch, matplotlib
matplotlib.use('Agg')
from hacnn_nbdev.core import save_checkpoint
from hacnn_nbdev.data import get_dataset, build_test_loader
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.synthetic import make_world
from hacnn_nbdev import evaluate as E

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('world')
    make_world(root, n_ids=16, imgs_per_id=(4, 6), seed=3)
    return root

@pytest.fixture(scope='module')
def ckpt(world, tmp_path_factory):
    torch.manual_seed(0)
    net = HACNN(num_classes=get_dataset('synthetic', world).num_train_pids, widths=(8, 16, 24), feat_dim=16)
    path = tmp_path_factory.mktemp('ck') / 'tiny.pt'
    save_checkpoint(E.checkpoint_for(net, epoch=3), path)
    return path

def cli(*args):
    exe = Path(sys.executable).parent / 'hacnn_eval'
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)

def cli_inprocess(**kwargs):
    "Call eval_cli in this process (as Python, the call_parse wrapper passes keywords through); the SystemExit message or None."
    kwargs = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    try: E.eval_cli(**kwargs)
    except SystemExit as e: return str(e.code)
    return None

def test_cli_end_to_end(world, ckpt, tmp_path):
    out, figs = tmp_path / 'res' / 'results.json', tmp_path / 'figs'
    p = cli('--checkpoint', ckpt, '--root', world, '--dataset', 'synthetic', '--out', out, '--figures', figs, '--batch_size', 16, '--no_progress')
    assert p.returncode == 0, p.stderr
    assert 'single query' in p.stdout and 'R1' in p.stdout and 'mINP' in p.stdout
    j = json.loads(out.read_text())
    assert j['epoch'] == 3 and j['device'] == 'cpu' and j['n_query'] == len(get_dataset('synthetic', world).query)
    sq = j['results']['SQ']
    assert set(sq) >= {'R1', 'R5', 'R10', 'mAP', 'mINP', 'num_valid', 'num_skipped', 'cmc'} and 0 <= sq['mAP'] <= 100
    assert sorted(p.name for p in figs.iterdir()) == ['cmc.png', 'distances.png', 'ranked_lists.png']

def test_cli_refuses_code_carrying_checkpoint(world, tmp_path):
    marker = tmp_path / 'pwned'
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    evil = tmp_path / 'evil.pt'; torch.save({'model': Payload(), 'model_kwargs': {'num_classes': 3}}, evil)
    p = cli('--checkpoint', evil, '--root', world, '--dataset', 'synthetic')
    assert p.returncode == 1 and 'refused to load' in p.stderr and 'Traceback' not in p.stderr
    assert not marker.exists()

@pytest.mark.parametrize('make_args, msg', [
    (lambda w, c, t: dict(root=w), 'are required'),
    (lambda w, c, t: dict(checkpoint=t / 'missing.pt', root=w), 'does not exist'),
    (lambda w, c, t: dict(checkpoint=c, root=t / 'nowhere', dataset='synthetic'), 'not found'),
    (lambda w, c, t: dict(checkpoint=c, root=w, dataset='mnist'), 'unknown dataset'),
    (lambda w, c, t: dict(checkpoint=c, root=w, dataset='synthetic', device='cuda'), 'no CUDA GPU'),
])
def test_cli_user_errors(world, ckpt, tmp_path, make_args, msg):
    if msg == 'no CUDA GPU' and torch.cuda.is_available(): pytest.skip('a GPU is present')
    m = cli_inprocess(**make_args(world, ckpt, tmp_path))
    assert m is not None and m.startswith('hacnn_eval: error:') and msg in m, m

def test_checkpoint_that_does_not_fit(world, ckpt, tmp_path):
    ck = torch.load(ckpt, weights_only=True); ck['model_kwargs']['feat_dim'] = 32
    bad = tmp_path / 'bad.pt'; save_checkpoint(ck, bad)
    m = cli_inprocess(checkpoint=bad, root=world, dataset='synthetic', no_progress=True)
    assert m is not None and 'does not fit HACNN' in m, m

def test_multi_query_from_gt_bbox(world, ckpt, tmp_path):
    import shutil
    root = tmp_path / 'mq'; shutil.copytree(world, root)
    ds = get_dataset('synthetic', root); (root / 'gt_bbox').mkdir()
    for path, pid, cam in ds.query[:10]:  # two extra boxes for ten queries, and one of an unrelated identity
        for k in range(2): shutil.copy(path, root / 'gt_bbox' / Path(path).name.replace('.jpg', f'_{k}.jpg'))
    shutil.copy(ds.query[0][0], root / 'gt_bbox' / '0999_c1s1_000001_00.jpg')
    assert len(E.multi_query_records(root, ds.query)) == 20
    res, ev = E.run_eval(ckpt, root, 'synthetic', device='cpu', batch_size=32, progress=False)
    assert set(res['results']) == {'SQ', 'MQ'} and ev.info['n_multi_query'] == 20
    # identical copies pool to the query's own feature: MQ equals SQ exactly
    np.testing.assert_allclose(ev.results['MQ'].cmc, ev.results['SQ'].cmc, atol=1e-6)
    assert abs(ev.results['MQ'].mAP - ev.results['SQ'].mAP) < 1e-6

def test_single_shot_setting_for_classic_protocol(world, ckpt):
    ds = get_dataset('synthetic', world)
    model, _ = E.model_from_checkpoint(ckpt, 'cpu')
    classic = SimpleNamespace(name='classic-like', query=ds.query, gallery=ds.gallery, protocol='classic')
    ev = E.evaluate_model(model, classic, batch_size=32, progress=False)
    assert set(ev.results) == {'SQ', 'SS'} and ev.results['SS'].mAP == pytest.approx(ev.results['SS'].mINP)
    assert 'single-shot' in E.results_table(ev.results)

def test_extract_features_contract(world, ckpt):
    model, _ = E.model_from_checkpoint(ckpt, 'cpu'); model.train()
    ds = get_dataset('synthetic', world)
    f, p, c = E.extract_features(model, build_test_loader(ds.gallery[:10], batch_size=4), progress=False)
    assert f.shape == (10, 32) and model.training and not f.requires_grad
    assert p.tolist() == [r[1] for r in ds.gallery[:10]] and c.tolist() == [r[2] for r in ds.gallery[:10]]
    torch.testing.assert_close(f[:, :16].norm(dim=1), torch.ones(10)); torch.testing.assert_close(f[:, 16:].norm(dim=1), torch.ones(10))
    with pytest.raises(ValueError, match='no images'): E.extract_features(model, [], progress=False)

def test_ranked_list_excludes_junk_and_marks_matches():
    q = [('q', 1, 0)]; g = [('a', 1, 0), ('b', 2, 1), ('c', 1, 1), ('d', -1, 2), ('e', 3, 0)]
    d = np.array([[0.0, 0.3, 0.2, 0.1, 0.3]])
    assert E.ranked_list(d, q, g, 0, top=10) == [(2, True), (1, False), (4, False)]  # stable ties: b before e
