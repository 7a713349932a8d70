"Tests for hacnn_nbdev.ranking: re-ranking (released and equations), FAISS top-k evaluation, pictures."
import importlib.util, re, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from hacnn_nbdev.metrics import compute_distance, evaluate_rank, simulate_features, random_case, RankResult
from hacnn_nbdev import ranking as R


def assert_same(a, b, tol=1e-6):
    np.testing.assert_allclose(a.cmc, b.cmc, atol=tol)
    assert abs(a.mAP - b.mAP) <= tol and abs(a.mINP - b.mINP) <= tol
    assert (a.num_valid, a.num_skipped) == (b.num_valid, b.num_skipped)


def _euclid(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))


def _torchreid_rerank():
    "torchreid's reid/utils/rerank.py, loaded from its file (the package's __init__ needs torchvision)."
    spec = importlib.util.find_spec('torchreid')
    if spec is None: pytest.skip('torchreid (a test requirement: pip install torchreid==0.2.5) is not installed')
    path = Path(spec.submodule_search_locations[0]) / 'reid' / 'utils' / 'rerank.py'
    if not path.exists(): pytest.skip(f'torchreid is installed but has no {path}')
    mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location('_tr_rerank', path))
    mod.__spec__.loader.exec_module(mod)
    return mod


# --- re-ranking -------------------------------------------------------------------------------------------

CASES = [(0, 20, 6, 0.3), (1, 5, 1, 0.5), (2, 7, 3, 0.1), (3, 12, 12, 0.0), (4, 20, 6, 0.3), (5, 3, 2, 1.0),
         (6, 9, 4, 0.3), (7, 20, 1, 0.7)]

@pytest.mark.parametrize('seed, k1, k2, lam', CASES)
def test_released_re_ranking_equals_torchreid(seed, k1, k2, lam):
    tr = _torchreid_rerank()
    rng = np.random.default_rng(seed)
    if seed % 2:
        fs = simulate_features(n_ids=int(rng.integers(6, 15)), n_distractors=int(rng.integers(0, 20)), seed=seed)
        qf, gf = fs.q_feats, fs.g_feats
    else:
        Q, G, D = (int(v) for v in rng.integers((5, 20, 4), (40, 120, 64)))
        qf, gf = rng.standard_normal((Q, D)).astype(np.float32), rng.standard_normal((G, D)).astype(np.float32)
    ref = tr.re_ranking(_euclid(qf, gf), _euclid(qf, qf), _euclid(gf, gf), k1=k1, k2=k2, lambda_value=lam)
    ours = R.re_ranking(qf, gf, k1=k1, k2=k2, lambda_value=lam)                # method='released' by default
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(R.re_ranking(torch.tensor(qf), gf, k1, k2, lam, distmat=compute_distance(qf, gf)),
                               ref, atol=1e-5, rtol=0)


# the equations' version as it was before the released one became the default: values recorded from it
GOLDEN = [({}, 9845.324504598975, [0.26063585, 0.43447468, 1.11731672, 1.06649983], [1.07586432, 1.11504066, 0.95436597]),
          (dict(k1=6, k2=1), 10212.469559520483, [0.60212052, 0.67121178, 1.11731672, 1.06649983],
           [1.07586432, 1.11504066, 1.05512977]),
          (dict(k1=9, k2=3, lambda_value=0.5), 10830.398317873478, [0.33848333, 0.71200037, 1.19552791, 1.11083293],
           [1.12644041, 1.19173455, 1.07331264])]

@pytest.mark.parametrize('kw, total, first, last', GOLDEN)
def test_equations_re_ranking_reproduces_its_earlier_results(kw, total, first, last):
    fs = simulate_features(n_ids=12, n_distractors=10, seed=3)
    r = R.re_ranking(fs.q_feats, fs.g_feats, method='equations', **kw).astype(np.float64)
    assert r.shape == (47, 198) and r.sum() == pytest.approx(total, abs=1e-2)
    np.testing.assert_allclose(r[0, :4], first, atol=1e-6)
    np.testing.assert_allclose(r[-1, -3:], last, atol=1e-6)


def _re_ranking_dense(qf, gf, k1=20, k2=6, lam=0.3):
    "Eq. 6-7 and the fusion, transcribed literally: Python sets, dense vectors over all N images."
    X = np.concatenate([qf, gf]).astype(np.float64)
    N, Q = len(X), len(qf)
    D = np.sqrt(np.maximum((X ** 2).sum(1)[:, None] + (X ** 2).sum(1)[None] - 2 * X @ X.T, 0))
    np.fill_diagonal(D, -1)
    def Nk(i, k): return list(np.argsort(D[i], kind='stable')[:k + 1])
    def Rf(i, k): return {g for g in Nk(i, k) if i in Nk(g, k)}
    V = np.zeros((N, N))
    np.fill_diagonal(D, 0)
    for i in range(N):
        Ri = Rf(i, k1)
        Rstar = set(Ri)
        for q in Ri:
            Rq = Rf(q, round(k1 / 2))
            if len(Ri & Rq) >= 2 / 3 * len(Rq): Rstar |= Rq
        for g in Rstar: V[i, g] = np.exp(-D[i, g])
    if k2 > 1: V = np.stack([V[Nk(i, k2 - 1)].mean(0) for i in range(N)])
    mn = np.minimum(V[:Q, None], V[None, Q:]).sum(-1)
    mx = np.maximum(V[:Q, None], V[None, Q:]).sum(-1)
    return (1 - lam) * (1 - mn / mx) + lam * D[:Q, Q:]


@pytest.mark.parametrize('kw', [{}, dict(k1=6, k2=1), dict(k1=8, k2=3, lam=0.6)])
def test_equations_re_ranking_equals_the_literal_transcription(kw):
    fs = simulate_features(n_ids=10, n_distractors=8, seed=8)
    lam = kw.pop('lam', 0.3)
    np.testing.assert_allclose(R.re_ranking(fs.q_feats, fs.g_feats, lambda_value=lam, method='equations', **kw),
                               _re_ranking_dense(fs.q_feats, fs.g_feats, lam=lam, **kw), atol=1e-4)


def test_re_ranking_shape_gain_and_lambda_one():
    fs = simulate_features(n_ids=60, n_distractors=100, cam_shift=0.8, noise=1.0, seed=4)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    base = compute_distance(fs.q_feats, fs.g_feats)
    b = evaluate_rank(base, *lab)
    for method in ('released', 'equations'):
        rr = R.re_ranking(fs.q_feats, fs.g_feats, method=method)
        assert rr.shape == base.shape and rr.dtype == np.float32 and np.isfinite(rr).all()
        assert evaluate_rank(rr, *lab).mAP > b.mAP
    np.testing.assert_allclose(R.re_ranking(fs.q_feats, fs.g_feats, lambda_value=1.0, method='equations'), base,
                               atol=1e-6)                                       # λ = 1: the original distance
    far = _euclid(np.r_[fs.q_feats, fs.g_feats], np.r_[fs.q_feats, fs.g_feats])[:len(base)].max(1) ** 2
    np.testing.assert_allclose(R.re_ranking(fs.q_feats, fs.g_feats, lambda_value=1.0), base.astype(float) ** 2
                               / far[:, None], atol=1e-5)                       # released: d² / row max


@pytest.mark.parametrize('kw, err, msg', [
    (dict(k1=0), ValueError, 'k1 must be an integer >= 1'), (dict(k2=2.5), TypeError, 'k2 must be an integer'),
    (dict(lambda_value=1.5), ValueError, 'lambda_value must be a number in [0, 1]'),
    (dict(lambda_value='0.3'), ValueError, 'lambda_value must be a number'),
    (dict(method='paper'), ValueError, "method must be 'released' or 'equations'"),
    (dict(distmat=np.zeros((3, 3))), ValueError, 'distmat (3, 3) must be'),
])
def test_re_ranking_refuses_bad_options(kw, err, msg):
    fs = simulate_features(n_ids=5, seed=0)
    with pytest.raises(err, match=re.escape(msg)): R.re_ranking(fs.q_feats, fs.g_feats, **kw)


def test_re_ranking_refuses_bad_features():
    q, g = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match='q_feats must hold real numbers'): R.re_ranking(q * 1j, g)
    with pytest.raises(ValueError, match='same D'): R.re_ranking(q, g[:, :2])
    with pytest.raises(ValueError, match='must not be empty'): R.re_ranking(q[:0], g)


# --- FAISS top-k ------------------------------------------------------------------------------------------

def test_topk_exact_with_fallback_and_lower_bound_without():
    fs = simulate_features(n_ids=40, n_distractors=50, n_junk=15, noise=0.9, seed=9)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    dense = evaluate_rank(compute_distance(fs.q_feats, fs.g_feats), *lab)
    for k in (3, 25, 10_000):
        r = R.evaluate_topk(fs.q_feats, fs.g_feats, *lab, k=k)
        assert_same(r, dense)
        assert r.exact and isinstance(r, RankResult) and isinstance(r, R.TopkResult)
    a = R.evaluate_topk(fs.q_feats, fs.g_feats, *lab, k=10, exact_fallback=False)
    assert a.num_uncertain > 0 and not a.exact and a.mAP <= dense.mAP + 1e-12 and a.mINP <= dense.mINP + 1e-12
    assert 'num_uncertain' not in a.scores() and a.scores()['rank1'] == a.cmc[0]


def test_topk_checks_its_inputs():
    fs = simulate_features(n_ids=10, seed=0)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    with pytest.raises(ValueError, match='q_pids must hold integers'):
        R.evaluate_topk(fs.q_feats, fs.g_feats, fs.q_pids + 0.5, *lab[1:])
    with pytest.raises(ValueError, match=re.escape(f'q_feats ({len(fs.q_pids) - 1}) and g_feats')):
        R.evaluate_topk(fs.q_feats[:-1], fs.g_feats, *lab)
    with pytest.raises(ValueError, match='k must be an integer >= 1'): R.evaluate_topk(fs.q_feats, fs.g_feats, *lab, k=0)
    with pytest.raises(TypeError, match='g_feats must hold real numbers'):
        R.faiss_search(fs.q_feats, fs.g_feats.astype(str))
    with pytest.raises(ValueError, match="'euclidean' or 'cosine'"): R.faiss_search(fs.q_feats, fs.g_feats, metric='l1')


# --- pictures and pair distances ---------------------------------------------------------------------------

def test_pictures_and_pair_distances():
    import matplotlib
    matplotlib.use('Agg')
    fs = simulate_features(n_ids=20, seed=1)
    d = compute_distance(fs.q_feats, fs.g_feats)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    tp, fp = R.pair_distances(d, *lab)
    assert len(tp) == (np.equal.outer(fs.q_pids, fs.g_pids) & ~np.equal.outer(fs.q_camids, fs.g_camids)).sum()
    assert tp.mean() < fp.mean()
    assert len(R.pair_distances(d, *lab, max_pairs=100)[1]) == 100
    ax = R.plot_cmc({'a': evaluate_rank(d, *lab)}, max_rank=10)
    assert len(ax.lines) == 1
    assert len(R.plot_cmc(evaluate_rank(d, *lab)).lines) == 1
    assert len(R.plot_distance_distributions(d, *lab).patches) > 0


def test_pair_distances_refuses_bad_input():
    d, qp, gp, qc, gc = random_case(1)
    with pytest.raises(ValueError, match='distmat contains NaN'): R.pair_distances(np.full(d.shape, np.nan), qp, gp, qc, gc)
    with pytest.raises(ValueError, match='q_pids must hold integers'): R.pair_distances(d, qp + 0.4, gp, qc, gc)
    with pytest.raises(TypeError, match='not complex'): R.pair_distances(d + 1j, qp, gp, qc, gc)
    with pytest.raises(ValueError, match='g_pids is empty'): R.pair_distances(d[:, :0], qp, gp[:0], qc, gc[:0])
    with pytest.raises(ValueError, match='max_pairs must be an integer >= 1'):
        R.pair_distances(d, qp, gp, qc, gc, max_pairs=0)


def test_importing_the_appendix_loads_no_plotting_library():
    code = ('import sys, hacnn_nbdev.ranking; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'
