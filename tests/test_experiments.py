"Tests for hacnn_nbdev.experiments that need no training: setups, keys, plans, results files, tables."
import importlib.util, json
from dataclasses import asdict
from pathlib import Path
import pytest
from hacnn_nbdev import experiments as ex
from hacnn_nbdev.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
# a line of benchmarks/results/experiments.jsonl as the first harness wrote it (flat setup, scores in %)
LEGACY = {"key": "{\"batch_size\": 32, \"epochs\": 10, \"feat_dim\": 128, \"generator\": \"hacnn_nbdev.synthetic/2\", "
                 "\"height\": 96, \"jitter\": 1.0, \"lr\": 0.002, \"n_ids\": 100, \"name\": \"No attention\", "
                 "\"schedule\": \"cosine\", \"seed\": 0, \"threads\": 1, \"width\": 48, \"widths\": \"16,32,48\", "
                 "\"world_kw\": {}, \"world_seed\": 0}",
          "name": "No attention", "seed": 0, "flags": ex.CONFIGS['No attention'],
          "setup": {"n_ids": 100, "jitter": 1.0, "world_seed": 0, "world_kw": {}, "widths": "16,32,48", "feat_dim": 128,
                    "epochs": 10, "batch_size": 32, "lr": 0.002, "schedule": "cosine", "height": 96, "width": 48,
                    "threads": 1},
          "generator": "hacnn_nbdev.synthetic/2", "train_seconds": 200.0, "seconds": 210.0, "final_loss": 1.0,
          "metrics": {f: {"rank1": 31.25, "mAP": 25.0} for f in ("global", "local", "joint")}}


def _rec(name, seed, setup, r1, mp):
    return dict(format=ex.RECORD_FORMAT, key=ex.run_key(name, seed, setup), name=name, seed=seed,
                setup=json.loads(json.dumps(asdict(setup))),
                metrics={f: dict(rank1=r1, mAP=mp, mINP=mp / 2) for f in ('global', 'local', 'joint')})


def test_setup_extends_trainconfig_without_restating_it():
    assert set(ex.BASE.recipe) <= {f for f in TrainConfig.__dataclass_fields__}
    cfg = ex.BASE.vary(random_erasing=0.5).train_config(ex.CONFIGS['SSA'], 3, 'w', 'o')
    assert (cfg.random_erasing, cfg.seed, cfg.spatial_attention, cfg.hard_attention) == (0.5, 3, True, False)
    assert 'random_erasing' not in ex.BASE.recipe                               # BASE untouched
    with pytest.raises(ValueError, match='seed'): ex.BASE.vary(seed=1)          # each run sets its own seed
    with pytest.raises(ValueError, match='epoch'): ex.BASE.vary(epoch=1)        # not a TrainConfig field
    with pytest.raises(ValueError, match='procs'): ex.BASE.vary(procs=0)
    with pytest.raises(ValueError, match='epochs'): ex.BASE.vary(epochs=0)      # TrainConfig refuses it, now


def test_keys_of_recorded_runs_stay_the_same():
    assert ex.run_key('No attention', 0, ex.BASE) == LEGACY['key']
    assert ex.run_key('All', 0, ex.BASE.vary(procs=2)) != ex.run_key('All', 0, ex.BASE)  # two processes: another run
    rec = ex._upgrade(LEGACY)
    assert rec['setup'] == json.loads(json.dumps(asdict(ex.BASE))) and rec['overrides'] == ex.CONFIGS['No attention']
    assert rec['metrics']['joint'] == {'rank1': 0.3125, 'mAP': 0.25} and 'flags' not in rec
    assert ex._upgrade(rec) is rec


def test_committed_results_are_read_under_the_plans_keys():
    res = ex.read_results(REPO / 'benchmarks/results/experiments.jsonl')
    plan = ex.paper_plan(ex.BASE, seeds=(0, 1), sweep_seeds=(0, 1))
    recs = [res.get(ex.run_key(*p)) for p in plan]
    assert all(recs) and all(0 <= r['metrics']['joint']['rank1'] <= 1 for r in recs)


def test_plan_covers_tables_then_sweep_without_duplicates():
    plan = ex.paper_plan(ex.BASE)
    assert len(plan) == 20 and len({ex.run_key(*p) for p in plan}) == 20
    assert [p[0] for p in plan[:7]] == ex.TABLE5 + ['w/o CAIL']
    assert {p[2].jitter for p in plan[14:]} == {0.0, 2.0, 3.0}
    for n in ex.TABLE5 + ['w/o CAIL']: assert n in ex.CONFIGS


def test_world_names_tell_worlds_apart():
    a, b = ex.Setup(jitter=1.0), ex.Setup(jitter=2.0)
    c = ex.Setup(world_kw=dict(clutter=0.5))
    assert len({a.world_name(), b.world_name(), c.world_name()}) == 3
    assert ex.BASE.vary(epochs=3).world_name() == a.world_name()      # the recipe does not change the world


def test_results_file_is_read_back_and_over_budget_runs_are_reported(tmp_path):
    res = tmp_path / 'r.jsonl'
    assert ex.read_results(res) == {}
    s = ex.BASE.vary(n_ids=8)
    res.write_text(json.dumps(_rec('All', 0, s, .5, .4)) + '\n')
    lines = []
    out = ex.run_plan([('All', 0, s), ('SSA', 0, s)], res, budget_s=-1, log=lines.append)
    assert out[0]['metrics']['joint']['rank1'] == .5 and out[1] is None
    assert len(lines) == 1 and 'NOT RUN' in lines[0] and 'SSA' in lines[0]


def test_tables_show_spread_and_missing_rows():
    s = ex.BASE
    recs = [_rec('No attention', 0, s, .10, .08), _rec('No attention', 1, s, .14, .10), _rec('All', 0, s, .20, .12), None]
    t = ex.ablation_table(recs, {n: (n, 'joint') for n in ex.TABLE5}, ex.PAPER['table5'])
    assert '| No attention | 84.7 | 65.3 | 12.0 ± 2.0 | 9.0 ± 1.0 | 10.0, 14.0 |' in t
    assert '| SSA | 85.5 | 65.8 | not run' in t and '+6.5 / +8.0' in t
    rows = ex.sweep_rows(recs)
    assert len(rows) == 1 and rows[0]['All']['rank1_mean'] == 20.
    assert '+8.0 | +3.0 | 2 / 1 |' in ex.sweep_table(rows)
    assert '| 1 | No attention | 0,1 | 12.0 ± 2.0 | 9.0 ± 1.0 | 4.5 ± 0.5 |' in ex.runs_table(recs)
    assert '| 1 | All | 0 | +10.0 | +4.0 | +2.0 |' in ex.gains_table(recs, {'All': 'No attention'})


def test_paired_gains_pair_by_seed():
    a = [dict(seed=s, rank1=.5 + s / 100) for s in (2, 0, 1)]
    b = [dict(seed=s, rank1=.5) for s in (0, 2)]
    assert [(g['seed'], round(g['rank1'], 6)) for g in ex.paired_gains(a, b, ('rank1',))] == [(0, 0.0), (2, 2.0)]
    assert ex.pm([1., 3.]) == '2.0 ± 1.0' and ex.pm([1., 3.], ddof=1) == '2.0 ± 1.4' and ex.pm([5.], ddof=1) == '5.0'


def test_demo_ablation_reads_its_recorded_runs_as_harness_records():
    spec = importlib.util.spec_from_file_location('_demo_ablation', REPO / 'benchmarks/demo_ablation.py')
    da = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(da)
    recs = da.legacy_records(REPO / 'benchmarks/results/demo_ablation.json')
    assert len(recs) == len(da.RUNS) == 29
    assert set(recs) == {ex.run_key(*da.plan_entry(n), da.LEGACY_GENERATOR) for n in da.RUNS}
    label, seed, setup = da.plan_entry('jitter1.5_none_x2_s1')
    assert (label, seed, setup.jitter, setup.procs, setup.recipe['widths']) == ('none_x2', 1, 1.5, 2, '64,128,192')
    t = ex.gains_table(list(recs.values()), {'ha_e24': 'none_e24'})
    assert '| 1.5 | ha_e24 | mean of 3 | +1.0 | +1.3 | +2.3 |' in t   # as recorded in demo_ablation.json
