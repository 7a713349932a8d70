"Tests for hacnn_nbdev.evaluate: hacnn_eval end to end on tiny worlds, its answers to mistakes and failures, the settings."
import contextlib, io, json, os, shutil, subprocess, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np, pytest, torch, matplotlib
matplotlib.use('Agg')
from PIL import Image
from conftest import one_line_error
from hacnn_nbdev.core import InputSpec
from hacnn_nbdev.checkpoint import CheckpointError, save_checkpoint, model_checkpoint, load_model
from hacnn_nbdev.data import get_dataset
from hacnn_nbdev.loaders import build_test_loader
from hacnn_nbdev.runtime import extract_features
from hacnn_nbdev.metrics import compute_distance
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.synthetic import make_world, MARKER
from hacnn_nbdev import evaluate as E

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
SPEC = InputSpec(96, 32, (0.5, 0.45, 0.4), (0.25, 0.25, 0.25))   # not the default: the spec must travel

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('world')
    make_world(root, n_ids=16, imgs_per_id=(4, 6), seed=3)
    return root

def tiny(num_classes, seed=0):
    torch.manual_seed(seed)
    net = HACNN(num_classes=num_classes, widths=(8, 16, 24), feat_dim=16)
    net.input_spec = SPEC
    return net.eval()

@pytest.fixture(scope='module')
def ckpt(world, tmp_path_factory):
    net = tiny(get_dataset('synthetic', world).num_train_pids)
    return save_checkpoint(model_checkpoint(net, epoch=3), tmp_path_factory.mktemp('ck') / 'tiny.pt')

def cli(*args):
    "The installed hacnn_eval in a subprocess."
    exe = Path(sys.executable).parent / 'hacnn_eval'
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)

def run(*argv):
    "hacnn_eval in this process: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: E.eval_cli([str(a) for a in argv]); code = 0
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()

def one_line(code, err, want_code, *words): one_line_error((code, err), 'hacnn_eval', want_code, *words)

# ---- end to end

def test_cli_end_to_end(world, ckpt, tmp_path):
    out, figs = tmp_path / 'res' / 'results.json', tmp_path / 'figs'
    p = cli('--checkpoint', ckpt, '--root', world, '--out', out, '--figures', figs, '--batch-size', 16, '--no-progress')
    assert p.returncode == 0, p.stderr
    assert 'single query' in p.stdout and 'R1' in p.stdout and 'mINP' in p.stdout
    assert 'Synthetic world' in p.stdout and 'Market-1501' not in p.stdout             # the dataset was inferred
    j = json.loads(out.read_text())
    assert j['epoch'] == 3 and j['device'] == 'cpu' and j['n_query'] == len(get_dataset('synthetic', world).query)
    assert j['dataset'] == 'Synthetic world' and j['unit'] == '%' and j['branch'] == 'both' and j['feature_dim'] == 32
    assert j['input_spec'] == SPEC.as_dict()                                             # the checkpoint's input spec
    sq = j['results']['SQ']
    assert set(sq) >= {'rank1', 'rank5', 'rank10', 'mAP', 'mINP', 'num_valid', 'num_skipped', 'cmc'}
    assert 0 <= sq['mAP'] <= 100 and sq['rank1'] == pytest.approx(sq['cmc'][0], abs=1e-3)
    assert sorted(p.name for p in figs.iterdir()) == ['cmc.png', 'distances.png', 'ranked_lists.png']

def test_the_table_prints_the_records_percent(world, ckpt):
    res, ev = E.run_eval(ckpt, world, device='cpu', progress=False)
    r = ev.results['SQ']
    assert res['results']['SQ']['mAP'] == pytest.approx(r.percent()['mAP']) == pytest.approx(100 * r.scores()['mAP'])
    row = E.results_table(ev.results).splitlines()[-1].split()
    assert row[2:7] == [f"{r.percent()[m]:.1f}" for m in ('rank1', 'rank5', 'rank10', 'mAP', 'mINP')]

def test_library_is_quiet_and_command_prints(world, ckpt, capsys):
    E.run_eval(ckpt, world, device='cpu', progress=False)
    assert capsys.readouterr().out == ''
    lines = []
    E.run_eval(ckpt, world, device='cpu', progress=False, log=lines.append)
    assert len(lines) == 1 and 'single query' in lines[0]

# ---- Table 7: one branch, and FAISS

def test_branches(world, ckpt, tmp_path):
    model, ds = load_model(ckpt), get_dataset('synthetic', world)
    both = E.evaluate_model(model, ds, progress=False)
    for b, cols in (('global', slice(0, 16)), ('local', slice(16, 32))):
        ev = E.evaluate_model(model, ds, branch=b, progress=False)
        assert ev.info['feature_dim'] == 16 and ev.distmat.shape == both.distmat.shape
        load = lambda recs: build_test_loader(recs, 32, 0, SPEC.height, SPEC.width, mean=SPEC.mean, std=SPEC.std)
        f = [extract_features(model, load(recs), False)[0][:, cols] for recs in (ds.query, ds.gallery)]
        np.testing.assert_allclose(ev.distmat, compute_distance(*f), atol=1e-6)        # the branch's columns only
    code, out, err = run('--checkpoint', ckpt, '--root', world, '--branch', 'local', '--out', tmp_path / 'l.json', '--no-progress')
    assert code == 0, err
    assert json.loads((tmp_path / 'l.json').read_text())['feature_dim'] == 16 and '| local |' in out

def test_faiss_gives_the_dense_numbers(world, ckpt, tmp_path):
    code, out, err = run('--checkpoint', ckpt, '--root', world, '--faiss', '--top-k', 10, '--out', tmp_path / 'f.json',
                         '--figures', tmp_path / 'figs', '--no-progress')
    assert code == 0, err
    j = json.loads((tmp_path / 'f.json').read_text())
    dense = E.run_eval(ckpt, world, device='cpu', progress=False)[0]
    assert j['search'] == 'faiss' and set(j['results']) == {'SQ'}
    for m in ('rank1', 'mAP', 'mINP'): assert j['results']['SQ'][m] == pytest.approx(dense['results']['SQ'][m], abs=1e-3)
    assert [p.name for p in (tmp_path / 'figs').iterdir()] == ['cmc.png']                # no matrix, no ranked lists

# ---- the dataset under --root

def test_dataset_inferred_from_the_checkpoint(world, tmp_path):
    root = tmp_path / 'market'; shutil.copytree(world, root); (root / MARKER).unlink()   # a Market-1501 layout
    net = tiny(get_dataset('synthetic', world).num_train_pids)
    with_args = save_checkpoint(model_checkpoint(net, args={'dataset': 'market1501'}), tmp_path / 'a.pt')
    _, ev = E.run_eval(with_args, root, device='cpu', progress=False)
    assert ev.info['dataset'] == 'Market-1501'
    _, ev = E.run_eval(with_args, world, device='cpu', progress=False)                    # the marker wins
    assert ev.info['dataset'] == 'Synthetic world'
    no_args = save_checkpoint(model_checkpoint(net), tmp_path / 'b.pt')
    one_line(*run('--checkpoint', no_args, '--root', root)[::2], 2, '--dataset is needed')
    code, out, err = run('--checkpoint', no_args, '--root', root, '--dataset', 'market1501', '--no-progress')
    assert code == 0 and 'Market-1501' in out, err

def test_cuhk03_classic_single_shot(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_cuhk03_mat                                                # a tiny cuhk-03.mat
    root = tmp_path / 'cuhk03'; (root / 'cuhk03_release').mkdir(parents=True)
    write_cuhk03_mat(root / 'cuhk03_release' / 'cuhk-03.mat')
    ck = save_checkpoint(model_checkpoint(tiny(3)), tmp_path / 'c.pt')
    code, out, err = run('--checkpoint', ck, '--root', root, '--dataset', 'cuhk03', '--split', 19, '--out', tmp_path / 'c.json',
                         '--no-progress')
    assert code == 0, err
    j = json.loads((tmp_path / 'c.json').read_text())
    assert j['dataset'] == 'CUHK03-detected (classic protocol, split 19)' and set(j['results']) == {'SQ', 'SS'}
    assert 'single-shot (classic)' in out
    one_line(*run('--checkpoint', ck, '--root', root, '--dataset', 'cuhk03', '--split', 20)[::2], 2, '--split', '0..19')

# ---- mistakes: one line, exit 2

@pytest.mark.parametrize('argv, words', [
    (['--root', '{w}'], ['--checkpoint is required']),
    ([], ['--checkpoint, --root are required']),
    (['--checkpoint', '{t}/missing.pt', '--root', '{w}'], ['missing.pt', 'does not exist']),
    (['--checkpoint', '{c}', '--root', '{t}/nowhere', '--dataset', 'synthetic'], ['nowhere', 'not found']),
    (['--checkpoint', '{c}', '--root', '{t}', '--dataset', 'mnist'], ['unknown dataset', 'mnist']),
    (['--checkpoint', '{c}', '--root', '{w}', '--dataset', 'market1501'], ['is a synthetic world', MARKER]),
    (['--checkpoint', '{c}', '--root', '{w}', '--split', '3'], ['--split', 'one split']),
    (['--checkpoint', '{c}', '--root', '{w}', '--device', 'cuda:7'], ['--device cuda:7']),
    (['--checkpoint', '{c}', '--root', '{w}', '--branch', 'middle'], ['--branch', 'global', 'middle']),
    (['--checkpoint', '{c}', '--root', '{w}', '--rerank', '--faiss'], ['do not combine']),
    (['--checkpoint', '{c}', '--root', '{w}', '--faiss', '--top-k', '0'], ['--top-k']),
    (['--checkpoint', '{c}', '--root', '{w}', '--out', '{t}'], ['--out', 'is a folder']),
    (['--checkpoint', '{c}', '--root', '{w}', '--out', '{c}/r.json'], ['--out', 'cannot create']),
    (['--checkpoint', '{c}', '--root', '{w}', '--batch-size', 'many'], ['invalid int', '--help']),
    (['--checkpoint', '{c}', '--root', '{w}', '--colour'], ['unrecognized arguments: --colour']),
])
def test_mistakes(world, ckpt, tmp_path, argv, words):
    if 'cuda:7' in argv and torch.cuda.device_count() > 7: pytest.skip('a GPU 7 is present')
    code, out, err = run(*[a.format(w=world, c=ckpt, t=tmp_path) for a in argv])
    one_line(code, err, 2, *words)
    assert 'single query' not in out                                                     # refused before any work

def test_refuses_code_carrying_checkpoint(world, tmp_path):
    marker = tmp_path / 'pwned'
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    evil = tmp_path / 'evil.pt'; torch.save({'model': Payload(), 'model_kwargs': {'num_classes': 3}}, evil)
    p = cli('--checkpoint', evil, '--root', world)
    one_line(p.returncode, p.stderr, 2, 'refused to load')
    assert not marker.exists()

def _nan_checkpoint(ck):
    bad = torch.load(ck, weights_only=True); k = next(k for k, v in bad['model'].items() if v.is_floating_point())
    bad['model'][k] = torch.full_like(bad['model'][k], float('nan')); return bad

@pytest.mark.parametrize('make, words', [
    (lambda ck: torch.zeros(3, 4), ['bare tensor']),
    (lambda ck: [1, 2, 3], ['list']),
    (lambda ck: torch.load(ck, weights_only=True)['model'], ['bare state_dict']),
    (_nan_checkpoint, ['non-finite']),
    (lambda ck: {**torch.load(ck, weights_only=True), 'model_kwargs': {**torch.load(ck, weights_only=True)['model_kwargs'],
                                                                        'feat_dim': 32}}, ['do not fit']),
])
def test_checkpoints_that_are_not_usable(world, ckpt, tmp_path, make, words):
    bad = tmp_path / 'bad.pt'; torch.save(make(ckpt), bad)
    code, out, err = run('--checkpoint', bad, '--root', world, '--no-progress')
    one_line(code, err, 2, 'bad.pt', *words)

def test_debug_shows_the_traceback(world, tmp_path):
    bad = tmp_path / 'bad.pt'; torch.save(torch.zeros(3), bad)
    with pytest.raises(CheckpointError, match='bare tensor'): E.eval_cli(['--checkpoint', str(bad), '--root', str(world), '--debug'])
    p = cli('--checkpoint', bad, '--root', world, '--debug')
    assert p.returncode == 1 and 'Traceback' in p.stderr and 'CheckpointError' in p.stderr

# ---- failures: one line, exit 1 (or a way round them)

def test_a_truncated_image(world, ckpt, tmp_path):
    root = tmp_path / 'w'; shutil.copytree(world, root)
    victim = sorted((root / 'bounding_box_test').glob('*.jpg'))[3]
    victim.write_bytes(victim.read_bytes()[:200])                                          # cut short
    p = cli('--checkpoint', ckpt, '--root', root, '--no-progress')
    one_line(p.returncode, p.stderr, 1, victim.name, 'cannot decode')
    code, out, err = run('--checkpoint', ckpt, '--root', root, '--skip-unreadable', '--out', tmp_path / 'r.json', '--no-progress')
    assert code == 0, err
    assert 'left out 1 unreadable' in out and victim.name in out
    j = json.loads((tmp_path / 'r.json').read_text())
    assert j['unreadable'] == [str(victim)] and j['n_gallery'] == len(get_dataset('synthetic', world).gallery) - 1

def test_an_empty_query_split(world, ckpt, tmp_path):
    root = tmp_path / 'w'; shutil.copytree(world, root)
    for p in (root / 'query').iterdir(): p.unlink()
    one_line(*run('--checkpoint', ckpt, '--root', root, '--no-progress')[::2], 1, 'query split is empty')

def test_no_query_with_a_true_match(world, ckpt, tmp_path):
    root = tmp_path / 'w'; shutil.copytree(world, root)
    qpids = {r[1] for r in get_dataset('synthetic', world).query}
    for p in (root / 'bounding_box_test').iterdir():
        if int(p.name.split('_')[0]) in qpids: p.unlink()
    one_line(*run('--checkpoint', ckpt, '--root', root, '--no-progress')[::2], 1, 'no query has a valid true match')

def test_an_out_file_that_cannot_be_written(world, ckpt):
    if not Path('/dev/full').exists(): pytest.skip('no /dev/full here to play a full disk')
    code, out, err = run('--checkpoint', ckpt, '--root', world, '--out', '/dev/full', '--no-progress')
    one_line(code, err, 1, 'No space left')                                              # the evaluation ran; writing failed
    assert 'single query' in out

# ---- settings

def test_multi_query_from_gt_bbox(world, ckpt, tmp_path):
    root = tmp_path / 'mq'; shutil.copytree(world, root)
    ds = get_dataset('synthetic', root); (root / 'gt_bbox').mkdir()
    for path, pid, cam in ds.query[:10]:  # two extra boxes for ten queries, and one of an unrelated identity
        for k in range(2): shutil.copy(path, root / 'gt_bbox' / Path(path).name.replace('.jpg', f'_{k}.jpg'))
    shutil.copy(ds.query[0][0], root / 'gt_bbox' / '0999_c1s1_000001_00.jpg')
    assert len(E.multi_query_records(root, ds.query)) == 20
    res, ev = E.run_eval(ckpt, root, device='cpu', batch_size=32, progress=False)
    assert set(res['results']) == {'SQ', 'MQ'} and ev.info['n_multi_query'] == 20
    # identical copies pool to the query's own feature: MQ equals SQ exactly
    np.testing.assert_allclose(ev.results['MQ'].cmc, ev.results['SQ'].cmc, atol=1e-6)
    assert abs(ev.results['MQ'].mAP - ev.results['SQ'].mAP) < 1e-6

def test_single_shot_setting_for_classic_protocol(world, ckpt):
    ds = get_dataset('synthetic', world)
    classic = SimpleNamespace(name='classic-like', query=ds.query, gallery=ds.gallery, protocol='classic')
    ev = E.evaluate_model(load_model(ckpt), classic, batch_size=32, progress=False)
    assert set(ev.results) == {'SQ', 'SS'} and ev.results['SS'].mAP == pytest.approx(ev.results['SS'].mINP)
    assert 'single-shot' in E.results_table(ev.results)

def test_the_input_spec_travels(world, ckpt):
    model, ds = load_model(ckpt), get_dataset('synthetic', world)
    assert model.input_spec == SPEC
    ev = E.evaluate_model(model, ds, progress=False)
    assert ev.info['input_spec'] == SPEC.as_dict()
    other = E.evaluate_model(model, ds, InputSpec(64, 32), progress=False)                # an explicit spec overrides
    assert other.info['input_spec']['height'] == 64 and not np.allclose(other.distmat, ev.distmat)

def test_ranked_list_excludes_junk_and_marks_matches():
    q = [('q', 1, 0)]; g = [('a', 1, 0), ('b', 2, 1), ('c', 1, 1), ('d', -1, 2), ('e', 3, 0)]
    d = np.array([[0.0, 0.3, 0.2, 0.1, 0.3]])
    assert E.ranked_list(d, q, g, 0, top=10) == [(2, True), (1, False), (4, False)]  # stable ties: b before e
