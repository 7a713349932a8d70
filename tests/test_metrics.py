"Tests for hacnn_nbdev.metrics: fast vs naive evaluators, the record type, protocols, hostile input."
import re, subprocess, sys
import numpy as np, pytest, torch
from hacnn_nbdev import metrics as M
from hacnn_nbdev.metrics import (evaluate_rank, evaluate_rank_naive, positive_ranks, metrics_from_ranks,
                                 compute_distance, score_features, simulate_features, random_case, RankResult)


def assert_same(a, b, tol=1e-6):
    np.testing.assert_allclose(a.cmc, b.cmc, atol=tol)
    assert abs(a.mAP - b.mAP) <= tol and abs(a.mINP - b.mINP) <= tol
    assert (a.num_valid, a.num_skipped) == (b.num_valid, b.num_skipped)


# --- exactness ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(300, 420))
def test_fast_equals_naive_on_random_cases(seed):
    case = random_case(seed)
    for mode in ('standard', 'trapezoid'):
        assert_same(evaluate_rank(*case, max_rank=12, ap_mode=mode),
                    evaluate_rank_naive(*case, max_rank=12, ap_mode=mode))
    ref = evaluate_rank_naive(*case, max_rank=12)
    for frac in (-np.inf, 0.1, np.inf):                # whole rows sorted, a mix, candidates always extracted
        assert_same(metrics_from_ranks(positive_ranks(*case, dense_frac=frac), 12), ref)
    np.testing.assert_allclose(evaluate_rank(*case).ap, ref.ap, atol=1e-9)  # NaN where skipped, both


def test_simulated_market_like_case_both_paths():
    fs = simulate_features(n_ids=80, n_query=300, n_gallery=1500, n_distractors=200, n_junk=60, noise=1.2,
                           seed=11)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    d = compute_distance(fs.q_feats, fs.g_feats)
    ref = evaluate_rank_naive(d, *lab)
    for frac in (-np.inf, 0.25, np.inf): assert_same(metrics_from_ranks(positive_ranks(d, *lab, dense_frac=frac)), ref)
    assert_same(evaluate_rank(d.astype(np.float64), *lab), evaluate_rank_naive(d.astype(np.float64), *lab))


def test_hand_computed_values():
    d = np.array([[0.6, 0.1, 0.2, 0.05, 0.5, 0.5]])
    gp, gc = np.array([1, 1, 0, -1, 1, 2]), np.array([1, 0, 2, 1, 1, 2])
    r = evaluate_rank(d, [1], gp, [0], gc, max_rank=4)
    np.testing.assert_array_equal(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx(0.5) and r.mINP == pytest.approx(0.5) and r.num_skipped == 0


def test_torch_inputs_and_skipped_count():
    d, qp, gp, qc, gc = random_case(3)
    a = evaluate_rank(torch.tensor(d), torch.tensor(qp), torch.tensor(gp), torch.tensor(qc), torch.tensor(gc))
    assert_same(a, evaluate_rank(d, qp, gp, qc, gc))
    assert a.num_valid + a.num_skipped == len(qp) and np.isnan(a.ap).sum() == a.num_skipped


def test_tie_rule_is_stable_gallery_order():
    d = np.zeros((1, 4))  # everything ties: order = gallery order
    r = evaluate_rank(d, [1], [2, 1, 3, 1], [0], [1, 1, 1, 1], max_rank=4)
    np.testing.assert_array_equal(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx((1/2 + 2/4) / 2)


def test_ties_with_junk_and_own_camera_images():
    # a junk image and the query's own-camera image tie with the true match at a lower index: neither counts
    d = np.array([[0.3, 0.3, 0.3, 0.3, 0.1]])
    gp, gc = np.array([-1, 1, 2, 1, 2]), np.array([1, 0, 1, 1, 1])
    for frac in (-np.inf, np.inf):
        pr = positive_ranks(d, [1], gp, [0], gc, dense_frac=frac)
        np.testing.assert_array_equal(pr.ranks, [2])   # before it: image 4 (0.1), image 2 (tie, lower index)
    assert_same(evaluate_rank(d, [1], gp, [0], gc), evaluate_rank_naive(d, [1], gp, [0], gc))


def test_agrees_with_common_toolbox_when_installed():
    import importlib.util, os, warnings
    spec = importlib.util.find_spec('torchreid')
    if spec is None: pytest.skip('torchreid (a test requirement) is not installed')
    path = os.path.join(spec.submodule_search_locations[0], 'reid', 'metrics', 'rank.py')
    tr = importlib.util.module_from_spec(importlib.util.spec_from_file_location('_tr_rank', path))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tr.__spec__.loader.exec_module(tr)
    fs = simulate_features(n_ids=60, n_distractors=100, noise=1.1, seed=5)
    d, lab = compute_distance(fs.q_feats, fs.g_feats), (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    cmc, mAP = tr.eval_market1501(d, *lab, 50)[:2]
    r = evaluate_rank(d, *lab)
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-6)
    assert abs(r.mAP - mAP) < 1e-6


# --- the record ------------------------------------------------------------------------------------------

def test_record_carries_fractions_and_prints_percent():
    fs = simulate_features(n_ids=30, n_distractors=20, seed=2)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    r = evaluate_rank(compute_distance(fs.q_feats, fs.g_feats), *lab)
    assert isinstance(r, RankResult)
    cmc, mAP, mINP, n = r                                                 # the contract's four values
    assert (mAP, mINP, n) == (r.mAP, r.mINP, r.num_valid) and cmc is r.cmc
    s = r.scores()
    assert list(s) == ['rank1', 'rank5', 'rank10', 'mAP', 'mINP', 'num_valid', 'num_skipped']
    assert s['rank1'] == r.cmc[0] and s['rank10'] == r.cmc[9] and 0 <= s['mAP'] <= 1
    assert all(type(s[k]) is float for k in ('rank1', 'rank5', 'rank10', 'mAP', 'mINP'))
    assert type(s['num_valid']) is int and type(s['num_skipped']) is int
    p = r.percent()
    assert list(p) == list(s) and p['mAP'] == pytest.approx(100 * s['mAP']) and p['num_valid'] == s['num_valid']
    assert r.summary() == {'R1': p['rank1'], 'R5': p['rank5'], 'R10': p['rank10'], 'mAP': p['mAP'],
                           'mINP': p['mINP'], 'num_valid': p['num_valid'], 'num_skipped': p['num_skipped']}
    assert f"rank1={p['rank1']:.2f}%" in repr(r) and f"mAP={p['mAP']:.2f}%" in str(r)
    assert r.ap.shape == (len(fs.q_pids),) and np.nanmean(r.ap) == pytest.approx(r.mAP)


def test_record_ranks_beyond_the_curve_are_left_out():
    d = np.array([[0.6, 0.1, 0.2, 0.05, 0.5, 0.5]])
    gp, gc = np.array([1, 1, 0, -1, 1, 2]), np.array([1, 0, 2, 1, 1, 2])
    r = evaluate_rank(d, [1], gp, [0], gc, max_rank=4)
    assert set(r.scores()) == {'rank1', 'mAP', 'mINP', 'num_valid', 'num_skipped'}
    assert r.scores((1, 4))['rank4'] == 1.0 and set(r.summary()) == {'R1', 'mAP', 'mINP', 'num_valid',
                                                                      'num_skipped'}
    with pytest.raises(ValueError, match='ranks must be an integer >= 1'): r.scores((0,))
    with pytest.raises(TypeError, match='ranks must be an integer >= 1'): r.percent((1.5,))


def test_every_evaluator_returns_the_one_record():
    case = random_case(7)
    fs = simulate_features(n_ids=10, seed=0)
    for r in (evaluate_rank(*case), evaluate_rank_naive(*case), M.evaluate_single_shot(*case, n_repeats=2),
              score_features(fs.q_feats, fs.g_feats, fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids),
              M.evaluate_multi_query(fs.q_feats, fs.q_pids, fs.q_camids, fs.g_feats, fs.g_pids, fs.g_camids)):
        assert type(r) is RankResult and r.ap is not None and len(r.ap) == r.num_valid + r.num_skipped


# --- score_features ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('to', [np.asarray, torch.as_tensor, lambda a: torch.as_tensor(a).double()])
def test_score_features_is_distances_then_ranking(to):
    fs = simulate_features(n_ids=40, n_distractors=60, n_junk=10, noise=1.0, seed=3)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    r = score_features(to(fs.q_feats), to(fs.g_feats), *lab, max_rank=20)
    ref = evaluate_rank(compute_distance(fs.q_feats, fs.g_feats), *lab, max_rank=20)
    np.testing.assert_array_equal(r.cmc, ref.cmc)
    assert (r.mAP, r.mINP, r.num_valid, r.num_skipped) == (ref.mAP, ref.mINP, ref.num_valid, ref.num_skipped)


def test_score_features_checks_features_against_labels():
    fs = simulate_features(n_ids=10, seed=0)
    lab = (fs.q_pids, fs.g_pids, fs.q_camids, fs.g_camids)
    with pytest.raises(ValueError, match=re.escape(f'qf ({len(fs.q_pids) - 1} rows) and gf')):
        score_features(fs.q_feats[:-1], fs.g_feats, *lab)
    with pytest.raises(ValueError, match='same D'): score_features(fs.q_feats, fs.g_feats[:, :3], *lab)
    with pytest.raises(TypeError, match='gf must hold real numbers'):
        score_features(fs.q_feats, fs.g_feats * 1j, *lab)
    with pytest.raises(ValueError, match='g_camids must hold integers'):   # labels first, before any distance
        score_features(None, None, *lab[:3], fs.g_camids + 0.5)


# --- the other protocols ------------------------------------------------------------------------------------

def test_compute_distance_chunks_metrics_and_errors():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((37, 16)), rng.standard_normal((53, 16))
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
    msq = score_features(many.q_feats, many.g_feats, many.q_pids, many.g_pids, many.q_camids, many.g_camids)
    assert M.evaluate_multi_query(*margs).mAP > msq.mAP
    with pytest.raises(ValueError, match='pool'): M.evaluate_multi_query(*args, pool='median')


def test_single_shot_matches_market_protocol_when_one_image_per_identity():
    rng = np.random.default_rng(0)
    d, gp, qp = rng.random((15, 25)), np.arange(1, 26), rng.integers(1, 26, 15)
    lab = (qp, gp, np.zeros(15), np.ones(25))
    assert_same(M.evaluate_single_shot(d, *lab, n_repeats=2), evaluate_rank(d, *lab))
    ss = M.evaluate_single_shot(*random_case(7), n_repeats=4)
    assert ss.mAP == pytest.approx(ss.mINP)  # one true match per draw


@pytest.mark.parametrize('seed', range(20))
def test_single_shot_equals_naive_on_the_drawn_images(seed):
    d, qp, gp, qc, gc = random_case(seed)
    pick = M.single_shot_draw(qp, gp, qc, gc, np.random.default_rng(seed))
    for i in range(len(qp)):
        cols = np.sort(pick[i][pick[i] >= 0])
        if not (gp[cols] == qp[i]).any(): continue
        sub = (d[i:i + 1, cols], qp[i:i + 1], gp[cols], qc[i:i + 1], gc[cols])
        assert_same(M.evaluate_single_shot(*sub, n_repeats=2, max_rank=5), evaluate_rank_naive(*sub, max_rank=5))


def test_metrics_loads_no_plotting_library_and_neither_does_training():
    code = ('import sys, hacnn_nbdev.metrics, hacnn_nbdev.train; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


# --- hostile input: one check (check_rank_inputs) at every public entry point ---------------------------------

def _nan(d, *lab):
    d = d.astype(np.float64)
    d[-1, -1] = np.nan                                                          # the last column of the last row
    return (d, *lab)
def _float_pid(d, qp, gp, qc, gc): return d, qp + 0.4, gp, qc, gc               # 1.4 must not become 1
def _nan_camid(d, qp, gp, qc, gc): return d, qp, gp, qc, np.r_[gc[:-1], np.nan]
def _text_pid(d, qp, gp, qc, gc): return d, qp, gp.astype(str), qc, gc
def _bool_pid(d, qp, gp, qc, gc): return d, qp > 1, gp, qc, gc
def _complex_pid(d, qp, gp, qc, gc): return d, qp + 0j, gp, qc, gc
def _complex(d, *lab): return (d + 1j, *lab)                                    # the imaginary part must not vanish
def _torch_complex(d, *lab): return (torch.tensor(d) * (1 + 1j), *lab)
def _text(d, *lab): return (d.astype(str), *lab)
def _boolean(d, *lab): return (d > 0.5, *lab)
def _huge_int(d, *lab): return (np.full(d.shape, 2 ** 60, np.int64), *lab)
def _transposed(d, *lab): return (d.T, *lab)
def _one_d(d, *lab): return (d.ravel(), *lab)
def _no_query(d, qp, gp, qc, gc): return d[:0], qp[:0], gp, qc[:0], gc
def _no_gallery(d, qp, gp, qc, gc): return d[:, :0], qp, gp[:0], qc, gc[:0]

FAULTS = [(_nan, ValueError, 'distmat contains NaN'), (_float_pid, ValueError, 'q_pids must hold integers'),
          (_nan_camid, ValueError, 'g_camids must hold integers'), (_text_pid, TypeError, 'g_pids must hold integers'),
          (_bool_pid, TypeError, 'q_pids must hold integers'), (_complex_pid, TypeError, 'q_pids must hold integers'),
          (_complex, TypeError, 'not complex'),
          (_torch_complex, TypeError, 'not complex'), (_text, TypeError, 'distmat must hold real numbers'),
          (_boolean, TypeError, 'distmat must hold real numbers'), (_huge_int, ValueError, 'beyond ±2**53'),
          (_transposed, ValueError, 'must be (len(q_pids), len(g_pids)) = (14, 41)'),
          (_one_d, ValueError, 'must be (len(q_pids), len(g_pids))'),
          (_no_query, ValueError, 'q_pids is empty'), (_no_gallery, ValueError, 'g_pids is empty')]
ENTRY_POINTS = {'evaluate_rank': evaluate_rank, 'evaluate_rank_naive': evaluate_rank_naive,
                'positive_ranks': positive_ranks,
                'evaluate_single_shot': lambda *a: M.evaluate_single_shot(*a, n_repeats=2),
                'check_rank_inputs': M.check_rank_inputs}


@pytest.mark.parametrize('fault, err, msg', FAULTS, ids=[f[0].__name__ for f in FAULTS])
@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_every_entry_point_refuses_bad_input(entry, fault, err, msg):
    case = random_case(1)
    assert case[0].shape == (14, 41)
    with pytest.raises(err, match=re.escape(msg)) as e: ENTRY_POINTS[entry](*fault(*case))
    assert '\n' not in str(e.value)                                             # one line


def _refused(err, msg, f, *a, **k):
    "f(*a, **k) fails with `err`, a one-line message containing `msg` (the argument at fault)."
    with pytest.raises(err, match=re.escape(msg)) as e: f(*a, **k)
    assert '\n' not in str(e.value)


def test_hostile_empty_inputs():
    d, qp, gp, qc, gc = random_case(1)
    for f in (evaluate_rank, evaluate_rank_naive, positive_ranks, M.evaluate_single_shot):
        _refused(ValueError, 'q_pids is empty', f, d[:0], qp[:0], gp, qc[:0], gc)
        _refused(ValueError, 'g_pids is empty', f, d[:, :0], qp, gp[:0], qc, gc[:0])
    fs = simulate_features(n_ids=5, seed=0)
    _refused(ValueError, 'q_pids is empty', score_features, fs.q_feats[:0], fs.g_feats, fs.q_pids[:0],
             fs.g_pids, fs.q_camids[:0], fs.g_camids)
    _refused(ValueError, 'D >= 1', compute_distance, np.ones((2, 0)), np.ones((3, 0)))
    assert compute_distance(np.ones((0, 4)), np.ones((3, 4))).shape == (0, 3)   # no query: no distances


def test_hostile_integer_and_text_distances():
    d, qp, gp, qc, gc = random_case(5)
    di = np.random.default_rng(0).integers(0, 4, d.shape)                      # integers: exact as float64, ties kept
    for f in (evaluate_rank, evaluate_rank_naive):
        assert_same(f(di, qp, gp, qc, gc), f(di.astype(np.float64), qp, gp, qc, gc))
    assert_same(evaluate_rank(torch.tensor(di), qp, gp, qc, gc), evaluate_rank(di.astype(float), qp, gp, qc, gc))
    assert_same(evaluate_rank(di.astype(np.uint8), qp, gp, qc, gc), evaluate_rank(di, qp, gp, qc, gc))
    big = np.full(d.shape, 2 ** 53, np.int64)                                  # the largest accepted magnitude
    assert evaluate_rank(big - di, qp, gp, qc, gc).num_valid > 0
    _refused(ValueError, 'distmat holds integers beyond ±2**53', evaluate_rank, big + 1, qp, gp, qc, gc)
    _refused(TypeError, 'distmat must hold real numbers', evaluate_rank, d.astype(str), qp, gp, qc, gc)
    _refused(TypeError, 'distmat must hold real numbers', evaluate_rank_naive, d.astype(object), qp, gp, qc, gc)


@pytest.mark.parametrize('max_rank, err', [(0, ValueError), (-3, ValueError), (2.5, TypeError), ('5', TypeError),
                                           (True, TypeError)])
def test_hostile_max_rank(max_rank, err):
    case = random_case(1)
    fs = simulate_features(n_ids=5, seed=0)
    for f in (evaluate_rank, evaluate_rank_naive, lambda *a, **k: M.evaluate_single_shot(*a, n_repeats=1, **k)):
        _refused(err, 'max_rank must be an integer >= 1', f, *case, max_rank=max_rank)
    _refused(err, 'max_rank must be', metrics_from_ranks, positive_ranks(*case), max_rank)
    _refused(err, 'max_rank must be', score_features, fs.q_feats, fs.g_feats, fs.q_pids, fs.g_pids,
             fs.q_camids, fs.g_camids, max_rank=max_rank)
    assert evaluate_rank(*case, max_rank=np.int64(3)).cmc.shape == (3,)


def test_hostile_nan_distances():
    d, qp, gp, qc, gc = random_case(2)
    for where in ((0, 0), (-1, -1)):
        dn = d.astype(np.float64)
        dn[where] = np.nan
        for f in (evaluate_rank, evaluate_rank_naive, lambda *a: M.evaluate_single_shot(*a, n_repeats=1),
                  positive_ranks):
            _refused(ValueError, 'distmat contains NaN', f, dn, qp, gp, qc, gc)
            _refused(ValueError, 'distmat contains NaN', f, torch.tensor(dn), qp, gp, qc, gc)


def test_nan_is_found_wherever_it_is():
    # the fast evaluator finds NaN in the rows it reads: a valid image, the query's own camera, junk, a skipped row
    d = np.ones((3, 6))
    qp, gp, qc, gc = [1, 2, 9], [1, 1, 2, -1, 0, 2], [0, 0, 0], [1, 0, 1, 1, 1, 1]
    for where in ((0, 4), (0, 1), (0, 3), (2, 0), (1, 5)):       # valid, own camera, junk, skipped query, match
        dn = d.copy()
        dn[where] = np.nan
        for frac in (-np.inf, np.inf):
            _refused(ValueError, 'distmat contains NaN', positive_ranks, dn, qp, gp, qc, gc, dense_frac=frac)
        _refused(ValueError, 'distmat contains NaN', evaluate_rank, dn, qp, gp, qc, gc)
    fs = simulate_features(n_ids=5, seed=0)
    qf = fs.q_feats.copy()
    qf[0, 0] = np.nan                                            # NaN features give NaN distances
    _refused(ValueError, 'distmat contains NaN', score_features, qf, fs.g_feats, fs.q_pids, fs.g_pids,
             fs.q_camids, fs.g_camids)


def test_hostile_fractional_labels():
    d, qp, gp, qc, gc = random_case(5)
    ref = evaluate_rank(d, qp, gp, qc, gc)
    assert_same(evaluate_rank(d, qp.astype(float), gp.astype(np.float32), qc.astype(float), gc), ref)  # 3.0 is 3
    assert_same(evaluate_rank_naive(d, torch.tensor(qp, dtype=torch.float64), gp, qc, gc), ref)
    for name, i in (('q_pids', 0), ('g_pids', 1), ('q_camids', 2), ('g_camids', 3)):
        lab = [qp, gp, qc, gc]
        lab[i] = lab[i] + 0.4                                                   # 1.4 must not be read as 1
        for f in (evaluate_rank, evaluate_rank_naive, lambda *a: M.evaluate_single_shot(*a, n_repeats=1)):
            _refused(ValueError, f'{name} must hold integers (3.0 is accepted), not', f, d, *lab)


def test_hostile_complex_inputs():
    d, qp, gp, qc, gc = random_case(5)
    for f in (evaluate_rank, evaluate_rank_naive, lambda *a: M.evaluate_single_shot(*a, n_repeats=1)):
        _refused(TypeError, 'distmat must hold real numbers, not complex', f, d + 0j, qp, gp, qc, gc)
        _refused(TypeError, 'g_camids must hold integers', f, d, qp, gp, qc, gc + 0j)
    q, g = np.ones((2, 3)), np.ones((4, 3))
    _refused(TypeError, 'qf must hold real numbers', compute_distance, q + 1j, g)
    _refused(TypeError, 'qf must hold real numbers', compute_distance, torch.ones(2, 3) * 1j, g)
    _refused(TypeError, 'gf must hold real numbers', compute_distance, q, g.astype(str))
    _refused(TypeError, 'gf must hold real numbers', compute_distance, q, g > 0)
    _refused(TypeError, 'feats must hold real numbers', M.pool_by_identity, q * 1j, [1, 1], [0, 0])
    np.testing.assert_array_equal(compute_distance(q.astype(int), g), compute_distance(q, g))


def test_other_options_are_checked():
    case = random_case(1)
    _refused(TypeError, 'dense_frac must be a real number', positive_ranks, *case, dense_frac='half')
    _refused(ValueError, 'n_repeats must be an integer >= 1, not 0', M.evaluate_single_shot, *case, n_repeats=0)
    _refused(ValueError, 'chunk_size must be an integer >= 1', compute_distance, np.ones((2, 3)), np.ones((4, 3)),
             chunk_size=0)
    d, qp, gp, qc, gc = case
    _refused(ValueError, 'ap_mode', evaluate_rank_naive, d, qp + 1000, gp, qc, gc, ap_mode='11point')  # first
    _refused(ValueError, 'ap_mode', evaluate_rank, *case, ap_mode='11point')
    _refused(ValueError, 'no query has a valid true match', evaluate_rank, d, qp + 1000, gp, qc, gc)


def test_bfloat16_and_float16_distances_are_read_exactly():
    d, qp, gp, qc, gc = random_case(5)
    db = torch.tensor(np.where(np.isfinite(d), d, 1e3), dtype=torch.bfloat16)
    assert_same(evaluate_rank(db, qp, gp, qc, gc), evaluate_rank(db.float().numpy(), qp, gp, qc, gc))
    dh = np.where(np.isfinite(d), d, 1e3).astype(np.float16)
    assert_same(evaluate_rank(dh, qp, gp, qc, gc), evaluate_rank_naive(dh.astype(np.float64), qp, gp, qc, gc))


def test_multi_query_checks_its_labels():
    fs = simulate_features(n_ids=10, seed=0)
    with pytest.raises(ValueError, match='g_camids must hold integers'):
        M.evaluate_multi_query(fs.q_feats, fs.q_pids, fs.q_camids, fs.g_feats, fs.g_pids, fs.g_camids + 0.5)
