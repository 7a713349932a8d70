"Tests for hacnn_nbdev.experiments that need no training: plans, results files, tables."
import json, math
from dataclasses import asdict
from hacnn_nbdev import experiments as ex

def _rec(name, seed, setup, r1, mp):
    return dict(key=ex.run_key(name, seed, setup), name=name, seed=seed, setup=json.loads(json.dumps(asdict(setup))),
                metrics={f: dict(rank1=r1, mAP=mp) for f in ('global', 'local', 'joint')})

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
    assert ex.Setup(epochs=3).world_name() == a.world_name()      # the recipe does not change the world

def test_results_file_is_read_back_and_over_budget_runs_are_reported(tmp_path):
    res = tmp_path / 'r.jsonl'
    assert ex.read_results(res) == {}
    s = ex.Setup(n_ids=8)
    res.write_text(json.dumps(_rec('All', 0, s, 50., 40.)) + '\n')
    lines = []
    out = ex.run_plan([('All', 0, s), ('SSA', 0, s)], res, budget_s=-1, log=lines.append)
    assert out[0]['metrics']['joint']['rank1'] == 50. and out[1] is None
    assert len(lines) == 1 and 'NOT RUN' in lines[0] and 'SSA' in lines[0]

def test_tables_show_spread_and_missing_rows():
    s = ex.Setup()
    recs = [_rec('No attention', 0, s, 10., 8.), _rec('No attention', 1, s, 14., 10.), _rec('All', 0, s, 20., 12.), None]
    t = ex.ablation_table(recs, {n: (n, 'joint') for n in ex.TABLE5}, ex.PAPER['table5'])
    assert '| No attention | 84.7 | 65.3 | 12.0 ± 2.0 | 9.0 ± 1.0 | 10.0, 14.0 |' in t
    assert '| SSA | 85.5 | 65.8 | not run' in t and '+6.5 / +8.0' in t
    rows = ex.sweep_rows(recs)
    assert len(rows) == 1 and rows[0]['All']['rank1_mean'] == 20.
    assert '+8.0 | +3.0 | 2 / 1 |' in ex.sweep_table(rows)
