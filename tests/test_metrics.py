"Tests for hacnn_nbdev.metrics: fast vs naive evaluators, protocols, bad input, FAISS, re-ranking, pictures."
import importlib.util, os, re, warnings
import numpy as np, pytest, torch, matplotlib
matplotlib.use('Agg')
from hacnn_nbdev import metrics as M
from hacnn_nbdev.metrics import (evaluate_rank, evaluate_rank_naive, positive_ranks, metrics_from_ranks, compute_distance,
                                 simulate_features, random_case, RankResult)

def assert_same(a, b, tol=1e-6):
    np.testing.assert_allclose(a.cmc, b.cmc, atol=tol); assert abs(a.mAP - b.mAP) <= tol and abs(a.mINP - b.mINP) <= tol
    assert (a.num_valid, a.num_skipped) == (b.num_valid, b.num_skipped)

@pytest.mark.parametrize('seed', range(300, 420))
def test_fast_equals_naive_on_random_cases(seed):
    case = random_case(seed)
    for mode in ('standard', 'trapezoid'):
        assert_same(evaluate_rank(*case, max_rank=12, ap_mode=mode), evaluate_rank_naive(*case, max_rank=12, ap_mode=mode))
    for frac in (0, 0.1, 1):
        assert_same(metrics_from_ranks(positive_ranks(*case, chunk_size=3, dense_frac=frac), 12), evaluate_rank_naive(*case, max_rank=12))

def test_simulated_market_like_case_both_paths():
    fs = simulate_features(n_ids=80, n_query=300, n_gallery=1500, n_distractors=200, n_junk=60, noise=1.2, seed=11)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    d = compute_distance(fs.q_feats, fs.g_feats)
    ref = evaluate_rank_naive(d, *lab)
    for frac in (0, 0.25, 1): assert_same(metrics_from_ranks(positive_ranks(d, *lab, dense_frac=frac)), ref)
    assert_same(evaluate_rank(d.astype(np.float64), *lab), evaluate_rank_naive(d.astype(np.float64), *lab))

def test_hand_computed_values():
    d = np.array([[0.6, 0.1, 0.2, 0.05, 0.5, 0.5]])
    gp, gc = np.array([1, 1, 0, -1, 1, 2]), np.array([1, 0, 2, 1, 1, 2])
    r = evaluate_rank(d, [1], gp, [0], gc, max_rank=4)
    np.testing.assert_array_equal(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5) and r.num_skipped == 0
    cmc, mAP, mINP, nv = r  # the contract's four fields
    assert isinstance(r, RankResult) and nv == 1 and set(r.summary()) == {'R1', 'R5', 'R10', 'mAP', 'mINP', 'num_valid', 'num_skipped'} - {'R5', 'R10'}

def test_torch_inputs_and_skipped_count():
    d, qp, gp, qc, gc = random_case(3)
    a = evaluate_rank(torch.tensor(d), torch.tensor(qp), torch.tensor(gp), torch.tensor(qc), torch.tensor(gc))
    assert_same(a, evaluate_rank(d, qp, gp, qc, gc))
    assert a.num_valid + a.num_skipped == len(qp) and np.isnan(a.ap).sum() == a.num_skipped

def test_tie_rule_is_stable_gallery_order():
    d = np.zeros((1, 4))  # everything ties: order = gallery order
    r = evaluate_rank(d, [1], [2, 1, 3, 1], [0], [1, 1, 1, 1], max_rank=4)
    np.testing.assert_array_equal(r.cmc, [0, 1, 1, 1]); assert r.mAP == pytest.approx((1/2 + 2/4) / 2)

@pytest.mark.parametrize('bad, msg', [
    (lambda d, *l: evaluate_rank(np.full_like(d, np.nan), *l), 'NaN'),
    (lambda d, qp, gp, qc, gc: evaluate_rank(d[:, :-1], qp, gp, qc, gc), 'must be (len(q_pids)'),
    (lambda d, qp, gp, qc, gc: evaluate_rank(d, qp, gp, qc[:-1], gc), 'must match'),
    (lambda d, qp, gp, qc, gc: evaluate_rank(d, qp + 1000, gp, qc, gc), 'no query has a valid true match'),
    (lambda d, *l: evaluate_rank(d, *l, ap_mode='11point'), 'ap_mode'),
    (lambda d, *l: evaluate_rank_naive(d, *l, ap_mode='11point'), 'ap_mode'),
])
def test_bad_input_is_refused(bad, msg):
    with pytest.raises(ValueError, match=None) as e: bad(*random_case(1))
    assert msg in str(e.value)

def test_compute_distance_chunks_metrics_and_errors():
    rng = np.random.default_rng(0); q, g = rng.standard_normal((37, 16)), rng.standard_normal((53, 16))
    full = compute_distance(q, g, chunk_size=10_000)
    np.testing.assert_allclose(compute_distance(q, g, chunk_size=4), full, atol=1e-6)
    np.testing.assert_allclose(full, torch.cdist(torch.tensor(q), torch.tensor(g)).numpy(), atol=1e-3)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(compute_distance(torch.tensor(q), g, 'cosine'), 1 - qn @ gn.T, atol=1e-5)
    assert full.dtype == np.float32 and full.shape == (37, 53)
    with pytest.raises(ValueError, match='same D'): compute_distance(q, g[:, :3])
    with pytest.raises(ValueError, match='euclidean'): compute_distance(q, g, 'l1')

def test_multi_query_pooling():
    fs = simulate_features(n_ids=30, n_distractors=20, seed=2)
    args = (fs.q_feats, fs.q_pids, fs.q_camids, fs.g_feats, fs.g_pids, fs.g_camids)
    sq = evaluate_rank(compute_distance(fs.q_feats, fs.g_feats), fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    assert_same(M.evaluate_multi_query(*args), sq)  # one query per (pid, camid): pooling changes nothing
    many = simulate_features(n_ids=30, n_query=400, n_distractors=20, seed=2)
    margs = (many.q_feats, many.q_pids, many.q_camids, many.g_feats, many.g_pids, many.g_camids)
    msq = evaluate_rank(compute_distance(many.q_feats, many.g_feats), many.q_pids, many.g_pids, many.q_camids, many.g_camids)
    assert M.evaluate_multi_query(*margs).mAP > msq.mAP
    with pytest.raises(ValueError, match='pool'): M.evaluate_multi_query(*args, pool='median')

def test_single_shot_matches_market_protocol_when_one_image_per_identity():
    rng = np.random.default_rng(0); d = rng.random((15, 25)); gp = np.arange(1, 26); qp = rng.integers(1, 26, 15)
    lab = (qp, gp, np.zeros(15), np.ones(25))
    assert_same(M.evaluate_single_shot(d, *lab, n_repeats=2), evaluate_rank(d, *lab))
    ss = M.evaluate_single_shot(*random_case(7), n_repeats=4)
    assert ss.mAP == pytest.approx(ss.mINP)  # one true match per draw

def test_topk_exact_with_fallback_and_lower_bound_without():
    fs = simulate_features(n_ids=40, n_distractors=50, n_junk=15, noise=0.9, seed=9)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    dense = evaluate_rank(compute_distance(fs.q_feats, fs.g_feats), *lab)
    for k in (3, 25, 10_000):
        r = M.evaluate_topk(fs.q_feats, fs.g_feats, *lab, k=k); assert_same(r, dense); assert r.exact
    a = M.evaluate_topk(fs.q_feats, fs.g_feats, *lab, k=10, exact_fallback=False)
    assert a.num_uncertain > 0 and not a.exact and a.mAP <= dense.mAP + 1e-12 and a.mINP <= dense.mINP + 1e-12

def test_re_ranking_shape_and_gain():
    fs = simulate_features(n_ids=60, n_distractors=100, cam_shift=0.8, noise=1.0, seed=4)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    base = compute_distance(fs.q_feats, fs.g_feats); rr = M.re_ranking(fs.q_feats, fs.g_feats)
    assert rr.shape == base.shape and rr.dtype == np.float32 and np.isfinite(rr).all()
    assert evaluate_rank(rr, *lab).mAP > evaluate_rank(base, *lab).mAP
    np.testing.assert_allclose(M.re_ranking(fs.q_feats, fs.g_feats, lambda_value=1.0), base, atol=1e-6)  # λ=1: the original d

def test_pictures_and_pair_distances():
    fs = simulate_features(n_ids=20, seed=1); d = compute_distance(fs.q_feats, fs.g_feats)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    tp, fp = M.pair_distances(d, *lab)
    assert len(tp) == np.diff(M.query_groups(fs.q_pids, fs.q_camids, fs.g_pids, fs.g_camids)[0][1]).sum()
    assert tp.mean() < fp.mean()
    ax = M.plot_cmc({'a': evaluate_rank(d, *lab)}, max_rank=10); assert len(ax.lines) == 1
    ax = M.plot_distance_distributions(d, *lab); assert len(ax.patches) > 0

def _torchreid_rank():
    spec = importlib.util.find_spec('torchreid')
    path = spec and os.path.join(os.path.dirname(spec.origin), 'reid', 'metrics', 'rank.py')
    if not path or not os.path.exists(path): return None
    m = importlib.util.module_from_spec(importlib.util.spec_from_file_location('_tr_rank', path))
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); m.__spec__.loader.exec_module(m)
    return m

def test_agrees_with_common_toolbox_when_installed():
    tr = _torchreid_rank()
    if tr is None: pytest.skip('torchreid (a bench requirement) is not installed')
    fs = simulate_features(n_ids=60, n_distractors=100, noise=1.1, seed=5)
    d = compute_distance(fs.q_feats, fs.g_feats); lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    cmc, mAP = tr.eval_market1501(d, *lab, 50)[:2]
    r = evaluate_rank(d, *lab); np.testing.assert_allclose(r.cmc, cmc, atol=1e-6); assert abs(r.mAP - mAP) < 1e-6



# --- the input contract: one check (check_rank_inputs) at every public entry point ------------------------------

def _nan(d, *lab):
    d = d.astype(np.float64)
    d[-1, -1] = np.nan                                                          # in the last block, last column
    return (d, *lab)
def _float_pid(d, qp, gp, qc, gc): return d, qp + 0.4, gp, qc, gc               # 1.4 must not become 1
def _nan_camid(d, qp, gp, qc, gc): return d, qp, gp, qc, np.r_[gc[:-1], np.nan]
def _text_pid(d, qp, gp, qc, gc): return d, qp, gp.astype(str), qc, gc
def _bool_pid(d, qp, gp, qc, gc): return d, qp > 1, gp, qc, gc
def _complex(d, *lab): return (d + 1j, *lab)                                    # the imaginary part must not vanish
def _torch_complex(d, *lab): return (torch.tensor(d) * (1 + 1j), *lab)
def _text(d, *lab): return (d.astype(str), *lab)
def _boolean(d, *lab): return (d > 0.5, *lab)
def _transposed(d, *lab): return (d.T, *lab)
def _one_d(d, *lab): return (d.ravel(), *lab)
def _no_query(d, qp, gp, qc, gc): return d[:0], qp[:0], gp, qc[:0], gc
def _no_gallery(d, qp, gp, qc, gc): return d[:, :0], qp, gp[:0], qc, gc[:0]

FAULTS = [(_nan, ValueError, 'distmat contains NaN'), (_float_pid, ValueError, 'q_pids must hold integers'),
          (_nan_camid, ValueError, 'g_camids must hold integers'), (_text_pid, TypeError, 'g_pids must hold integers'),
          (_bool_pid, TypeError, 'q_pids must hold integers'), (_complex, TypeError, 'not complex'),
          (_torch_complex, TypeError, 'not complex'), (_text, TypeError, 'distmat must hold real numbers'),
          (_boolean, TypeError, 'distmat must hold real numbers'),
          (_transposed, ValueError, 'must be (len(q_pids), len(g_pids)) = (14, 41)'),
          (_one_d, ValueError, 'must be (len(q_pids), len(g_pids))'),
          (_no_query, ValueError, 'q_pids is empty'), (_no_gallery, ValueError, 'g_pids is empty')]
ENTRY_POINTS = {'evaluate_rank': evaluate_rank, 'evaluate_rank_naive': evaluate_rank_naive,
                'positive_ranks': positive_ranks, 'pair_distances': M.pair_distances,
                'evaluate_single_shot': lambda *a: M.evaluate_single_shot(*a, n_repeats=2),
                'check_rank_inputs': M.check_rank_inputs}


@pytest.mark.parametrize('fault, err, msg', FAULTS, ids=[f[0].__name__ for f in FAULTS])
@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_every_entry_point_refuses_bad_input(entry, fault, err, msg):
    case = random_case(1)
    assert case[0].shape == (14, 41)
    with pytest.raises(err, match=re.escape(msg)): ENTRY_POINTS[entry](*fault(*case))


def test_integer_valued_labels_and_integer_distances_are_accepted():
    d, qp, gp, qc, gc = random_case(5)
    ref = evaluate_rank(d, qp, gp, qc, gc)
    assert_same(evaluate_rank(d, qp.astype(float), gp.astype(np.float32), qc.astype(float), gc), ref)
    assert_same(evaluate_rank_naive(d, torch.tensor(qp, dtype=torch.float64), gp, qc, gc), ref)
    di = np.random.default_rng(0).integers(0, 4, d.shape)                      # integer distances: as float64, ties kept
    for f in (evaluate_rank, evaluate_rank_naive):
        assert_same(f(di, qp, gp, qc, gc), f(di.astype(np.float64), qp, gp, qc, gc))
    assert_same(evaluate_rank(torch.tensor(di), qp, gp, qc, gc), evaluate_rank(di.astype(np.float64), qp, gp, qc, gc))
    db = torch.tensor(np.where(np.isfinite(d), d, 1e3), dtype=torch.bfloat16)  # bfloat16: read as float32
    assert_same(evaluate_rank(db, qp, gp, qc, gc), evaluate_rank(db.float().numpy(), qp, gp, qc, gc))


@pytest.mark.parametrize('max_rank, err', [(0, ValueError), (-3, ValueError), (2.5, TypeError), ('5', TypeError),
                                           (True, TypeError)])
def test_max_rank_must_be_a_positive_integer(max_rank, err):
    case = random_case(1)
    for f in (evaluate_rank, evaluate_rank_naive, lambda *a, **k: M.evaluate_single_shot(*a, n_repeats=1, **k)):
        with pytest.raises(err, match='max_rank must be an integer >= 1'): f(*case, max_rank=max_rank)
    with pytest.raises(err, match='max_rank must be'): metrics_from_ranks(positive_ranks(*case), max_rank)
    assert evaluate_rank(*case, max_rank=np.int64(3)).cmc.shape == (3,)


def test_other_counts_must_be_positive_integers():
    case = random_case(1)
    with pytest.raises(ValueError, match='chunk_size must be an integer >= 1, not 0'): positive_ranks(*case, chunk_size=0)
    with pytest.raises(ValueError, match='n_repeats must be an integer >= 1, not 0'):
        M.evaluate_single_shot(*case, n_repeats=0)
    d, qp, gp, qc, gc = case
    with pytest.raises(ValueError, match='ap_mode'):                            # checked first, not after a match
        evaluate_rank_naive(d, qp + 1000, gp, qc, gc, ap_mode='11point')


def test_features_must_be_real_numbers():
    q, g = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(TypeError, match='qf must hold real numbers'): compute_distance(q + 1j, g)
    with pytest.raises(TypeError, match='qf must hold real numbers'): compute_distance(torch.ones(2, 3) * 1j, g)
    with pytest.raises(TypeError, match='gf must hold real numbers'): compute_distance(q, g.astype(str))
    with pytest.raises(TypeError, match='gf must hold real numbers'): compute_distance(q, g > 0)
    with pytest.raises(ValueError, match='chunk_size must be an integer >= 1'): compute_distance(q, g, chunk_size=0)
    np.testing.assert_array_equal(compute_distance(q.astype(int), g), compute_distance(q, g))


def test_topk_and_multi_query_check_their_labels():
    fs = simulate_features(n_ids=10, seed=0)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    with pytest.raises(ValueError, match='q_pids must hold integers'):
        M.evaluate_topk(fs.q_feats, fs.g_feats, fs.q_pids + 0.5, *lab[1:])
    with pytest.raises(ValueError, match=re.escape(f'q_feats ({len(fs.q_pids) - 1}) and g_feats')):
        M.evaluate_topk(fs.q_feats[:-1], fs.g_feats, *lab)
    with pytest.raises(ValueError, match='k must be an integer >= 1'): M.evaluate_topk(fs.q_feats, fs.g_feats, *lab, k=0)
    with pytest.raises(ValueError, match='g_camids must hold integers'):
        M.evaluate_multi_query(fs.q_feats, fs.q_pids, fs.q_camids, fs.g_feats, fs.g_pids, fs.g_camids + 0.5)
