"""hacnn_nbdev.data on tiny fixture trees written here in the real layouts (the datasets cannot be downloaded here)."""
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from hacnn_nbdev.data import (MEAN, STD, CUHK03, BadFileNameError, BadImageError, DatasetNotFoundError, DukeMTMCreID,
                              ReIDSampler, Market1501, ReIDDataset, SyntheticWorld, build_test_loader,
                              build_train_loader, data_cli, extract_cuhk03, get_dataset, stats_table)


def jpeg(path, colour=(10, 120, 200), size=(64, 128)):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path, quality=95)
    return path


MARKET = {'bounding_box_train': ['0012_c2s1_000100_01.jpg', '0003_c1s1_000200_02.jpg', '0012_c6s3_004000_00.jpg',
                                 '0003_c4s2_000050_01.jpg', '0500_c5s1_000001_01.jpg'],
          'query': ['0007_c1s1_000001_00.jpg', '0009_c3s1_000002_00.jpg', '0000_c2s1_000003_00.jpg'],
          'bounding_box_test': ['0007_c2s1_000011_01.jpg', '0009_c1s1_000012_01.jpg', '0000_c4s1_000013_01.jpg',
                                '-1_c1s1_000014_01.jpg', '-1_c5s1_000015_01.jpg', '0007_c1s1_000016_02.jpg']}


def market_tree(base):
    for sub, names in MARKET.items():
        for n in names: jpeg(Path(base)/sub/n)
    (Path(base)/'bounding_box_test'/'Thumbs.db').write_bytes(b'\x00' * 10)
    (Path(base)/'query'/'readme.txt').write_text('not an image')
    return Path(base)


# ---------------------------------------------------------------- Market-1501 / DukeMTMC-reID
def test_market_protocol(tmp_path):
    ds = Market1501(market_tree(tmp_path/'market1501'))
    # train: sorted by file name, pids 3, 12, 500 -> 0, 1, 2; camid = c - 1
    assert [(Path(p).name, pid, cam) for p, pid, cam in ds.train] == [
        ('0003_c1s1_000200_02.jpg', 0, 0), ('0003_c4s2_000050_01.jpg', 0, 3), ('0012_c2s1_000100_01.jpg', 1, 1),
        ('0012_c6s3_004000_00.jpg', 1, 5), ('0500_c5s1_000001_01.jpg', 2, 4)]
    assert ds.num_train_pids == 3
    assert [r[1:] for r in ds.query] == [(7, 0), (9, 2)]                  # the pid-0 query is dropped ...
    assert ds.dropped['query'] == {'junk (pid -1)': 0, 'distractor (pid 0)': 1}  # ... and counted
    assert sorted(r[1] for r in ds.gallery) == [0, 7, 7, 9]                # distractor kept, junk dropped
    assert ds.dropped['gallery']['junk (pid -1)'] == 2
    assert ds.ignored == 2                                                  # Thumbs.db, readme.txt
    table = stats_table(ds)
    assert 'junk' in table and 'non-image files ignored: 2' in table and '751 / 12,936' in table
    assert ds.stats()[0] == {'split': 'train', 'ids': 3, 'images': 5, 'cameras': 5, 'published': (751, 12936)}


def test_market_inner_folder_and_determinism(tmp_path):
    market_tree(tmp_path/'data'/'Market-1501-v15.09.15')
    a, b = Market1501(tmp_path/'data'), Market1501(str(tmp_path/'data'/'Market-1501-v15.09.15'))
    assert a.train == b.train and a.query == b.query and a.gallery == b.gallery
    assert Path(a.root).name == 'Market-1501-v15.09.15'


def test_missing_root_names_path_layout_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e: Market1501(tmp_path/'nope')
    msg = str(e.value)
    for part in (str(tmp_path/'nope'), 'bounding_box_train', 'query', 'bounding_box_test', 'Market-1501-v15.09.15', 'Zheng', 'hacnn_synth'):
        assert part in msg
    with pytest.raises(DatasetNotFoundError, match='DukeMTMC-reID'): DukeMTMCreID(tmp_path/'nope')


def test_missing_split_folder(tmp_path):
    base = market_tree(tmp_path/'m')
    for f in (base/'bounding_box_test').iterdir(): f.unlink()
    (base/'bounding_box_test').rmdir()
    with pytest.raises(DatasetNotFoundError, match='bounding_box_test'): Market1501(base)


@pytest.mark.parametrize('name', ['person_0001.jpg', '0001_x1s1_000001_00.jpg', '0001_c0s1_000001_00.jpg', '-5_c1s1_000001_00.jpg'])
def test_unparseable_name_is_named(tmp_path, name):
    base = market_tree(tmp_path/'m'); jpeg(base/'bounding_box_train'/name)
    with pytest.raises(BadFileNameError, match=name): Market1501(base)


def test_duke_layout(tmp_path):
    names = {'bounding_box_train': ['0005_c2_f0046985.jpg', '0005_c5_f0051291.jpg', '0001_c1_f0000001.jpg'],
             'query': ['0008_c1_f0047021.jpg'], 'bounding_box_test': ['0008_c7_f0049105.jpg', '5001_c8_f0010000.jpg']}
    for sub, ns in names.items():
        for n in ns: jpeg(tmp_path/'duke'/'DukeMTMC-reID'/sub/n)
    ds = DukeMTMCreID(tmp_path/'duke')
    assert [r[1:] for r in ds.train] == [(0, 0), (1, 1), (1, 4)]
    assert [r[1:] for r in ds.gallery] == [(8, 6), (5001, 7)]
    assert ds.published['gallery'] == (1110, 17661)


# ---------------------------------------------------------------- CUHK03
def write_cuhk03_mat(path, persons=(2, 3), empty=((0, 0, 9), (1, 2, 4)), tests=((1, 1), (2, 3))):
    """A MATLAB v7.3 cuhk-03.mat: cells are datasets of object references into '#refs#', arrays stored transposed.
    `empty`: (campair index, person index, image index) cells left empty (MATLAB's [] is a 2-element uint64 array)."""
    rng, refs = np.random.default_rng(1), []
    with h5py.File(path, 'w') as f:
        g = f.create_group('#refs#')

        def ref(arr, cls):
            d = g.create_dataset(f'x{len(g)}', data=arr); d.attrs['MATLAB_class'] = np.bytes_(cls)
            return d.ref
        for variant in ('detected', 'labeled'):
            pairs = []
            for c, n in enumerate(persons):
                cell = np.empty((10, n), dtype=h5py.ref_dtype)   # MATLAB n×10, stored transposed
                for p in range(n):
                    for j in range(10):
                        h, w = 30 + j, 12 + p                      # every image its own size to check orientation
                        img = np.zeros(2, np.uint64) if (c, p, j) in empty else rng.integers(0, 256, (3, w, h), dtype=np.uint8)
                        cell[j, p] = ref(img, 'double' if img.ndim == 1 else 'uint8')
                pairs.append(ref(cell, 'cell'))
            d = f.create_dataset(variant, data=np.array(pairs, dtype=h5py.ref_dtype).reshape(1, -1)); d.attrs['MATLAB_class'] = np.bytes_('cell')
        sets = [ref(np.array(tests, dtype=float).T, 'double') for _ in range(20)]
        f.create_dataset('testsets', data=np.array(sets, dtype=h5py.ref_dtype).reshape(1, -1))


def cuhk03_names(persons=(2, 3), empty=((0, 0, 9), (1, 2, 4))):
    return sorted(f'{c + 1}_{p + 1:03d}_{1 + j // 5}_{j + 1:02d}.png'
                  for c, n in enumerate(persons) for p in range(n) for j in range(10) if (c, p, j) not in empty)


def write_protocol(path, names, train, query, gallery, drop=None):
    label = lambda n: int(n[0]) * 10 + int(n[2:5])   # a global person number
    d = {'filelist': np.array(names, dtype=object).reshape(-1, 1), 'labels': np.array([label(n) for n in names]).reshape(-1, 1),
         'camId': np.array([int(n[6]) for n in names]).reshape(-1, 1),
         'train_idx': np.array(train).reshape(-1, 1) + 1, 'query_idx': np.array(query).reshape(-1, 1) + 1,
         'gallery_idx': np.array(gallery).reshape(-1, 1) + 1}
    if drop: d.pop(drop)
    scipy.io.savemat(path, d)


@pytest.fixture
def cuhk(tmp_path):
    root = tmp_path/'cuhk03'; (root/'cuhk03_release').mkdir(parents=True)
    write_cuhk03_mat(root/'cuhk03_release'/'cuhk-03.mat')         # the inner folder of cuhk03_release.zip
    names = cuhk03_names()
    train = [i for i, n in enumerate(names) if n.startswith('2_')]
    query = [i for i, n in enumerate(names) if n.startswith('1_') and n[6] == '1']
    gallery = [i for i, n in enumerate(names) if n.startswith('1_') and n[6] == '2']
    for v in ('detected', 'labeled'): write_protocol(root/f'cuhk03_new_protocol_config_{v}.mat', names, train, query, gallery)
    return root, names


def test_cuhk03_extraction(cuhk):
    root, names = cuhk
    out = extract_cuhk03(root, 'detected')
    assert out == root/'images_detected' and sorted(p.name for p in out.glob('*.png')) == names
    assert Image.open(out/'1_002_2_07.png').size == (13, 36)       # (W, H): person 2 is 13 wide, image 7 is 36 high
    assert (out/'.complete').is_file()
    (out/'1_001_1_01.png').unlink()                                # done once: not redone while the marker is there
    extract_cuhk03(root, 'detected'); assert not (out/'1_001_1_01.png').exists()


def test_cuhk03_new_protocol(cuhk):
    root, names = cuhk
    ds = CUHK03(root)                                              # detected, 767/700-style protocol
    assert ds.num_train_pids == 3 and sorted({r[1] for r in ds.train}) == [0, 1, 2]
    assert {r[2] for r in ds.query} == {0} and {r[2] for r in ds.gallery} == {1}
    assert sorted({r[1] for r in ds.query}) == [11, 12] and len(ds.query) == 10 and len(ds.gallery) == 9  # pair 1 person 1 lacks image 10 (camera 2)
    assert all(Path(p).parent.name == 'images_detected' for p, _, _ in ds.train + ds.query + ds.gallery)
    lab = CUHK03(root, variant='labeled')
    assert all(Path(p).parent.name == 'images_labeled' for p, _, _ in lab.query)
    assert 'CUHK03-labeled' in stats_table(lab) and '767 / 7,368' in stats_table(lab)


def test_cuhk03_classic(cuhk):
    root, _ = cuhk
    ds = CUHK03(root, protocol='classic', split=19)
    assert sorted({r[1] for r in ds.query}) == [1001, 2003]        # (campair 1, person 1) and (2, 3)
    assert ds.query == ds.gallery and ds.num_train_pids == 3
    with pytest.raises(ValueError, match='0..19'): CUHK03(root, protocol='classic', split=20)


def test_cuhk03_bad_input(cuhk, tmp_path):
    root, names = cuhk
    with pytest.raises(ValueError, match="'detected' or 'labeled'"): CUHK03(root, variant='auto')
    with pytest.raises(ValueError, match="'new' or 'classic'"): CUHK03(root, protocol='767')
    with pytest.raises(DatasetNotFoundError, match='cuhk-03.mat') as e: CUHK03(tmp_path/'none')
    assert 'DeepReID' in str(e.value) and 'Zhong' in str(e.value)
    (root/'cuhk03_new_protocol_config_labeled.mat').unlink()
    with pytest.raises(DatasetNotFoundError, match='cuhk03_new_protocol_config_labeled.mat'): CUHK03(root, variant='labeled')
    write_protocol(root/'cuhk03_new_protocol_config_labeled.mat', names, [0], [1], [2], drop='gallery_idx')
    with pytest.raises(BadFileNameError, match='gallery_idx'): CUHK03(root, variant='labeled')
    CUHK03(root); (root/'images_detected'/names[0]).unlink()       # an image the protocol lists has gone
    with pytest.raises(DatasetNotFoundError, match=names[0]): CUHK03(root)


def test_cuhk03_corrupt_mat_and_bad_image_name(tmp_path):
    root = tmp_path/'c'; root.mkdir(); (root/'cuhk-03.mat').write_bytes(b'MATLAB 5.0 MAT-file, not HDF5' * 10)
    with pytest.raises(BadImageError, match='cuhk-03.mat'): CUHK03(root)
    root2 = tmp_path/'c2'; (root2/'images_detected').mkdir(parents=True); (root2/'images_detected'/'.complete').write_text('')
    jpeg(root2/'images_detected'/'1_1_1_1.png'); write_cuhk03_mat(root2/'cuhk-03.mat')
    with pytest.raises(BadFileNameError, match='1_1_1_1.png'): CUHK03(root2, protocol='classic')


# ---------------------------------------------------------------- registry
def test_get_dataset(tmp_path, cuhk):
    market_tree(tmp_path/'m')
    assert isinstance(get_dataset('Market-1501', tmp_path/'m'), Market1501)
    assert isinstance(get_dataset('market', tmp_path/'m'), Market1501)
    assert isinstance(get_dataset('synthetic', tmp_path/'m'), SyntheticWorld)
    assert get_dataset('CUHK03_labeled', cuhk[0]).variant == 'labeled'
    assert get_dataset('cuhk03', cuhk[0], protocol='classic').protocol == 'classic'
    with pytest.raises(KeyError, match='known names: market1501, dukemtmcreid, cuhk03'): get_dataset('viper', tmp_path)
    with pytest.raises(DatasetNotFoundError, match='hacnn_synth --root'): get_dataset('synthetic', tmp_path/'none')


def test_data_cli_prints_table(tmp_path, capsys):
    market_tree(tmp_path/'m')
    data_cli('market1501', str(tmp_path/'m'))
    out = capsys.readouterr().out
    assert 'Market-1501' in out and 'train' in out and '750 / 3,368' in out


# ---------------------------------------------------------------- Dataset, sampler, loaders
def test_dataset_decodes_resizes_normalises(tmp_path):
    recs = [(str(jpeg(tmp_path/f'{i:04d}_c1s1_000001_00.jpg', colour=(255, 0, 128))), i, 0) for i in range(3)]
    x, pid, cam = ReIDDataset(recs)[1]
    assert x.shape == (3, 160, 64) and x.dtype == torch.float32 and (pid, cam) == (1, 0)
    expect = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[:, 80, 32], expect, atol=0.03)
    assert ReIDDataset(recs, height=256, width=128)[0][0].shape == (3, 256, 128)
    png = tmp_path/'0001_c1s1_000002_00.png'; Image.new('L', (30, 70), 90).save(png)   # grey PNG -> 3 channels
    assert ReIDDataset([(str(png), 1, 0)])[0][0].shape == (3, 160, 64)


def test_augmentation_only_when_training(tmp_path):
    img = np.zeros((128, 64, 3), np.uint8); img[:, :32] = 255               # left half white
    p = tmp_path/'0001_c1s1_000001_00.png'; Image.fromarray(img).save(p)
    recs = [(str(p), 0, 0)]
    assert all(ReIDDataset(recs, flip=True)[0][0][0, 80, 5] > 1 for _ in range(10))        # train=False: never flipped
    torch.manual_seed(0)
    flipped = [ReIDDataset(recs, train=True, flip=True)[0][0][0, 80, 5] < 0 for _ in range(40)]
    assert 5 < sum(flipped) < 35
    torch.manual_seed(0)
    assert ReIDDataset(recs, train=True, random_crop=True)[0][0].shape == (3, 160, 64)


def test_corrupt_image_raise_and_skip(tmp_path):
    good = [(str(jpeg(tmp_path/f'000{i}_c1s1_000001_00.jpg')), i, 0) for i in range(1, 3)]
    trunc = tmp_path/'0003_c1s1_000001_00.jpg'; trunc.write_bytes(Path(good[0][0]).read_bytes()[:300])
    empty = tmp_path/'0004_c1s1_000001_00.jpg'; empty.write_bytes(b'')
    recs = good + [(str(trunc), 3, 0), (str(empty), 4, 0)]
    with pytest.raises(BadImageError, match=trunc.name): ReIDDataset(recs)[2]
    with pytest.raises(BadImageError, match=empty.name): ReIDDataset(recs)[3]
    with pytest.raises(BadImageError, match=trunc.name):                     # the loader path names it too
        list(build_test_loader(recs, batch_size=4))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); ds = ReIDDataset(recs, on_bad_image='skip')
    assert len(ds) == 2 and [r[0] for r in ds.skipped] == [str(trunc), str(empty)]
    msg = ' '.join(str(x.message) for x in w)
    assert 'skipped 2 of 4' in msg and trunc.name in msg and empty.name in msg
    with pytest.raises(ValueError, match="'raise' or 'skip'"): ReIDDataset(recs, on_bad_image='ignore')
    with pytest.warns(UserWarning, match='skipped 2 of 4'):
        assert len(build_test_loader(recs, batch_size=1, on_bad_image='skip')) == 2


def test_identity_sampler():
    pids = [p for p in range(10) for _ in range(p % 3 + 1)]                   # 1 to 3 images per person
    s = ReIDSampler(pids, batch_size=12, mode='identity', num_instances=3, seed=5)
    idx = list(s)
    assert len(idx) == len(s) and len(idx) % 12 == 0 and len(idx) >= 12
    for b in range(0, len(idx), 12):
        batch = [pids[i] for i in idx[b:b + 12]]
        assert len(set(batch)) == 4 and all(batch.count(p) == 3 for p in set(batch))
    assert idx == list(ReIDSampler(pids, 12, 'identity', 3, seed=5))
    s.set_epoch(1); assert list(s) != idx
    with pytest.raises(ValueError, match='cannot fill'): ReIDSampler([0, 0, 1, 1], batch_size=12, mode='identity', num_instances=3)
    with pytest.raises(ValueError, match='multiple'): ReIDSampler(pids, batch_size=10, mode='identity', num_instances=3)
    with pytest.raises(ValueError, match="'random' or 'identity'"): ReIDSampler(pids, mode='balanced')


def test_loaders(tmp_path):
    recs = [(str(jpeg(tmp_path/f'{p:04d}_c{c + 1}s1_000001_00.jpg')), p, c) for p in range(6) for c in range(2)]
    dl = build_train_loader(recs, batch_size=4)
    assert len(dl) == 3 and dl.pin_memory == torch.cuda.is_available()
    xb, pb, cb = next(iter(dl))
    assert xb.shape == (4, 3, 160, 64) and pb.dtype == torch.int64
    order = lambda d: [b[1].tolist() for b in d]
    assert order(build_train_loader(recs, 4, seed=3)) == order(build_train_loader(recs, 4, seed=3))
    assert order(build_train_loader(recs, 4, seed=3)) != order(build_train_loader(recs, 4, seed=4))
    ident = build_train_loader(recs, 4, sampler='identity', num_instances=2)
    assert all(sorted(b[1].tolist()).count(b[1][0].item()) == 2 for b in ident)
    mine = torch.utils.data.SequentialSampler(recs)
    assert order(build_train_loader(recs, 4, sampler=mine)) == [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]]
    dist = build_train_loader(recs, 2, sampler=lambda d: torch.utils.data.DistributedSampler(d, num_replicas=3, rank=1, shuffle=False))
    assert order(dist) == [[0, 2], [3, 5]]                                # indices 1, 4, 7, 10 of rank 1 of 3
    with pytest.raises(ValueError, match="'random', 'identity'"): build_train_loader(recs, sampler='balanced')
    assert build_test_loader(recs, batch_size=5).dataset.train is False
    assert [b[1].tolist() for b in build_test_loader(recs, batch_size=5)] == [[0, 0, 1, 1, 2], [2, 3, 3, 4, 4], [5, 5]]
    assert build_test_loader(recs, pin_memory=None).pin_memory == torch.cuda.is_available()


def test_loader_with_worker_process(tmp_path):
    recs = [(str(jpeg(tmp_path/f'{p:04d}_c1s1_000001_00.jpg')), p, 0) for p in range(4)]
    dl = build_train_loader(recs, batch_size=2, workers=1, flip=True)
    assert sum(len(b[1]) for b in dl) == 4
