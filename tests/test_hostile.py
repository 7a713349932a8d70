"""A hostile or clumsy user at every command: each case is run as the user would run it (the installed command
in a fresh process) and must end as it should — a correct result, or one line `prog: error: ...` with exit
status 2 (a mistake in what was asked) or 1 (a run that failed) — never a traceback, and never with a file of
the user's changed. `python tests/test_hostile.py` prints the tally by outcome."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
TINY_TRAIN = ['--widths', '8,16,24', '--feat_dim', '16', '--batch_size', '8', '--height', '64', '--width', '32',
              '--no-progress', '--threads', '1']


def build(root:Path) -> dict:
    "The things the cases point at: a tiny world, a trained checkpoint, user files, broken files."
    from hacnn_nbdev.synthetic import make_world
    from hacnn_nbdev.train import train
    w = root / 'world'
    make_world(w, n_ids=12, imgs_per_id=(4, 5), seed=1, workers=1)
    train(root=str(w), dataset='synthetic', out=str(root / 'run'), epochs=1, widths='8,16,24', feat_dim=16,
          batch_size=8, height=64, width=32, progress=False, threads=1, log=lambda m: None)
    mine = root / 'mine'; mine.mkdir()                        # a user's folder with their own files in it
    for n, t in (('config.json', '{"mine": 1}'), ('world.json', '{"mine": 2}'), ('images.csv', 'a,b\n')):
        (mine / n).write_text(t)
    (root / 'afile').write_text('not a folder')
    (root / 'junk.pt').write_bytes(b'not a checkpoint')
    torch.save(torch.zeros(3), root / 'tensor.pt')
    torch.save([1, 2, 3], root / 'list.pt')
    ck = torch.load(root / 'run/last.pt', weights_only=True)
    ck['model']['stem.0.weight'] *= float('nan')
    torch.save(ck, root / 'nan.pt')
    imgs = root / 'imgs'; imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 32, 3), 40 * i, np.uint8)).save(imgs / f'{i}.jpg')
    (root / 'broken').mkdir(); (root / 'broken/0.jpg').write_bytes(b'\xff\xd8 truncated')
    (root / 'empty').mkdir()
    bad = root / 'badworld'                                   # training images that cannot be decoded
    shutil.copytree(w, bad)
    for f in (bad / 'bounding_box_train').glob('*.jpg'): f.write_bytes(b'not a jpeg')
    return dict(BADW=bad, W=w, CK=root / 'run/last.pt', MINE=mine, FILE=root / 'afile', JUNK=root / 'junk.pt',
                TENSOR=root / 'tensor.pt', LIST=root / 'list.pt', NAN=root / 'nan.pt', IMGS=imgs,
                BROKEN=root / 'broken', EMPTY=root / 'empty', NOWHERE=root / 'nowhere', T=root)


# (command, arguments with {NAMES} from `build`, expected exit status, words the error must name)
CASES = [
    # hacnn_synth
    ('synth', '--root {MINE} --n_ids 0', 2, ['n_ids']),
    ('synth', '--root {MINE} --imgs_min 2', 2, ['imgs']),
    ('synth', '--root {MINE} --seed -1', 2, ['seed']),
    ('synth', '--root {MINE} --n_ids 8', 2, ['{MINE}']),                    # a folder of the user's files
    ('synth', '--root {FILE}/w --n_ids 8', 2, []),
    ('synth', '--root {W} --jitter -1', 2, ['jitter']),
    ('synth', '--root {W} --n-ids abc', 2, ['n_ids']),
    ('synth', '--root {W} --bogus 1', 2, ['bogus']),
    # hacnn_data
    ('data', '--name nosuch --root {W}', 2, ['nosuch']),
    ('data', '--name market1501 --root {NOWHERE}', 2, ['nowhere']),
    ('data', '--name market1501 --root {EMPTY}', 2, ['bounding_box_train']),
    ('data', '--name cuhk01 --root {W} --split 99', 2, []),
    ('data', '--name synthetic --root {W} --split 3', 2, ['split']),
    ('data', '--name synthetic --root {W}', 0, []),
    # hacnn_train: options, checked before anything is read or written
    ('train', '--root {W} --dataset synthetic --out {T}/o1 --epochs 0', 2, ['--epochs']),
    ('train', '--root {W} --dataset synthetic --out {T}/o2 --batch_size 0', 2, ['--batch_size']),
    ('train', '--root {W} --dataset synthetic --out {T}/o3 --batch-size -4', 2, ['--batch_size']),
    ('train', '--root {W} --dataset synthetic --out {T}/o4 --batch_size 1', 2, ['--batch_size']),
    ('train', '--root {W} --dataset synthetic --out {T}/o5 --feat_dim 0', 2, ['--feat_dim']),
    ('train', '--root {W} --dataset synthetic --out {T}/o6 --n_regions 0', 2, ['--n_regions']),
    ('train', '--root {W} --dataset synthetic --out {T}/o7 --label_smoothing 2', 2, ['--label_smoothing']),
    ('train', '--root {W} --dataset synthetic --out {T}/o8 --device cuda', 2, ['cuda']),
    ('train', '--root {W} --dataset synthetic --out {T}/o9 --device gpu', 2, ['gpu']),
    ('train', '--root {W} --dataset synthetic --out {T}/o10 --widths 1,2', 2, ['--widths']),
    ('train', '--root {W} --dataset synthetic --out {T}/o11 --config nosuch', 2, ['nosuch']),
    ('train', '--root {W} --dataset synthetic --out {T}/o12 --config {JUNK}', 2, ['--config']),
    # hacnn_train: data and folders
    ('train', '--root {NOWHERE} --out {T}/o13', 2, ['nowhere']),
    ('train', '--root {EMPTY} --out {T}/o14', 2, ['bounding_box_train']),
    ('train', '--root {W} --dataset nosuch --out {T}/o15', 2, ['nosuch']),
    ('train', '--root {W} --dataset synthetic --out {FILE}', 2, ['is a file']),
    ('train', '--root {W} --dataset synthetic --out {MINE} --epochs 1 --batch_size 8', 2, ['config.json']),
    ('train', '--root {W} --dataset synthetic --out {T}/run --epochs 1 --batch_size 8', 2, ['already holds']),
    ('train', '--root {W} --dataset synthetic --out {T}/run --epochs 2 --resume --widths 16,32,48 --batch_size 8', 2, ['--widths']),
    ('train', '--root {W} --dataset synthetic --out {T}/o16 --epochs 1 --eval_every 1 --batch_size 64', 2,
     ['--batch_size']),
    ('train', '--root {BADW} --dataset synthetic --out {T}/o17 --epochs 1 --batch_size 8 --widths 8,16,24 '
              '--height 64 --width 32 --workers 1 --no-progress', 1, ['cannot decode', 'in a data-loading worker']),
    # hacnn_eval
    ('eval', '--root {W}', 2, ['--checkpoint']),
    ('eval', '--checkpoint {NOWHERE}.pt --root {W}', 2, ['nowhere']),
    ('eval', '--checkpoint {JUNK} --root {W}', 2, ['junk.pt']),
    ('eval', '--checkpoint {TENSOR} --root {W}', 2, ['bare tensor']),
    ('eval', '--checkpoint {LIST} --root {W}', 2, ['list']),
    ('eval', '--checkpoint {NAN} --root {W}', 2, ['non-finite']),
    ('eval', '--checkpoint {CK} --root {NOWHERE}', 2, ['nowhere']),
    ('eval', '--checkpoint {CK} --root {W} --dataset market1501', 2, ['synthetic']),
    ('eval', '--checkpoint {CK} --root {W} --device cuda', 2, ['cuda']),
    ('eval', '--checkpoint {CK} --root {W} --branch middle', 2, ['--branch']),
    ('eval', '--checkpoint {CK} --root {W} --out {W}', 2, ['--out']),
    ('eval', '--checkpoint {CK} --root {W} --no-progress', 0, []),               # the world is inferred
    # hacnn_demo
    ('demo', '--root {FILE} --out {T}/d1', 2, []),
    ('demo', '--root {T}/dw --out {FILE}', 2, []),
    ('demo', '--root {T}/dw --out {T}/d2 --widths 1', 2, ['widths']),
    ('demo', '--root {T}/dw --out {T}/d3 --n-ids 0', 2, ['n_ids']),
    # the toolbox
    ('features', '--images {IMGS} --out {T}/f.npz', 2, ['--checkpoint']),
    ('features', '--checkpoint {CK} --images {EMPTY} --out {T}/f.npz', 2, ['no images']),
    ('features', '--checkpoint {CK} --images {BROKEN} --out {T}/f.npz', 1, ['0.jpg']),
    ('features', '--checkpoint {TENSOR} --images {IMGS} --out {T}/f.npz', 2, ['bare tensor']),
    ('features', '--checkpoint {CK} --images {IMGS} --out {T}/f.npz --batch-size 2 --no-progress', 0, []),
    ('query', '--checkpoint {CK} --query {IMGS}/0.jpg --gallery {NOWHERE} --out {T}/q', 2, ['nowhere']),
    ('query', '--checkpoint {CK} --query {IMGS}/0.jpg --gallery {IMGS} --out {T}/q --rerank --faiss', 2,
     ['--faiss']),
    ('query', '--checkpoint {CK} --query {IMGS}/0.jpg --gallery {IMGS} --out {T}/q --top 0', 2, ['--top']),
    ('attention', '--checkpoint {CK} --images {BROKEN} --out {T}/a', 1, ['0.jpg']),
    ('export', '--checkpoint {LIST} --out {T}/e', 2, ['list']),
    ('convert', '--source {JUNK} --out {T}/c.pt', 2, ['junk.pt']),
    ('convert', '--source {NOWHERE}.pth.tar --out {T}/c.pt', 2, ['nowhere']),
]


def run_case(env:dict, cmd:str, args:str, timeout=240):
    words = [w.format(**env) for w in args.split()]
    return subprocess.run([str(BIN / f'hacnn_{cmd}'), *words], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=env['T'])


def shown(err:str) -> list:
    "The lines a terminal shows: a progress bar cleared with carriage returns leaves nothing behind."
    return [t for l in err.split('\n') if (t := l.split('\r')[-1].strip())]


def outcome(r, code:int) -> str:
    "How a case ended: 'correct', 'clear error', 'traceback', 'wrong status' or 'unclear'."
    if 'Traceback' in r.stderr: return 'traceback'
    if r.returncode == 0: return 'correct' if code == 0 else 'wrong status'
    lines = shown(r.stderr)
    if len(lines) == 1 and ': error: ' in lines[0]: return 'clear error' if r.returncode == code else 'wrong status'
    return 'unclear'


def snapshot(folder:Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    e = build(tmp_path_factory.mktemp('hostile'))
    e['before'] = {k: snapshot(e[k]) for k in ('MINE', 'W')} | {'CK': e['CK'].read_bytes()}
    return e


@pytest.mark.parametrize('cmd,args,code,words', CASES, ids=[f'{c[0]} {c[1]}' for c in CASES])
def test_case(env, cmd, args, code, words):
    r = run_case(env, cmd, args)
    assert outcome(r, code) == ('correct' if code == 0 else 'clear error'), (r.returncode, r.stderr[-2000:])
    for w in words: assert w.format(**env) in r.stderr, (w, r.stderr)


def test_nothing_of_the_users_was_changed(env):
    "Run after the cases (pytest keeps file order within a worker; the fixture is per module)."
    for k in ('MINE', 'W'): assert snapshot(env[k]) == env['before'][k], k
    assert env['CK'].read_bytes() == env['before']['CK']


if __name__ == '__main__':      # the tally: python tests/test_hostile.py
    import tempfile, collections
    e = build(Path(tempfile.mkdtemp()))
    before = {k: snapshot(e[k]) for k in ('MINE', 'W')}
    tally, lost = collections.Counter(), []
    for cmd, args, code, _ in CASES:
        o = outcome(run_case(e, cmd, args), code)
        tally[o] += 1
        print(f'{o:12} hacnn_{cmd} {args}')
    lost = [k for k in ('MINE', 'W') if snapshot(e[k]) != before[k]]
    print(f'\n{len(CASES)} cases: ' + ', '.join(f'{n} {k}' for k, n in tally.most_common())
          + f"; files of the user's changed: {lost or 'none'}")
