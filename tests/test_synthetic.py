"""hacnn_nbdev.synthetic (with .render and .baseline): the world's protocol, determinism, knobs, safety of the output
folder, and the hacnn_synth CLI."""
import contextlib, csv, hashlib, io, json, os, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error as _one_line_error
from PIL import Image

from hacnn_nbdev.baseline import colour_histograms, histogram_distances
from hacnn_nbdev.cli import UsageError, exit_code
from hacnn_nbdev.data import Market1501, OptionError, SyntheticWorld
from hacnn_nbdev import synthetic as S
from hacnn_nbdev.synthetic import (GENERATOR, SIBLING_DETAILS, make_sibling, make_world, synth_cli, synth_main, detection,
                                   passers_by, plan_world, render_image, sample_identity, UnusableRootError)

SMALL = dict(n_ids=12, imgs_per_id=(4, 7), n_distractors=5)
NAME = re.compile(r'^(\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$')


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('w')/'synthetic'
    return root, make_world(root, seed=3, **SMALL)


def test_market_layout_and_protocol(world):
    root, summary = world
    ds = Market1501(root)
    assert ds.num_train_pids == 6 and len({r[1] for r in ds.query}) == 6
    assert summary['counts'] == {'train': len(ds.train), 'query': len(ds.query), 'gallery': len(ds.gallery)}
    for sub in ('bounding_box_train', 'query', 'bounding_box_test'):
        for p in (root/sub).iterdir():
            m = NAME.match(p.name); assert m, p.name
            assert int(m.group(1)) >= 0 and 1 <= int(m.group(2)) <= 6        # no junk (-1) files at all
            assert Image.open(p).size == (64, 128)
    assert sum(r[1] == 0 for r in ds.gallery) == 5 and all(r[1] > 0 for r in ds.query)
    assert not any(p.name.startswith('0000_') for p in (root/'bounding_box_train').iterdir())
    keys = [(r[1], r[2]) for r in ds.query]
    assert len(keys) == len(set(keys))                                          # one query per person and camera
    for pid, cam in keys:                                                       # a true match under another camera
        assert any(g[1] == pid and g[2] != cam for g in ds.gallery)
    train_ids = {int(Path(r[0]).name[:4]) for r in ds.train}
    assert train_ids.isdisjoint({r[1] for r in ds.query})                      # train and test people are disjoint
    assert [r[1:] for r in SyntheticWorld(root).gallery] == [r[1:] for r in ds.gallery]


def test_metadata(world):
    root, summary = world
    meta = json.loads((root/'world.json').read_text())
    assert meta['params']['seed'] == 3 and meta['format'] == GENERATOR
    rows = list(csv.DictReader((root/'images.csv').open()))
    assert len(rows) == sum(summary['counts'].values())
    assert {r['view'] for r in rows} <= {'front', 'back', 'left', 'right'}
    sibs = [r for r in rows if r['sibling_of']]
    assert all(r['differs_in'] in SIBLING_DETAILS for r in sibs)
    for r in rows:
        sub = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}[r['split']]
        assert (root/sub/r['name']).is_file()


def test_same_seed_byte_identical_any_workers(world, tmp_path):
    root, _ = world
    make_world(tmp_path/'again', seed=3, workers=2, **SMALL)
    assert digest(root) == digest(tmp_path/'again')
    make_world(tmp_path/'other', seed=4, **SMALL)
    assert digest(root) != digest(tmp_path/'other')


def test_reuse_overwrite_and_interrupted(world, tmp_path):
    root, _ = world
    assert make_world(root, seed=3, **SMALL)['reused'] is True
    w = tmp_path/'w'
    make_world(w, seed=0, n_ids=4, imgs_per_id=(4, 4), n_distractors=1)
    (w/'world.json').unlink()                                                   # as if interrupted before the end
    extra = w/'query'/'0099_c1s1_000001_00.jpg'; extra.write_bytes(b'stale')
    s = make_world(w, seed=0, n_ids=4, imgs_per_id=(4, 4), n_distractors=1)
    assert s['reused'] is False and not extra.exists() and (w/'world.json').is_file()
    assert make_world(w, seed=0, n_ids=4, imgs_per_id=(4, 4), n_distractors=1, overwrite=True)['reused'] is False
    assert make_world(w, seed=0, n_ids=4, imgs_per_id=(4, 4), n_distractors=2)['reused'] is False  # other options: remade
    meta = json.loads((w/'world.json').read_text()); meta['format'] = 'hacnn_nbdev.synthetic/0'
    (w/'world.json').write_text(json.dumps(meta))                               # written by an older generator: remade
    assert make_world(w, seed=0, n_ids=4, imgs_per_id=(4, 4), n_distractors=2)['reused'] is False


def test_refuses_a_folder_it_did_not_write(tmp_path):
    real = tmp_path/'market1501'/'bounding_box_train'; real.mkdir(parents=True)
    f = real/'0002_c1s1_000451_03.jpg'; f.write_bytes(b'a real image')
    with pytest.raises(FileExistsError, match='did not write'): make_world(tmp_path/'market1501', n_ids=4)
    assert f.read_bytes() == b'a real image'


@pytest.mark.parametrize('kw, msg', [(dict(n_ids=1), 'n_ids'), (dict(imgs_per_id=(3, 5)), 'imgs_per_id'),
                                     (dict(imgs_per_id=(6, 5)), 'imgs_per_id'), (dict(n_cameras=1), 'n_cameras')])
def test_bad_options(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg): make_world(tmp_path/'w', **kw)


def test_jitter_changes_only_the_boxes(tmp_path):
    w = plan_world(seed=1, n_ids=20, imgs_per_id=(4, 6))
    assert w == plan_world(seed=1, n_ids=20, imgs_per_id=(4, 6), jitter=2.0)   # the plan does not depend on jitter
    a, b = (make_world(tmp_path/f'j{j}', seed=1, n_ids=20, imgs_per_id=(4, 6), jitter=j) for j in (0.0, 2.0))
    ra, rb = (list(csv.DictReader((tmp_path/f'j{j}'/'images.csv').open())) for j in (0.0, 2.0))
    key = lambda r: (r['name'], r['split'], r['pid'], r['camid'], r['view'], r['occlusion'])
    assert [key(r) for r in ra] == [key(r) for r in rb]
    assert {r['truncation'] for r in ra} == {'none'} and len({r['truncation'] for r in rb}) > 1
    i = next(k for k, im in enumerate(w['images']) if im['split'] == 'train')
    assert not np.array_equal(render_image(w, i, jitter=0), render_image(w, i, jitter=2))


def test_crowd_adds_a_passer_by_and_nothing_else():
    w = plan_world(seed=2, n_ids=16, imgs_per_id=(4, 6))
    n = len(w['images'])
    some = [passers_by(w, i, detection(w, i), .5) for i in range(n)]
    assert 0.3 * n < sum(len(o) == 1 for o in some) < 0.7 * n                  # about half the boxes at crowd 0.5
    assert all(len(passers_by(w, i, detection(w, i), 1.)) == 1 and not passers_by(w, i, detection(w, i), 0.) for i in range(n))
    with_p = [i for i in range(n) if some[i]]; without = [i for i in range(n) if not some[i]]
    for i in without[:5]:                                                       # no passer-by drawn: the very same pixels
        assert np.array_equal(render_image(w, i, crowd=.5), render_image(w, i, crowd=0.))
    for i in with_p:
        ident, view, det = some[i][0]
        assert set(ident) == set(w['people'][1]) and view in range(4) and det['occ'] == 'none'
        assert .35 <= abs(det['cx'] - detection(w, i)['cx']) <= .6               # beside the person
        a, b = render_image(w, i, crowd=.5), render_image(w, i, crowd=0.)
        if abs(det['cx'] - .5) < .55 and detection(w, i)['occ'] == 'none':      # its body reaches into an unoccluded box: other pixels
            assert not np.array_equal(a, b)
        far = slice(0, 6) if det['cx'] > detection(w, i)['cx'] else slice(-6, None)
        assert np.array_equal(a[:, far], b[:, far])                             # the other edge of the box is untouched


def test_image_size_and_cameras(tmp_path):
    make_world(tmp_path/'w', n_ids=4, imgs_per_id=(4, 4), n_cameras=3, height=96, width=48, n_distractors=0)
    ds = Market1501(tmp_path/'w')
    assert Image.open(ds.train[0][0]).size == (48, 96)
    assert {r[2] for r in ds.train + ds.query + ds.gallery} <= {0, 1, 2} and not any(r[1] == 0 for r in ds.gallery)


def test_siblings_differ_in_one_local_detail():
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = sample_identity(rng); b, detail = make_sibling(a, rng)
        diff = {k for k in a if a[k] != b[k]}
        assert len(diff) == 1 and diff <= {'logo', 'logo_col', 'bag', 'bag_col', 'shoes', 'hair'}
    w = plan_world(seed=0, n_ids=60, sibling_frac=0.5)
    assert len(w['siblings']) > 10
    for pid, (base, _) in w['siblings'].items():
        assert (pid <= 30) == (base <= 30)                                       # a sibling stays in its split


def test_histogram_baseline(world):
    root, _ = world
    ds = Market1501(root)
    f = colour_histograms([r[0] for r in ds.query[:3]])
    assert f.shape == (3, 8 * 8 * 4 * 4) and np.allclose((f.reshape(3, 8, -1) ** 2).sum(-1), 1, atol=1e-5)
    d = histogram_distances(ds.query, ds.query)
    assert np.allclose(np.diag(d), 0, atol=1e-3) and (d >= 0).all()
    c = colour_histograms([r[0] for r in ds.query[:1]], centre=.5)
    assert c.shape == (1, 1024) and not np.allclose(c, f[:1])                  # same bins, fewer columns


def test_cli(tmp_path, capsys):
    cmd = [sys.executable, '-m', 'hacnn_nbdev.synthetic']                      # the command, end to end (once: slow)
    args = ['--root', str(tmp_path/'cli'), '--seed', '2', '--n-ids', '6', '--imgs_min', '4', '--imgs-max', '5',
            '--n_distractors', '2', '--workers', '1']
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'wrote' in r.stdout and 'Synthetic world' in r.stdout and 'train' in r.stdout
    assert len(SyntheticWorld(tmp_path/'cli').train) > 0
    kw = dict(root=str(tmp_path/'cli'), seed=2, n_ids=6, imgs_min=4, imgs_max=5, n_distractors=2, workers=1)
    assert synth_cli(**kw) is None and 'reused' in capsys.readouterr().out    # in-process calls for the rest
    synth_cli(**kw, overwrite=True); assert 'wrote' in capsys.readouterr().out
    with pytest.raises(ValueError, match='n_ids'): synth_cli(root=str(tmp_path/'bad'), n_ids=1)


def test_split_modules_and_names_kept():
    "The renderer and the baseline live in their own modules, and only there."
    from hacnn_nbdev import baseline, render
    assert render.VIEWS == ('front', 'back', 'left', 'right')
    assert baseline.histogram_distances is histogram_distances and not hasattr(S, 'colour_histograms')
    assert S.OptionError is OptionError and issubclass(OptionError, UsageError)


# --- hostile input: nothing lost, every mistake answered ----------------------------------------------------

TINY = dict(seed=0, n_ids=4, imgs_per_id=(4, 4), n_distractors=1)
TINY_ARGS = ['--seed', 0, '--n_ids', 4, '--imgs_min', 4, '--imgs_max', 4, '--n_distractors', 1, '--workers', 1]


def tree(root):
    "Every path under `root` (files and folders), relative, with the bytes of each file."
    paths = sorted(Path(root).rglob('*'))
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in paths}


def cli(*args):
    "Run the hacnn_synth command in this process (`synth_main`, what the console script runs): code, out, err."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: synth_main([str(a) for a in args]); code = 0
        except SystemExit as e: code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_line_error(r, code, *words): _one_line_error(r, 'hacnn_synth', code, *words)


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path/'tiny'
    make_world(root, **TINY)
    return root


@pytest.mark.parametrize('kw, option', [
    (dict(n_ids=0), 'n_ids'), (dict(n_ids=True), 'n_ids'), (dict(imgs_per_id=(2, 4)), 'imgs_per_id'),
    (dict(imgs_per_id=(6, 5)), 'imgs_per_id'), (dict(imgs_per_id=5), 'imgs_per_id'), (dict(seed=-1), 'seed'),
    (dict(seed=1.5), 'seed'), (dict(n_cameras=1), 'n_cameras'), (dict(clutter=-1), 'clutter'),
    (dict(noise=-1), 'noise'), (dict(jitter=float('nan')), 'jitter'), (dict(occlusion=2), 'occlusion'),
    (dict(crowd=-0.1), 'crowd'), (dict(sibling_frac=1.5), 'sibling_frac'), (dict(n_distractors=-1), 'n_distractors'),
    (dict(height=0), 'height'), (dict(width=-4), 'width'), (dict(quality=0), 'quality'), (dict(workers=0), 'workers')])
def test_bad_option_on_a_world_deletes_nothing(tiny, kw, option):
    before = tree(tiny)
    with pytest.raises(OptionError, match=f'^{option} must be ') as e: make_world(tiny, **{**TINY, **kw})
    assert e.value.option == option and tree(tiny) == before


def test_numpy_scalars_are_options_too(tmp_path):
    s = make_world(tmp_path/'w', **{**TINY, 'seed': np.int64(0), 'jitter': np.float32(0.5)})
    assert s['params']['seed'] == 0 and s['params']['jitter'] == 0.5


@pytest.mark.parametrize('name, first', [('images.csv', 'images.csv'), ('world.json', 'world.json'),
                                         ('notes.txt', 'notes.txt'), ('query/holiday.jpg', 'query/holiday.jpg'),
                                         ('extra/a.txt', 'extra')])
@pytest.mark.parametrize('content', ['{"mine": 1}', 'not JSON'])
def test_refuses_a_folder_with_foreign_files_and_keeps_them(tmp_path, name, first, content):
    root = tmp_path/'r'
    (root/name).parent.mkdir(parents=True, exist_ok=True)
    (root/name).write_text(content)
    before = tree(root)
    for overwrite in (False, True):
        with pytest.raises(UnusableRootError) as e: make_world(root, **TINY, overwrite=overwrite)
        msg = str(e.value)
        assert f"{str(root)!r} holds {first!r}, which hacnn_synth did not write" in msg
        assert 'choose another --root' in msg and '\n' not in msg
        assert tree(root) == before                                             # nothing written or deleted


@pytest.mark.parametrize('name', ['notes.txt', 'query/holiday.jpg', 'bounding_box_test/sub/x.jpg', 'images.csv'])
def test_a_world_with_a_foreign_file_is_not_rewritten(tiny, name):
    (tiny/name).parent.mkdir(parents=True, exist_ok=True)
    (tiny/name).write_text('a user file')                                       # images.csv: the user's, over ours
    before = tree(tiny)
    for kw in (dict(overwrite=True), dict(n_distractors=2)):                    # forced, or other options
        with pytest.raises(FileExistsError, match='which hacnn_synth did not write'):
            make_world(tiny, **{**TINY, **kw})
        assert tree(tiny) == before


def test_never_deletes_through_a_link(tmp_path, tiny):
    real = tmp_path/'market1501'/'query'
    real.mkdir(parents=True)
    (real/'0001_c1s1_000001_00.jpg').write_bytes(b'a real image')
    shutil.rmtree(tiny/'query')
    (tiny/'query').symlink_to(real, target_is_directory=True)
    with pytest.raises(FileExistsError, match="holds 'query', which hacnn_synth did not write"):
        make_world(tiny, **TINY)
    assert (real/'0001_c1s1_000001_00.jpg').read_bytes() == b'a real image'


def test_root_that_is_a_file(tmp_path):
    f = tmp_path/'f'
    f.write_text('mine')
    with pytest.raises(FileExistsError, match='is a file, not a folder'): make_world(f, **TINY)
    assert f.read_text() == 'mine'


def _lose_a_query(r): next((r/'query').iterdir()).unlink()
def _empty_a_gallery_image(r): next((r/'bounding_box_test').iterdir()).write_bytes(b'')
def _lose_the_train_folder(r): shutil.rmtree(r/'bounding_box_train')
def _lose_images_csv(r): (r/'images.csv').unlink()
def _add_a_stale_image(r): (r/'query'/'0099_c1s1_000001_00.jpg').write_bytes(b'stale')

def _cut_a_train_image(r):
    f = sorted((r/'bounding_box_train').iterdir())[0]
    f.write_bytes(f.read_bytes()[:-50])

def _miscount(r):
    meta = json.loads((r/'world.json').read_text())
    meta['counts']['query'] += 1
    (r/'world.json').write_text(json.dumps(meta))


@pytest.mark.parametrize('damage, why', [
    (_lose_a_query, 'query images are missing (e.g. query/'), (_empty_a_gallery_image, 'is empty or truncated'),
    (_cut_a_train_image, 'is empty or truncated'), (_lose_the_train_folder, 'train images are missing'),
    (_lose_images_csv, 'images.csv is missing'), (_add_a_stale_image, 'query/ holds 1 files it does not list'),
    (_miscount, 'its world.json 5')])
def test_only_a_whole_world_is_reused(tiny, damage, why):
    before = tree(tiny)
    damage(tiny)
    s = make_world(tiny, **TINY)
    assert s['reused'] is False and why in s['remade_because'], s['remade_because']
    assert tree(tiny) == before                                                 # written again, byte for byte
    again = make_world(tiny, **TINY)
    assert again['reused'] is True and again['remade_because'] is None


def test_a_damaged_world_with_a_foreign_file_says_both(tiny):
    _lose_a_query(tiny)
    (tiny/'notes.txt').write_text('mine')
    before = tree(tiny)
    with pytest.raises(FileExistsError) as e: make_world(tiny, **TINY)
    assert "holds 'notes.txt'" in str(e.value) and 'query images are missing' in str(e.value)
    assert tree(tiny) == before


def test_cli_mistakes_are_one_line_and_change_nothing(tmp_path):
    w = tmp_path/'w'
    assert cli('--root', w, *TINY_ARGS).returncode == 0
    before = tree(w)
    for args, words in [(['--n_ids', 0], ['--n_ids must be an integer >= 2', 'not 0']),
                        (['--imgs_min', 6, '--imgs_max', 5], ['--imgs_max must be an integer >= --imgs_min (6)']),
                        (['--imgs_min', 2], ['--imgs_min must be an integer >= 4']),
                        (['--seed', -1], ['--seed must be an integer >= 0']),
                        (['--occlusion', 2], ['--occlusion must be a probability']),
                        (['--workers', -1], ['--workers must be'])]:
        one_line_error(cli('--root', w, *TINY_ARGS, *args), 2, *words)
        assert tree(w) == before
    next((w/'query').iterdir()).unlink()                                        # a damaged world is written again
    r = cli('--root', w, *TINY_ARGS)
    assert r.returncode == 0 and 'could not be reused' in r.stdout and 'missing' in r.stdout, r.stdout + r.stderr
    assert tree(w) == before


def test_cli_refuses_a_folder_it_did_not_write(tmp_path):
    u = tmp_path/'u'
    u.mkdir()
    (u/'images.csv').write_text('my,data\n')
    r = cli('--root', u, *TINY_ARGS)
    one_line_error(r, 2, repr(str(u)), "'images.csv'", 'did not write', 'choose another --root')
    assert tree(u) == {'images.csv': b'my,data\n'}
    f = tmp_path/'file'
    f.write_text('x')
    one_line_error(cli('--root', f, *TINY_ARGS), 2, 'is a file, not a folder')
    one_line_error(cli('--root', f/'sub'/'w', *TINY_ARGS), 2, 'lies inside', repr(str(f)))
    assert f.read_text() == 'x'


# --- world.json written all at once; damaged metadata; a run that fails -------------------------------------

def test_metadata_is_written_atomically(tiny, monkeypatch):
    clean = tree(tiny)
    assert not [p for p in clean if p.endswith('.tmp')]                          # no temporary file left
    real = os.replace
    def crash(src, dst):
        if Path(dst).name == 'world.json': raise OSError(28, 'No space left on device')
        return real(src, dst)
    monkeypatch.setattr(S.os, 'replace', crash)
    with pytest.raises(OSError, match='No space left'): make_world(tiny, **{**TINY, 'overwrite': True})
    assert not (tiny/'world.json').exists() and (tiny/'.world.json.tmp').is_file()   # never half a world.json
    monkeypatch.setattr(S.os, 'replace', real)
    s = make_world(tiny, **TINY)                                                 # the leftover is ours: remade
    assert s['reused'] is False and 'world.json is missing' in s['remade_because']
    assert tree(tiny) == clean


@pytest.mark.parametrize('text', ['', '{"format": "hacnn_nbdev.synth', '\x00\x00\x00'])
def test_a_damaged_world_json_is_remade_in_our_folder_only(tiny, tmp_path, text):
    clean = tree(tiny)
    (tiny/'world.json').write_text(text)
    s = make_world(tiny, **TINY)
    assert s['remade_because'] == 'its world.json is damaged' and tree(tiny) == clean
    other = tmp_path/'other'; other.mkdir(); (other/'world.json').write_text(text)   # no marker: not ours
    with pytest.raises(UnusableRootError, match="holds 'world.json'"): make_world(other, **TINY)
    assert (other/'world.json').read_text() == text


@pytest.mark.parametrize('cut', [0, 10, 40])
def test_a_cut_images_csv_is_remade(tiny, cut):
    clean = tree(tiny)
    (tiny/'images.csv').write_bytes((tiny/'images.csv').read_bytes()[:cut])
    s = make_world(tiny, **TINY)
    assert s['reused'] is False and 'images.csv' in s['remade_because'] and tree(tiny) == clean


def test_an_image_replaced_by_a_folder_is_refused(tiny):
    f = next((tiny/'query').iterdir())
    f.unlink(); f.mkdir()
    with pytest.raises(UnusableRootError, match=f"query/{f.name}"): make_world(tiny, **TINY)
    assert f.is_dir()


def test_cli_a_failed_run_is_status_1_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    def full(*a, **k): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(S.Image.Image, 'save', full)
    r = cli('--root', tmp_path/'w', *TINY_ARGS)
    one_line_error(r, 1, 'writing the world into', 'failed', 'No space left on device')
    assert r.stdout == ''
    with pytest.raises(OSError, match='No space left'): synth_main(['--root', str(tmp_path/'w'), *map(str, TINY_ARGS), '--debug'])


def test_cli_spellings_and_error_types(tmp_path):
    r = cli('--root', tmp_path/'w', '--n-ids', 4, '--imgs-min', 4, '--imgs_max', 4, '--n-distractors', 1, '--workers', 1)
    assert r.returncode == 0 and 'wrote' in r.stdout, r.stderr
    for args, words in [(['--n-ids', 1], ['--n_ids must be an integer >= 2']), (['--crowd', 'lots'], ['--crowd', 'invalid float']),
                        (['--height', 0], ['--height must be an integer >= 1']), (['--nids', 4], ['unrecognized arguments'])]:
        one_line_error(cli('--root', tmp_path/'w', '--workers', 1, *args), 2, *words)
    assert exit_code(UnusableRootError('x')) == 2 and exit_code(OptionError('a', 'b', 1)) == 2
    assert isinstance(UnusableRootError('x'), FileExistsError)


def test_console_script_entry():
    "settings.ini runs hacnn_synth through `synth_main` (one error path), not the plain function."
    ini = (Path(__file__).resolve().parents[1]/'settings.ini').read_text()
    assert 'hacnn_synth=hacnn_nbdev.synthetic:synth_main' in ini
