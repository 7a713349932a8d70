"""hacnn_nbdev.data and hacnn_nbdev.loaders on tiny fixture trees written here in the real layouts (the datasets
cannot be downloaded here): protocols, your own CSV, MSMT17 lists, decoding, hostile input, and the hacnn_data CLI."""
import contextlib, io, os, struct, subprocess, sys, warnings, zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from hacnn_nbdev.cli import exit_code
from conftest import jpeg, one_line_error, write_cuhk03_mat
from hacnn_nbdev.core import InputSpec
from hacnn_nbdev.data import (CUHK01, CUHK03, MSMT17, BadFileNameError, BadImageError, BadRowError, CSVData,
                              DatasetNotFoundError, DukeMTMCreID, Market1501, OptionError, SyntheticWorld,
                              TooFewIdentitiesError, UnknownDatasetError, check_images, check_trainable, data_cli,
                              data_main, extract_cuhk03, get_dataset, read_image, stats_table)
from hacnn_nbdev.loaders import (MEAN, STD, ReIDDataset, ReIDSampler, build_test_loader, build_train_loader,
                                 denormalise)




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


def test_no_augmentation_in_the_dataset(tmp_path):
    "Augmentation has one home, the trainer's batches (09_train); the dataset gives each image as it is."
    img = np.zeros((128, 64, 3), np.uint8); img[:, :32] = 255               # left half white
    p = tmp_path/'0001_c1s1_000001_00.png'; Image.fromarray(img).save(p)
    ds = ReIDDataset([(str(p), 0, 0)])
    assert all(ds[0][0][0, 80, 5] > 1 for _ in range(10))                    # never flipped
    with pytest.raises(TypeError): ReIDDataset([(str(p), 0, 0)], flip=True)


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
        warnings.simplefilter('always'); ds = ReIDDataset(recs, skip_unreadable=True)
    assert len(ds) == 2 and [r[0] for r in ds.skipped] == [str(trunc), str(empty)]
    msg = ' '.join(str(x.message) for x in w)
    assert 'skipped 2 of 4' in msg and trunc.name in msg and empty.name in msg
    with warnings.catch_warnings(record=True) as w:                         # off by default: nothing checked
        warnings.simplefilter('always'); assert len(ReIDDataset(recs)) == 4 and not w
    with pytest.warns(UserWarning, match='skipped 2 of 4'):
        assert len(build_test_loader(recs, batch_size=1, skip_unreadable=True)) == 2
    with pytest.warns(UserWarning, match='skipped 3 of 5'):                  # a missing file counts too
        assert len(ReIDDataset(recs + [(str(tmp_path/'gone.jpg'), 5, 0)], skip_unreadable=True)) == 2


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
    assert len(build_test_loader(recs, batch_size=5)) == 3
    assert [b[1].tolist() for b in build_test_loader(recs, batch_size=5)] == [[0, 0, 1, 1, 2], [2, 3, 3, 4, 4], [5, 5]]
    assert build_test_loader(recs, pin_memory=None).pin_memory == torch.cuda.is_available()


def test_loader_with_worker_process(tmp_path):
    recs = [(str(jpeg(tmp_path/f'{p:04d}_c1s1_000001_00.jpg')), p, 0) for p in range(4)]
    dl = build_train_loader(recs, batch_size=2, workers=1)
    assert sum(len(b[1]) for b in dl) == 4


# ---------------------------------------------------------------- one owner for the input normalisation
def test_mean_std_come_from_the_input_spec():
    assert (MEAN, STD) == (InputSpec.mean, InputSpec.std)
    import hacnn_nbdev.data as D
    assert not hasattr(D, 'MEAN') and not hasattr(D, 'ReIDDataset')    # one home: hacnn_nbdev.loaders
    x = ReIDDataset([(str(jpeg(Path(os.environ.get('TMPDIR', '/tmp'))/'hacnn_mean_std.jpg')), 0, 0)])[0][0]
    assert x.shape == (3, InputSpec.height, InputSpec.width)


# ---------------------------------------------------------------- decoding: 16-bit, EXIF, floats
def png16_rgb(path, arr):
    "A 16-bit-per-channel RGB PNG written byte by byte (PIL cannot write one): arr (H, W, 3) uint16."
    h, w, _ = arr.shape
    chunk = lambda kind, data: (struct.pack('>I', len(data)) + kind + data
                                + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
    raw = b''.join(b'\x00' + arr[y].astype('>u2').tobytes() for y in range(h))
    Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0))
                           + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    return Path(path)


def test_16bit_grey_png_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    p = tmp_path/'0001_c1s1_000001_00.png'
    grey = np.array([[0, 1000, 257 * 100, 257 * 200, 65535]] * 4, np.uint16)   # mostly > 255: clipping would whiten
    Image.fromarray(grey).save(p)
    assert Image.open(p).mode == 'I;16'
    got = np.asarray(read_image(p))
    assert got.shape == (4, 5, 3) and got[0, :, 0].tolist() == [0, 4, 100, 200, 255]
    x = ReIDDataset([(str(p), 1, 0)], height=4, width=5)[0][0]                # through the loader: not white
    assert torch.allclose(denormalise(x)[0, 0], torch.tensor([0, 4, 100, 200, 255]) / 255., atol=0.02)


def test_32bit_and_float_grey_images(tmp_path):
    ok, big, flt = tmp_path/'ok.tif', tmp_path/'big.tif', tmp_path/'float.tif'
    Image.fromarray(np.array([[0, 65535]], np.int32), mode='I').save(ok)
    assert np.asarray(read_image(ok))[0, :, 0].tolist() == [0, 255]           # mode I within 16 bits: scaled
    Image.fromarray(np.array([[0, 70000]], np.int32), mode='I').save(big)
    with pytest.raises(BadImageError, match='big.tif.*outside 0..65535'): read_image(big)
    Image.fromarray(np.array([[0., .5]], np.float32), mode='F').save(flt)
    with pytest.raises(BadImageError, match='float.tif.*floating-point'): read_image(flt)


def test_16bit_rgb_png(tmp_path):
    arr = np.zeros((6, 4, 3), np.uint16); arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 257 * 128, 1000
    got = np.asarray(read_image(png16_rgb(tmp_path/'rgb16.png', arr)))
    assert got.shape == (6, 4, 3) and got[0, 0].tolist() == [255, 128, 3]


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 10, 3), np.uint8); img[:5] = 255                     # 10 wide, 20 high, white on top
    exif = Image.Exif(); exif[0x0112] = 6                                      # stored turned: rotate 90° to view
    p = tmp_path/'phone.jpg'; Image.fromarray(img).save(p, exif=exif, quality=95)
    assert Image.open(p).size == (10, 20) and read_image(p).size == (20, 10)


def test_odd_modes_decode_to_rgb(tmp_path):
    for mode, value in [('RGBA', (10, 20, 30, 0)), ('P', 3), ('LA', (50, 255)), ('1', 1), ('CMYK', (0, 0, 0, 0))]:
        p = tmp_path/f'm_{mode}.{"jpg" if mode == "CMYK" else "png"}'
        Image.new(mode, (8, 16), value).save(p)
        assert read_image(p).mode == 'RGB' and ReIDDataset([(str(p), 0, 0)])[0][0].shape == (3, 160, 64)


@pytest.mark.parametrize('content', [b'', b'not an image at all', b'\x89PNG\r\n\x1a\n' + b'\x00' * 40, b'\xff\xd8\xff'])
def test_undecodable_files_are_named(tmp_path, content):
    p = tmp_path/'0001_c1s1_000001_00.jpg'; p.write_bytes(content)
    with pytest.raises(BadImageError, match=p.name): read_image(p)
    assert exit_code(BadImageError('x')) == 1                                 # a run that failed on a file


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(FileNotFoundError): read_image(tmp_path/'gone.jpg')
    with pytest.raises(BadImageError, match='Is a directory'): read_image(tmp_path)  # not an image
    good, bad = check_images([(str(jpeg(tmp_path/'a.jpg')), 0, 0), (str(tmp_path/'gone.jpg'), 1, 0), (str(tmp_path), 2, 0)])
    assert [r[1] for r in good] == [0] and [r[1] for r in bad] == [1, 2]


# ---------------------------------------------------------------- MSMT17 list files
def msmt17_tree(base, version='MSMT17_V1', folders=('train', 'test')):
    lists = {'train': [('0000', '01', 0), ('0000', '04', 0), ('0001', '02', 1)], 'val': [('0001', '03', 1), ('0002', '05', 2)],
             'query': [('0000', '07', 0), ('0001', '15', 1)], 'gallery': [('0000', '09', 0), ('0001', '11', 1), ('0001', '12', 1)]}
    root = Path(base)/version
    for split, rows in lists.items():
        folder, lines = root/(folders[1] if split in ('query', 'gallery') else folders[0]), []
        for k, (d, cam, pid) in enumerate(rows):
            rel = f'{d}/{d}_{k:03d}_{cam}_0303morning_{k:04d}_{split[0]}.jpg'
            jpeg(folder/rel); lines.append(f'{rel} {pid}')
        (root/f'list_{split}.txt').write_text('\n'.join(lines) + '\n')
    return Path(base)


def test_msmt17_layouts_and_protocol(tmp_path):
    ds = MSMT17(msmt17_tree(tmp_path/'m'))
    assert [r[1:] for r in ds.train] == [(0, 0), (0, 3), (1, 1), (1, 2), (2, 4)]    # list_train + list_val
    assert [r[1:] for r in ds.query] == [(1, 6), (2, 14)] and [r[1] for r in ds.gallery] == [1, 2, 2]  # pids + 1
    assert ds.published['gallery'] == (3060, 82161) and 'MSMT17 (MSMT17_V1)' in stats_table(ds)
    assert MSMT17(tmp_path/'m'/'MSMT17_V1', with_val=False).num_train_pids == 2
    v2 = MSMT17(msmt17_tree(tmp_path/'v2', 'MSMT17_V2', ('mask_train_v2', 'mask_test_v2')))
    assert len(v2.gallery) == 3 and 'mask_test_v2' in v2.gallery[0][0]
    assert get_dataset('MSMT', tmp_path/'m').num_train_pids == 3


@pytest.mark.parametrize('line, says', [('0000/x.jpg', "line 4: expected 'relative/path.jpg pid'"),
                                        ('0000/x.jpg 1 2', "line 4: expected"),
                                        ('0000/x.jpg one', "line 4: expected"),
                                        ('0000/missing_000_01_a_0000_0.jpg 1', 'line 4: .*does not exist'),
                                        ('0000/badname.jpg 1', 'line 4: cannot read a camera')])
def test_msmt17_bad_list_lines_name_file_and_line(tmp_path, line, says):
    root = msmt17_tree(tmp_path/'m')/'MSMT17_V1'
    jpeg(root/'test'/'0000'/'badname.jpg')
    (root/'list_gallery.txt').write_text((root/'list_gallery.txt').read_text() + line + '\n')
    with pytest.raises(BadRowError, match="list_gallery.txt' " + says) as e: MSMT17(tmp_path/'m')
    assert e.value.line == 4 and exit_code(e.value) == 2


def test_msmt17_missing_pieces(tmp_path):
    root = msmt17_tree(tmp_path/'m')/'MSMT17_V1'
    (root/'list_val.txt').unlink()
    with pytest.raises(DatasetNotFoundError, match=r'MSMT17_V1/\{train, test\}/ and .*list_\{train,val,query,gallery\}.txt'):
        MSMT17(tmp_path/'m')
    with pytest.raises(DatasetNotFoundError, match='is a file'): MSMT17(root/'list_train.txt')


# ---------------------------------------------------------------- your own images: a CSV file
def own_tree(base, rows=None, header='path,person,camera,split', name='people.csv', **kw):
    rows = rows if rows is not None else [
        ('a/1.jpg', 'alice', 'door', 'train'), ('a/2.jpg', 'alice', 'lobby', 'train'), ('b/1.jpg', 'bob', 'door', 'train'),
        ('b/2.jpg', 'bob', 'lobby', 'train'), ('c/1.jpg', '10', 'door', 'query'), ('c/2.jpg', '10', 'lobby', 'gallery'),
        ('d/1.jpg', '2', 'lobby', 'gallery'), ('d/2.jpg', '2', 'door', 'query')]
    for r in rows:
        if not Path(r[0]).is_absolute() and r[0].endswith('.jpg'): jpeg(Path(base)/r[0])
    p = Path(base)/name
    p.write_text(header + '\n' + ''.join(','.join(r) + '\n' for r in rows), **kw)
    return p


def test_csv_dataset(tmp_path):
    ds = CSVData(own_tree(tmp_path))
    assert [r[1:] for r in ds.train] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert ds.test_people == {1: '2', 2: '10'}                                # natural order: 2 before 10
    assert [r[1:] for r in ds.query] == [(2, 0), (1, 0)] and ds.cameras == ['door', 'lobby']
    assert ds.query[0][0] == str(tmp_path/'c'/'1.jpg') and not ds.notes
    assert get_dataset('csv', tmp_path).train == ds.train == get_dataset('CSV', str(ds.root)).train
    assert 'CSV dataset people.csv' in stats_table(ds)
    check_trainable(ds)


def test_csv_formats_people_use(tmp_path):
    absolute = jpeg(tmp_path/'elsewhere'/'x.jpg')
    rows = [('"a,b/1.jpg"', 'ann', 'cam 1', 'Train', 'extra'), (str(absolute), 'ben', 'cam 2', ' train ', ''),
            ('"a,b/2.jpg"', 'ann', 'cam 2', 'query', ''), ('a/3.jpg', 'ann', 'cam 1', 'gallery', '')]
    jpeg(tmp_path/'a,b'/'1.jpg'); jpeg(tmp_path/'a,b'/'2.jpg'); jpeg(tmp_path/'a'/'3.jpg')
    p = tmp_path/'own.csv'                                                   # BOM, CRLF, blank lines, columns reordered
    p.write_bytes(('\ufeffcamera,split,path,person,note\r\n\r\n' + ''.join(f'{c},{s},{q},{w},{n}\r\n' for q, w, c, s, n in rows)).encode())
    ds = CSVData(p)
    assert [Path(r[0]).name for r in ds.train] == ['1.jpg', 'x.jpg'] and ds.train_people == ['ann', 'ben']
    assert len(ds.query) == len(ds.gallery) == 1 and ds.query[0][1] == ds.gallery[0][1] == 1


@pytest.mark.parametrize('text, says', [
    ('', 'lists no images'),
    ('path,person,camera,split\n', 'lists no images'),
    ('path,person,cam,split\na/1.jpg,x,y,train\n', "line 1: the header must name the columns path,person,camera,split"),
    ('path;person;camera;split\na/1.jpg;x;y;train\n', 'use commas'),
    ('path,person,camera,split\na/1.jpg,alice,door\n', 'line 2: has 3 fields, the header has 4'),
    ('path,person,camera,split\na/1.jpg,,door,train\n', 'line 2: the person is empty'),
    ('path,person,camera,split\n,alice,door,train\n', 'line 2: the path is empty'),
    ('path,person,camera,split\na/1.jpg,alice, ,train\n', 'line 2: the camera is empty'),
    ('path,person,camera,split\na/1.jpg,alice,door,test\n', "line 2: split must be train, query or gallery, not 'test'"),
    ('path,person,camera,split\n\na/9.jpg,alice,door,train\n', "line 3: .*a/9.jpg' does not exist"),
    ('path,person,camera,split\nnotes.txt,alice,door,train\n', "line 2: 'notes.txt' is not an image file"),
    ('path,person,camera,split\na/1.jpg,alice,door,train\na/./1.jpg,alice,lobby,query\n',
     r"line 3: 'a/./1.jpg' is listed again \(first on line 2\)"),
    ('path,person,camera,split\n"a/1.jpg,alice,door,train\n', 'line'),
])
def test_csv_bad_rows_name_file_and_line(tmp_path, text, says):
    jpeg(tmp_path/'a'/'1.jpg'); (tmp_path/'notes.txt').write_text('x')
    p = tmp_path/'bad.csv'; p.write_text(text)
    with pytest.raises(BadFileNameError, match=says) as e: CSVData(p)
    assert "bad.csv'" in str(e.value) and exit_code(e.value) == 2


def test_csv_not_text_and_folders(tmp_path):
    (tmp_path/'bin.csv').write_bytes(b'\xff\xfe\x00\x81binary')
    with pytest.raises(BadFileNameError, match='not a UTF-8 text file'): CSVData(tmp_path/'bin.csv')
    own_tree(tmp_path/'two'); own_tree(tmp_path/'two', name='more.csv')
    with pytest.raises(DatasetNotFoundError, match=r'2 .csv files \(more.csv, people.csv\)'): CSVData(tmp_path/'two')
    (tmp_path/'none').mkdir()
    with pytest.raises(DatasetNotFoundError, match='no .csv file'): CSVData(tmp_path/'none')
    with pytest.raises(DatasetNotFoundError, match='does not exist'): get_dataset('csv', tmp_path/'nowhere.csv')


def test_csv_note_on_queries_without_a_cross_camera_match(tmp_path):
    rows = [('a/1.jpg', 'a', 'c1', 'train'), ('b/1.jpg', 'b', 'c1', 'train'), ('q/1.jpg', 'q', 'c1', 'query'),
            ('q/2.jpg', 'q', 'c1', 'gallery'), ('r/1.jpg', 'r', 'c1', 'query'), ('r/2.jpg', 'r', 'c2', 'gallery')]
    ds = CSVData(own_tree(tmp_path, rows))
    assert ds.notes == ['1 of 2 queries have no gallery image of their person from another camera: '
                        'the evaluation leaves them out'] and 'note: 1 of 2 queries' in stats_table(ds)


# ---------------------------------------------------------------- a training split that cannot train
def test_check_trainable(tmp_path):
    one = CSVData(own_tree(tmp_path/'one', [('a/1.jpg', 'ann', 'c1', 'train'), ('a/2.jpg', 'ann', 'c2', 'train'),
                                           ('q/1.jpg', 'q', 'c1', 'query'), ('q/2.jpg', 'q', 'c2', 'gallery')]))
    with pytest.raises(TooFewIdentitiesError, match=f"{tmp_path/'one'/'people.csv'}' holds 1 identity \\(2 images\\)") as e:
        check_trainable(one)
    assert exit_code(e.value) == 2
    none = CSVData(own_tree(tmp_path/'none', [('q/1.jpg', 'q', 'c1', 'query'), ('q/2.jpg', 'q', 'c2', 'gallery')]))
    with pytest.raises(TooFewIdentitiesError, match='holds 0 identities'): check_trainable(none)
    market = Market1501(market_tree(tmp_path/'m'))
    assert check_trainable(market) is market


# ---------------------------------------------------------------- registry and errors by type
def test_registry_options_and_error_types(tmp_path, cuhk):
    market_tree(tmp_path/'m')
    with pytest.raises(UnknownDatasetError) as e: get_dataset('viper', tmp_path)
    assert isinstance(e.value, KeyError) and str(e.value).startswith("unknown dataset 'viper'") and exit_code(e.value) == 2
    with pytest.raises(ValueError, match=r"takes no option variant \(its options: none\)"):
        get_dataset('market1501', tmp_path/'m', variant='labeled')
    with pytest.raises(ValueError, match='takes no option variant'): get_dataset('cuhk03-labeled', cuhk[0], variant='detected')
    with pytest.raises(OptionError, match="split must be 0: the 'market1501' dataset has one split, not 2"):
        get_dataset('market1501', tmp_path/'m', split=2)
    assert get_dataset('market1501', tmp_path/'m', split=None).num_train_pids == 3
    with pytest.raises(OptionError, match="variant must be 'detected' or 'labeled', not 'auto'") as e:
        CUHK03(cuhk[0], variant='auto')
    assert e.value.option == 'variant' and exit_code(e.value) == 2
    with pytest.raises(OptionError, match='split must be in 0..19'): CUHK03(cuhk[0], protocol='classic', split=-1)
    with pytest.raises(DatasetNotFoundError, match='is a file') as e: Market1501(tmp_path/'m'/'query'/'readme.txt')
    assert isinstance(e.value, FileNotFoundError) and exit_code(e.value) == 2
    with pytest.raises(DatasetNotFoundError, match='is a file'): CUHK03(tmp_path/'m'/'query'/'readme.txt')


def test_loader_options_are_usage_errors(tmp_path):
    recs = [(str(jpeg(tmp_path/f'{p:04d}_c1s1_000001_00.jpg')), p, 0) for p in range(4)]
    for make, says in [(lambda: ReIDDataset(recs, height=0), 'height must be an integer >= 1'),
                       (lambda: ReIDDataset(recs, width=32.5), 'width must be an integer >= 1'),
                       (lambda: ReIDSampler([0, 1], batch_size=0), 'batch_size must be an integer >= 1'),
                       (lambda: ReIDSampler([0, 1], batch_size=4, world_size=2, rank=2), 'rank must be in 0..1'),
                       (lambda: ReIDSampler([0, 1], batch_size=4, mode='identity', num_instances=0), 'num_instances'),
                       (lambda: build_test_loader(recs, batch_size=0), 'batch_size must be an integer >= 1'),
                       (lambda: build_train_loader(recs, workers=-1), 'workers must be an integer >= 0')]:
        with pytest.raises(OptionError, match=says) as e: make()
        assert exit_code(e.value) == 2


# ---------------------------------------------------------------- hacnn_data: every mistake one line
def run_data(*argv):
    "hacnn_data in this process: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: data_main([str(a) for a in argv]); code = 0
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def one_line(code, err, want, *words): one_line_error((code, err), 'hacnn_data', want, *words)


def test_hacnn_data_mistakes(tmp_path, cuhk):
    market_tree(tmp_path/'m'); c1 = tmp_path/'c1'
    for pid in range(1, 5):
        for img in range(1, 5): jpeg(c1/'campus'/f'{pid:04d}{img:03d}.png')
    cases = [(['--name', 'viper', '--root', tmp_path/'m'], "unknown dataset 'viper'"),
             (['--name', 'market1501', '--root', tmp_path/'nowhere'], 'does not exist', 'bounding_box_train'),
             (['--name', 'market1501', '--root', tmp_path/'m'/'query'/'readme.txt'], 'is a file'),
             (['--name', 'market1501', '--root', cuhk[0]], 'bounding_box_train'),            # wrong layout
             (['--name', 'cuhk01', '--root', tmp_path/'m'], 'CUHK01 not found'),
             (['--name', 'cuhk03', '--root', cuhk[0], '--protocol', 'classic', '--split', 20], '--split must be in 0..19'),
             (['--name', 'cuhk03', '--root', cuhk[0], '--variant', 'auto'], "--variant must be 'detected' or 'labeled'"),
             (['--name', 'cuhk01', '--root', c1, '--split', -1], '--split must be 0 or more'),
             (['--name', 'market1501', '--root', tmp_path/'m', '--split', 3], 'has one split'),
             (['--name', 'market1501', '--root', tmp_path/'m', '--variant', 'labeled'], 'takes no option variant'),
             (['--name', 'csv', '--root', tmp_path/'m'], 'no .csv file'),
             (['--split', 'one'], "argument --split: invalid int value: 'one'"),
             (['--colour', 'red'], 'unrecognized arguments: --colour red')]
    for argv, *words in cases:
        code, out, err = run_data(*argv)
        one_line(code, err, 2, *words)
    assert run_data('--name', 'cuhk01', '--root', c1, '--split', 3)[0] == 0


def test_hacnn_data_check_and_notes(tmp_path):
    p = own_tree(tmp_path)
    code, out, err = run_data('--name', 'csv', '--root', p, '--check')
    assert code == 0 and 'all 8 images decode' in out and not err
    (tmp_path/'c'/'2.jpg').write_bytes(b'\xff\xd8 cut')
    code, out, err = run_data('--name', 'CSV', '--root', p, '--check')
    one_line(code, err, 1, '1 of 8 images', "c/2.jpg'", 'cannot be read')
    assert 'CSV dataset people.csv' in out                                    # the table came first
    one = own_tree(tmp_path/'one', [('a/1.jpg', 'a', 'x', 'train'), ('q/1.jpg', 'q', 'x', 'query')])
    code, out, err = run_data('--name', 'csv', '--root', one)
    assert code == 0 and 'note: the training split' in out and 'holds 1 identity' in out


def test_hacnn_data_debug_shows_the_traceback(tmp_path):
    with pytest.raises(DatasetNotFoundError): data_main(['--name', 'market1501', '--root', str(tmp_path), '--debug'])


def test_hacnn_data_command_end_to_end(tmp_path):
    market_tree(tmp_path/'m')
    run = lambda *a: subprocess.run([sys.executable, '-m', 'hacnn_nbdev.data', *map(str, a)], capture_output=True,
                                    text=True, timeout=120)
    r = run('--name', 'market-1501', '--root', tmp_path/'m')
    assert r.returncode == 0 and '750 / 3,368' in r.stdout, r.stderr
    r = run('--name', 'market1501', '--root', tmp_path/'none')
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and r.stderr.startswith('hacnn_data: error: '), r.stderr


def test_console_script_entry():
    "settings.ini runs hacnn_data through `data_main` (one error path), not the plain function."
    ini = (Path(__file__).resolve().parents[1]/'settings.ini').read_text()
    assert 'hacnn_data=hacnn_nbdev.data:data_main' in ini
