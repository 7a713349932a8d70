"Tests for hacnn_nbdev.toolbox: the four commands end to end on a tiny world, FeatureExtractor's parity with the evaluation path, the export round trip, and the mistakes."
import csv, contextlib, io, json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch, matplotlib
matplotlib.use('Agg')
from PIL import Image
from conftest import one_line_error
from hacnn_nbdev.core import InputSpec
from hacnn_nbdev.checkpoint import CheckpointError, save_checkpoint, model_checkpoint, load_model
from hacnn_nbdev.cli import UsageError, run_command
from hacnn_nbdev.loaders import build_test_loader
from hacnn_nbdev.runtime import extract_features
from hacnn_nbdev.model import HACNN
from hacnn_nbdev import toolbox as T

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
BIN = Path(sys.executable).parent
H, W = 128, 48  # not the default 160 x 64: the commands must read the checkpoint's input spec
SPEC = InputSpec(H, W, mean=(0.5, 0.45, 0.4))

def run(cmd, *args, timeout=300):
    "Run an installed console script (or `python -m hacnn_nbdev.toolbox` for cmd=None)."
    exe = [sys.executable, '-m', 'hacnn_nbdev.toolbox'] if cmd is None else [str(BIN / cmd)]
    return subprocess.run(exe + [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout)

def in_process(func, *argv):
    "Run `func` as its command on `argv` in this process: (exit code, stderr)."
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try: run_command(func, 'hacnn_x', [str(a) for a in argv]); return 0, err.getvalue()
        except SystemExit as e: return e.code, err.getvalue()

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Seven images of different sizes and types in nested folders, a non-image file, and a random-weight checkpoint."
    root = tmp_path_factory.mktemp('tb'); rng = np.random.default_rng(0)
    imgs = root / 'imgs'; (imgs / 'cam1' / 'deep').mkdir(parents=True); (imgs / 'cam2').mkdir()
    names = ['cam1/a.png', 'cam1/b.jpg', 'cam1/deep/c.PNG', 'cam2/d.jpeg', 'cam2/e.bmp', 'cam2/f.png', 'g.JPG']
    for i, n in enumerate(names):
        h, w = int(rng.integers(60, 200)), int(rng.integers(30, 90))
        im = np.repeat(rng.integers(0, 256, (h // 10 + 1, 1, 3)), 10, 0)[:h].repeat(w, 1).astype(np.uint8)   # coloured stripes
        Image.fromarray(np.clip(im + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8)).save(imgs / n)
    (imgs / 'notes.txt').write_text('not an image')
    torch.manual_seed(0)
    net = HACNN(num_classes=5, widths=(8, 16, 24), feat_dim=16).eval()
    ckpt = save_checkpoint(model_checkpoint(net, input_spec=SPEC), root / 'tiny.pt')
    return {'root': root, 'imgs': imgs, 'ckpt': ckpt, 'files': sorted(p for p in imgs.rglob('*') if p.is_file() and p.suffix != '.txt')}

@pytest.fixture(scope='module')
def feats(world):
    "hacnn_features on the folder (dashed option names), once."
    out = world['root'] / 'feats.npz'
    p = run('hacnn_features', '--checkpoint', world['ckpt'], '--images', world['imgs'], '--out', out, '--batch-size', 3, '--no-progress')
    assert p.returncode == 0, p.stderr
    return out, p

# ---- the commands, end to end

@pytest.mark.parametrize('cmd, words', [('hacnn_features', ['--images', '--batch_size', '--fast', 'recursively']),
                                        ('hacnn_query', ['--query', '--gallery', '--rerank', '--faiss', '--top']),
                                        ('hacnn_attention', ['--images', '--out', '--device']),
                                        ('hacnn_export', ['--onnx', '--safetensors', 'model.json'])])
def test_help_explains_every_option(cmd, words):
    p = run(cmd, '--help')
    assert p.returncode == 0 and p.stdout.startswith(f'usage: {cmd}'), p.stderr
    for w in words: assert w in p.stdout

def test_features_file(world, feats):
    out, p = feats
    assert 'wrote' in p.stdout and '7 images' in p.stdout
    with np.load(out, allow_pickle=False) as z:
        assert z['features'].shape == (7, 32) and z['features'].dtype == np.float32
        assert [Path(s) for s in z['paths']] == world['files']                          # recursive, sorted, any case of extension
        assert (int(z['height']), int(z['width'])) == (H, W)
        np.testing.assert_allclose(z['mean'], [0.5, 0.45, 0.4], atol=1e-6)
        f = z['features']
    np.testing.assert_allclose(T.FeatureExtractor(world['ckpt'], 'cpu')(world['files']), f, atol=1e-5)

def test_features_from_a_list_file(world, tmp_path):
    lst = tmp_path / 'list.txt'
    lst.write_text(f"# two of them\n{world['files'][3]}\n\n{world['files'][0]}\n")
    T.features_cli(checkpoint=str(world['ckpt']), images=str(lst), out=str(tmp_path / 'f'), no_progress=True)  # no .npz suffix added
    z = T.load_features(tmp_path / 'f')
    assert z['paths'] == [str(world['files'][3]), str(world['files'][0])] and z['features'].shape == (2, 32)

def test_query_ranks_the_query_itself_first(world, feats, tmp_path):
    qs = [world['files'][1], world['files'][5]]
    p = run('hacnn_query', '--checkpoint', world['ckpt'], '--query', *qs, '--gallery', feats[0], '--top', 4, '--out', tmp_path)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(tmp_path / 'ranking.csv')))
    assert len(rows) == 8 and list(rows[0]) == ['query', 'rank', 'gallery', 'distance']
    for q in qs:
        mine = [r for r in rows if r['query'] == str(q)]
        assert [r['rank'] for r in mine] == ['1', '2', '3', '4']
        assert mine[0]['gallery'] == str(q) and float(mine[0]['distance']) < 1e-2
        d = [float(r['distance']) for r in mine]; assert d == sorted(d)
    assert Image.open(tmp_path / 'ranked.png').format == 'PNG'
    assert str(qs[0]) in p.stdout and 'distance' in p.stdout

@pytest.mark.parametrize('opts', [dict(), dict(rerank=True), dict(faiss=True)])
def test_query_on_a_folder_gallery(world, tmp_path, opts):
    q = world['files'][2]
    T.query_cli(checkpoint=str(world['ckpt']), query=[str(q)], gallery=str(world['imgs']), out=str(tmp_path), top=3, no_progress=True, **opts)
    rows = list(csv.DictReader(open(tmp_path / 'ranking.csv')))
    assert len(rows) == 3 and rows[0]['gallery'] == str(q) and float(rows[0]['distance']) < 1e-2

def test_attention_pictures(world, tmp_path):
    p = run('hacnn_attention', '--checkpoint', world['ckpt'], '--images', world['files'][0], world['imgs'] / 'cam2', '--out', tmp_path, '--no-progress')
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ['a_attention.png', 'd_attention.png', 'e_attention.png', 'f_attention.png']
    assert Image.open(tmp_path / 'a_attention.png').size[0] > Image.open(tmp_path / 'a_attention.png').size[1]   # a row of 7 panels

# ---- FeatureExtractor and the export

def test_feature_extractor_matches_the_evaluation_path(world):
    fx = T.FeatureExtractor(world['ckpt'], 'cpu', batch_size=4)
    assert fx.spec == SPEC and fx.model.input_spec == SPEC
    files = world['files']
    loader = build_test_loader([(str(p), 0, 0) for p in files], 4, height=H, width=W, mean=SPEC.mean, std=SPEC.std)
    ref = extract_features(fx.model, loader, progress=False)[0].numpy()
    got = fx(files)
    assert got.shape == (7, 32) and got.dtype == np.float32 and np.abs(got - ref).max() < 1e-5
    pil = Image.open(files[1]); arr = np.asarray(pil.convert('RGB'))
    assert np.abs(fx(pil) - ref[1:2]).max() < 1e-5 and np.abs(fx(arr) - ref[1:2]).max() < 1e-5           # one image: (1, D)
    assert np.abs(fx([str(files[0]), pil, arr]) - ref[[0, 1, 1]]).max() < 1e-5                          # a mixed list
    assert fx([]).shape == (0, 32)
    with pytest.raises(TypeError, match='uint8'): fx(arr.astype(np.float32))
    with pytest.raises(TypeError, match='image 1'): fx([pil, 3])

def test_fast_extractor_agrees(world):
    a = T.FeatureExtractor(world['ckpt'], 'cpu')(world['files'][:3])
    fast = T.FeatureExtractor(world['ckpt'], 'cpu', fast=True)
    b = fast(world['files'][:3])
    from hacnn_nbdev.deploy import REDUCED_RTOL                                          # bf16 on a bf16 CPU, else fp32
    assert np.abs(a - b).max() < (1e-4 if fast.net.dtype is None else REDUCED_RTOL * np.abs(a).max())

def test_export_round_trip(world, tmp_path):
    T.export_cli(checkpoint=str(world['ckpt']), out=str(tmp_path))                          # no format named: safetensors
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.json', 'model.safetensors']
    meta = json.loads((tmp_path / 'model.json').read_text())
    assert meta['model_kwargs']['widths'] == [8, 16, 24] and meta['input_spec'] == SPEC.as_dict() and meta['feature_dim'] == 32
    assert meta['arch'] == 'hacnn'
    model = T.load_exported(tmp_path)
    ref = torch.load(world['ckpt'], weights_only=True)['model']
    assert isinstance(model, HACNN) and not model.training and model.input_spec == load_model(world['ckpt']).input_spec == SPEC
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    f_ck = T.FeatureExtractor(world['ckpt'], 'cpu')(world['files'])
    f_ex = T.FeatureExtractor(tmp_path, 'cpu')(world['files'])                             # an export folder as --checkpoint
    assert np.array_equal(f_ck, f_ex)

def test_export_onnx(world, tmp_path):
    p = run('hacnn_export', '--checkpoint', world['ckpt'], '--out', tmp_path, '--onnx')
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ['model.json', 'model.onnx']       # --onnx alone: no safetensors
    diff = float(p.stdout.split('largest difference ')[1].split()[0])
    assert diff < 1e-4
    from hacnn_nbdev.deploy import OnnxFeatureExtractor
    assert OnnxFeatureExtractor(tmp_path / 'model.onnx')(torch.randn(2, 3, H, W)).shape == (2, 32)
    with pytest.raises(CheckpointError, match='no model.safetensors'): T.load_exported(tmp_path)

# ---- mistakes: one line, exit 2 for what was asked, 1 for a failed run

def test_missing_checkpoint(world, tmp_path):
    p = run('hacnn_features', '--checkpoint', tmp_path / 'missing.pt', '--images', world['imgs'], '--out', tmp_path / 'f.npz')
    one_line_error(p, 'hacnn_features', 2, 'missing.pt', 'does not exist')

def test_empty_folder(world, tmp_path):
    (tmp_path / 'empty').mkdir(); (tmp_path / 'empty' / 'readme.txt').write_text('no pictures here')
    p = run('hacnn_query', '--checkpoint', world['ckpt'], '--query', world['files'][0], '--gallery', tmp_path / 'empty', '--out', tmp_path / 'r')
    one_line_error(p, 'hacnn_query', 2, 'no images', 'empty')
    assert not (tmp_path / 'r').exists()

def test_unreadable_image(world, tmp_path):
    bad = tmp_path / 'bad'; bad.mkdir(); Image.open(world['files'][0]).save(bad / 'ok.png'); (bad / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    p = run('hacnn_attention', '--checkpoint', world['ckpt'], '--images', bad, '--out', tmp_path / 'att', '--no-progress')
    one_line_error(p, 'hacnn_attention', 1, 'broken.jpg', 'cannot decode')

def test_checkpoint_that_is_not_ours(world, tmp_path):
    other = tmp_path / 'resnet.pt'; torch.save({'state_dict': {'conv.weight': torch.zeros(2)}}, other)
    p = run('hacnn_export', '--checkpoint', other, '--out', tmp_path / 'e')
    one_line_error(p, 'hacnn_export', 2, 'resnet.pt')
    code, err = in_process(T.features_cli, '--checkpoint', world['files'][0], '--images', world['imgs'], '--out', tmp_path / 'f.npz')
    assert code == 2 and 'not a torch checkpoint' in err and err.count('\n') == 1

def test_module_entry_point():
    p = run(None)
    one_line_error(p, 'hacnn_nbdev.toolbox', 2, 'features, query, attention, export')
    p = run(None, 'query', '--help')
    assert p.returncode == 0 and p.stdout.startswith('usage: hacnn_query')

@pytest.mark.parametrize('func, argv, code, words', [
    (T.features_cli, ['--images', 'x'], 2, ['--checkpoint, --out are required']),
    (T.features_cli, ['--checkpoint', '{ck}', '--images', '{imgs}', '--out', '{tmp}/f.npz', '--batch-size', '0'], 2, ['batch_size', '>= 1']),
    (T.features_cli, ['--checkpoint', '{ck}', '--images', '{imgs}', '--out', '{tmp}/f.npz', '--batch-size', 'many'], 2, ['invalid int', '--help']),
    (T.features_cli, ['--checkpoint', '{ck}', '--images', '{imgs}', '--out', '{tmp}/f.npz', '--colour'], 2, ['unrecognized arguments: --colour']),
    (T.features_cli, ['--checkpoint', '{ck}', '--images', '{tmp}/list.txt', '--out', '{tmp}/f.npz'], 2, ['list.txt', 'line 2', 'gone.png']),
    (T.query_cli, ['--checkpoint', '{ck}', '--query', '{imgs}/g.JPG', '--gallery', '{imgs}', '--out', '{tmp}', '--rerank', '--faiss'], 2, ['do not combine']),
    (T.query_cli, ['--checkpoint', '{ck}', '--query', '{imgs}/g.JPG', '--gallery', '{tmp}/other.npz', '--out', '{tmp}'], 2, ['other.npz', '8-d features']),
    (T.query_cli, ['--checkpoint', '{ck}', '--query', '{imgs}/g.JPG', '--gallery', '{tmp}/list.txt', '--out', '{tmp}', '--top', '0'], 2, ['--top']),
    (T.attention_cli, ['--checkpoint', '{tmp}', '--images', '{imgs}', '--out', '{tmp}/a'], 2, ['not an export folder']),
    (T.features_cli, ['--checkpoint', '{ck}', '--images', '{imgs}', '--out', '{tmp}/f.npz', '--device', 'cuda'], 2, ['no CUDA GPU']),
])
def test_mistakes(world, tmp_path, func, argv, code, words):
    if 'cuda' in argv and torch.cuda.is_available(): pytest.skip('a GPU is present')
    (tmp_path / 'list.txt').write_text(f"{world['files'][0]}\ngone.png\n")
    T.save_features(tmp_path / 'other.npz', np.zeros((2, 8), np.float32), ['x.png', 'y.png'], SPEC)
    fill = lambda a: a.format(ck=world['ckpt'], imgs=world['imgs'], tmp=tmp_path)
    got, err = in_process(func, *map(fill, argv))
    assert got == code and err.count('\n') == 1 and err.startswith('hacnn_x: error: '), err
    for w in words: assert w in err, (w, err)

def test_one_error_path():
    "The commands answer through 18_cli: its UsageError, its exit codes, --debug; the toolbox keeps no copies."
    assert T.UsageError is UsageError and not any(hasattr(T, n) for n in ('dashed_options', 'exit_code', 'input_spec'))

def test_debug_shows_the_traceback(world, tmp_path):
    p = run('hacnn_features', '--checkpoint', tmp_path / 'missing.pt', '--images', world['imgs'], '--out', tmp_path / 'f.npz', '--debug')
    assert p.returncode == 1 and 'Traceback' in p.stderr and 'CheckpointError' in p.stderr

def test_export_folder_is_checked_like_a_checkpoint(world, tmp_path):
    "load_exported builds through 05c_checkpoint.build_model: the same refusals as for a checkpoint file."
    from safetensors.torch import load_file, save_file
    T.export_cli(checkpoint=str(world['ckpt']), out=str(tmp_path))
    w = load_file(tmp_path / 'model.safetensors'); k = next(k for k, v in w.items() if v.is_floating_point())
    save_file({**w, k: torch.full_like(w[k], float('nan'))}, tmp_path / 'model.safetensors')
    with pytest.raises(CheckpointError, match='non-finite'): T.load_exported(tmp_path)
    save_file(w, tmp_path / 'model.safetensors')
    meta = json.loads((tmp_path / 'model.json').read_text())
    (tmp_path / 'model.json').write_text(json.dumps({**meta, 'model_kwargs': {**meta['model_kwargs'], 'feat_dim': 8}}))
    with pytest.raises(CheckpointError, match='do not fit'): T.load_exported(tmp_path)
    old = {k: v for k, v in meta.items() if k not in ('input_spec', 'arch')}                # the older spelling: 'input'
    (tmp_path / 'model.json').write_text(json.dumps({**old, 'input': meta['input_spec']}))
    assert T.load_exported(tmp_path).input_spec == SPEC
    (tmp_path / 'model.json').write_text('[1, 2]')
    code, err = in_process(T.features_cli, '--checkpoint', tmp_path, '--images', world['imgs'], '--out', tmp_path / 'f.npz')
    assert code == 2 and 'not a model.json written by hacnn_export' in err
