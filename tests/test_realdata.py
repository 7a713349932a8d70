"""The real-data loaders (CUHK03-NP folders, CUHK01) on fixture trees in their real layouts, the real-data recipe
and analyses; and, where the real folders are present (``$HACNN_REALDATA``, else ``data/`` of the repository, holding
``cuhk01/`` and ``cuhk03-np/``), the same loaders on the real datasets. Without them the real-data tests skip, saying why."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg as _jpeg
import torch
from PIL import Image

from hacnn_nbdev.data import (CUHK01, CUHK03NP, BadFileNameError, DatasetNotFoundError, get_dataset,
                              read_cuhk03np_pairs)
from hacnn_nbdev.model import HACNN
from hacnn_nbdev.realdata import (NO_ATTENTION, REAL_RECIPE, pair_ranks, real_config, register_boxes,
                                  region_tracking, register_pairs, frame_pairs, ha_gains, gain_table)
from hacnn_nbdev.train import RECIPES, TrainConfig

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get('HACNN_REALDATA', REPO / 'data'))
needs_real = pytest.mark.skipif(not ((REALDATA / 'cuhk01').is_dir() and (REALDATA / 'cuhk03-np').is_dir()),
                                reason=f'real datasets not present at {REALDATA} (set HACNN_REALDATA to their folder)')


def jpeg(path, colour, size=(50, 160)): return _jpeg(path, colour, size)


NP_NAMES = {'bounding_box_train': ['0001_c1_1.jpg', '0001_c2_6.jpg', '0004_c1_2.jpg', '0004_c2_9.jpg', '0005_c1_3.jpg', '0005_c2_4.jpg'],
            'query': ['0002_c1_3.jpg', '0003_c2_8.jpg'],
            'bounding_box_test': ['0002_c2_7.jpg', '0003_c1_4.jpg', '0003_c1_5.jpg']}


def np_tree(base):
    rows = ['cell,labeled,detected']
    for boxes in ('labeled', 'detected'):
        for sub, names in NP_NAMES.items():
            for n in names: jpeg(base / boxes / sub / n, (40 * int(n[3]), 80, 30 if boxes == 'labeled' else 220))
    for sub, names in NP_NAMES.items():
        rows += [f'1_00{n[3]}_{n[6]}_0{n[8]},labeled/{sub}/{n},detected/{sub}/{n}' for n in names]
    (base / 'pairs.csv').write_text('\n'.join(rows) + '\n')
    return base


def cuhk01_tree(base, n=10, inner='campus'):
    for pid in range(1, n + 1):
        for img in range(1, 5): jpeg(base / inner / f'{pid:04d}{img:03d}.png', (20 * pid, 50 * img, 90), (60, 160))
    return base


# ---------------------------------------------------------------- CUHK03-NP folders
def test_cuhk03np_both_boxes_and_honest_name(tmp_path):
    root = np_tree(tmp_path / 'np')
    for boxes in ('labeled', 'detected'):
        ds = CUHK03NP(root, boxes)
        assert ds.boxes == boxes and not ds.comparable
        assert ds.name == f'CUHK03-NP (subset: 3 of 767 training identities, {boxes})'
        assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 2, 3)
        assert sorted({r[1] for r in ds.train}) == [0, 1, 2] and {r[2] for r in ds.train} == {0, 1}
    assert get_dataset('cuhk03np-labeled', root).boxes == 'labeled'
    assert get_dataset('CUHK03-NP', root).boxes == 'detected'


def test_cuhk03np_errors_name_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"labeled/\{bounding_box_train, query, bounding_box_test\}"):
        CUHK03NP(tmp_path, 'labeled')
    with pytest.raises(ValueError, match="'detected' or 'labeled'"):
        CUHK03NP(np_tree(tmp_path / 'np'), 'manual')
    (tmp_path / 'np' / 'pairs.csv').write_text('a,b\n1,2\n')
    with pytest.raises(BadFileNameError, match='cell,labeled,detected'):
        read_cuhk03np_pairs(tmp_path / 'np')
    with pytest.raises(DatasetNotFoundError, match='pairs.csv'):
        read_cuhk03np_pairs(tmp_path)


def test_test_pairs_keep_test_frames_only(tmp_path):
    pairs = frame_pairs(np_tree(tmp_path / 'np'))
    assert len(pairs) == 5 and all('bounding_box_train' not in p[1] for p in pairs)
    assert {p[3] for p in pairs} == {2, 3}


# ---------------------------------------------------------------- CUHK01
def test_cuhk01_protocol_and_splits(tmp_path):
    root = cuhk01_tree(tmp_path / 'c1')
    ds = CUHK01(root)  # 10 people: 5 train, 5 test
    assert (ds.num_train_pids, len(ds.train), len(ds.query), len(ds.gallery)) == (5, 20, 5, 5)
    assert {r[2] for r in ds.query} == {0} and {r[2] for r in ds.gallery} == {1}
    assert not ({r[1] for r in ds.query} & {int(Path(r[0]).name[:4]) for r in ds.train})  # disjoint people
    assert CUHK01(root / 'campus').query == ds.query == CUHK01(root, split=0).query        # reproducible
    assert len({tuple(CUHK01(root, split=s).query) for s in range(6)}) > 1                 # splits differ
    ms = CUHK01(root, multi_shot=True)
    assert (len(ms.query), len(ms.gallery)) == (10, 10)
    assert get_dataset('cuhk01', root, split=3).split == 3


def test_cuhk01_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='PPPPCCC.png'):
        CUHK01(tmp_path)
    root = cuhk01_tree(tmp_path / 'c1', n=4)
    jpeg(root / 'campus' / '0009001.png', (1, 2, 3))  # person 9 has no camera-B image
    with pytest.raises(ValueError, match='person 0009 .* lacks an image from camera B'):
        CUHK01(root)
    (root / 'campus' / '0009001.png').unlink(); jpeg(root / 'campus' / '0009007.png', (1, 2, 3))
    with pytest.raises(BadFileNameError, match='001-004'):
        CUHK01(root)
    (root / 'campus' / '0009007.png').unlink()
    with pytest.raises(ValueError, match='n_test must be between 1 and 3'):
        CUHK01(root, n_test=4)
    with pytest.raises(ValueError, match='split must be 0 or more'):
        CUHK01(root, split=-1)
    with pytest.raises(ValueError, match='one split'):
        get_dataset('market1501', root, split=1)


# ---------------------------------------------------------------- recipe and analyses
def test_real_config_differs_from_no_attention_only_in_attention(tmp_path):
    a = real_config('cuhk03np-detected', tmp_path, tmp_path / 'a')
    b = real_config('cuhk03np-detected', tmp_path, tmp_path / 'b', attention=False)
    diff = {f for f in TrainConfig.__dataclass_fields__ if getattr(a, f) != getattr(b, f)}
    assert diff == {'out'} | set(NO_ATTENTION)
    assert all(getattr(a, k) == v for k, v in REAL_RECIPE.items())


def test_real_recipe_is_the_demo_recipe_longer_with_shifts():
    same = {k: v for k, v in RECIPES['demo'].items() if k not in ('dataset', 'eval_every', 'epochs')}
    assert {k: REAL_RECIPE[k] for k in same} == same
    assert (REAL_RECIPE['epochs'], REAL_RECIPE['random_crop']) == (12, 0.1)


def test_gains_pair_seeds_and_skip_missing_partners():
    run = lambda m, s, r1: dict(data='labeled', model=m, seed=s, rank1=r1, mAP=.1, mINP=.05)
    res = {'runs': {f'{m}{s}': run(m, s, r1) for m, s, r1 in
                    (('ha', 0, .12), ('ha', 1, .10), ('ha', 2, .2), ('none', 0, .10), ('none', 1, .11))}}
    g = ha_gains(res, 'labeled')
    assert [x['seed'] for x in g] == [0, 1] and [round(x['rank1'], 6) for x in g] == [2.0, -1.0]
    assert '| +2.0 / +0.0 / +0.0 | -1.0 / +0.0 / +0.0 | 0.5 ± 2.1 / 0.0 ± 0.0 / 0.0 ± 0.0 |' in gain_table(res)
    assert ha_gains(res, 'detected') == []


def test_pair_ranks_of_a_model_that_ignores_the_box(tmp_path):
    pairs = frame_pairs(np_tree(tmp_path / 'np'))

    class PidColour(torch.nn.Module):  # a feature that is the image's red level: the box does not matter
        def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.ones(1))
        def forward(self, x): return x[:, :1].mean((2, 3)) * self.w
    r = pair_ranks(PidColour().eval(), pairs)
    assert r['n'] == 5 and r['top1'] == 1.0 and r['median_rank'] == 1 and r['ratio'] < 0.1


def test_registration_and_tracking_on_a_shifted_frame(tmp_path):
    rng = np.random.default_rng(1)
    pairs = []
    for k, d in enumerate((0, 24, 48)):
        f = (rng.random((320, 160, 3)) * 120).astype(np.uint8); f[150:166] = 255
        Image.fromarray(f[100:260, 48:112]).save(tmp_path / f'l{k}.png')
        Image.fromarray(f[100 - d:260 + d // 2, 40:120]).save(tmp_path / f'd{k}.png')
        pairs.append((f'c{k}', str(tmp_path / f'l{k}.png'), str(tmp_path / f'd{k}.png'), k))
    box, corr = register_boxes(pairs[1][1], pairs[1][2])
    np.testing.assert_allclose(box, [0.1, 24 / 196, 0.9, 184 / 196], atol=0.04)
    assert corr > 0.95
    reg = register_pairs(pairs, cache=tmp_path / 'reg.json')
    assert (tmp_path / 'reg.json').exists() and register_pairs(pairs, cache=tmp_path / 'reg.json') == reg
    tr = region_tracking(HACNN(5, widths=(8, 16, 24), feat_dim=16).eval(), pairs, reg)
    assert tr['n'] == 3 and len(tr['levels']) == 3 and all(np.isfinite(l['slope_y']) for l in tr['levels'])


# ---------------------------------------------------------------- the real folders, where present
@needs_real
def test_real_cuhk03np_pair1():
    for boxes, n_train in (('labeled', 4145), ('detected', 4145)):
        ds = CUHK03NP(REALDATA / 'cuhk03-np', boxes)
        assert ds.name == f'CUHK03-NP (camera pair 1, {boxes})' and not ds.comparable
        assert (ds.num_train_pids, len(ds.train), len(ds.query), len(ds.gallery)) == (427, n_train, 832, 3200)
        assert not {r[1] for r in ds.query} - {r[1] for r in ds.gallery}  # every query has its match
    pairs = read_cuhk03np_pairs(REALDATA / 'cuhk03-np')
    assert len(pairs) == 8174 and all(Path(p).is_file() for c, l, d in pairs[:50] for p in (l, d))


@needs_real
def test_real_cuhk01():
    ds = CUHK01(REALDATA / 'cuhk01')
    assert ds.name == 'CUHK01 (485/486, split 0, single-shot)'
    assert (ds.num_train_pids, len(ds.train), len(ds.query), len(ds.gallery)) == (485, 1940, 486, 486)
    splits = [frozenset(r[1] for r in CUHK01(REALDATA / 'cuhk01', split=s).query) for s in range(10)]
    assert len(set(splits)) == 10


@needs_real
def test_hacnn_data_prints_the_real_tables():
    out = subprocess.run([sys.executable, '-m', 'hacnn_nbdev.data', '--name', 'cuhk03np-labeled',
                          '--root', str(REALDATA / 'cuhk03-np')], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'CUHK03-NP (camera pair 1, labeled)' in out.stdout and '4,145' in out.stdout
