"""What several test files share: tiny image files, a tiny CUHK03 .mat file, and the check that a command
failed with one clear line. pytest loads this file first; test modules import the helpers from it."""
import subprocess
from pathlib import Path
import h5py
import numpy as np
from PIL import Image


def jpeg(path, colour=(10, 120, 200), size=(64, 128)):
    "A one-colour JPEG at `path` (folders made); returns the path."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path, quality=95)
    return path


def one_line_error(result, prog:str, code:int, *words):
    """`result` (a CompletedProcess, or a (status, stderr) pair) failed with `code`, in one line
    `prog: error: ...` naming every one of `words`, without a traceback."""
    status, err = (result.returncode, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    lines = [t for l in err.split('\n') if (t := l.split('\r')[-1].strip())]   # what a terminal shows
    assert status == code, (status, err)
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: ') and 'Traceback' not in err, err
    for w in words: assert str(w) in lines[0], (w, lines[0])


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
