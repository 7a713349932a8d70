"""hacnn_nbdev.demo beyond the notebook: the demo as a DDP job of two CPU processes is interrupted by Ctrl-C
(SIGINT to the terminal's process group), saves, reports where it stopped, and resumes; a worker's failure
surfaces as a clear error; `cli_args` round-trips through hacnn_train's parser; the command explains itself,
runs a tiny world in seconds and answers mistakes in one line."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from hacnn_nbdev.checkpoint import load_checkpoint
from hacnn_nbdev.cli import parse_dataclass
from hacnn_nbdev.demo import cli_args, demo
from hacnn_nbdev.synthetic import make_world
from hacnn_nbdev.train import RECIPES, TrainConfig, TrainError

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
WORLD = dict(seed=0, n_ids=16, imgs_per_id=(4, 6))
TINY = dict(widths='16,32,48', height=80, width=32, batch_size=8)
SCRIPT = """
import sys
from hacnn_nbdev.demo import demo
s = demo(sys.argv[1], sys.argv[2], threads=2, procs=2, world={world!r}, progress=False, log=print,
         epochs=int(sys.argv[3]), **{tiny!r})
sys.exit(130 if s is None else 0)
"""


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('world'); make_world(root, **WORLD); return root


def start_and_stop(world, tmp_path, send):
    "Start a long demo (2 DDP processes), wait for its first checkpoint, stop it with `send(popen)`; return (log, out, script)."
    script = tmp_path / 'run.py'; script.write_text(SCRIPT.format(world=WORLD, tiny=TINY)); out = tmp_path / 'demo'
    p = subprocess.Popen([sys.executable, str(script), str(world), str(out), '500'], env=ENV, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (out / 'last.pt').exists() and p.poll() is None and time.time() - t0 < 120: time.sleep(0.2)
    assert p.poll() is None, p.communicate()[0][-3000:]
    time.sleep(1.0)
    send(p)
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 130, log[-3000:]
    assert 'Traceback' not in log, log[-3000:]
    assert 'run the demo again to continue' in log
    ck = load_checkpoint(out / 'last.pt')
    assert 1 <= ck['epoch'] < 500 and ck['world_size'] == 2
    assert not (out / 'metrics.json').exists()
    left = subprocess.run(['pgrep', '-f', str(out)], capture_output=True, text=True).stdout.split()
    assert not left, f'worker processes left running: {left}'
    return log, out, script, ck['epoch']


def test_demo_ctrl_c_saves_and_resumes(world, tmp_path):
    log, out, script, stopped = start_and_stop(world, tmp_path, lambda p: os.killpg(p.pid, signal.SIGINT))  # Ctrl-C: the whole group
    assert 'stopped by SIGINT' in log
    # run again with a nearer end: it resumes from the saved epoch and finishes
    r = subprocess.run([sys.executable, str(script), str(world), str(out), str(stopped + 1)], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f'epochs {stopped + 1}..{stopped + 1}' in r.stdout
    m = json.loads((out / 'metrics.json').read_text())
    assert m['epochs'] == stopped + 1 and m['procs'] == 2
    assert [h['epoch'] for h in load_checkpoint(out / 'last.pt')['history']] == list(range(1, stopped + 2))


def test_demo_sigterm_to_the_demo_alone_reaches_the_workers(world, tmp_path):
    log, *_ = start_and_stop(world, tmp_path, lambda p: p.send_signal(signal.SIGTERM))  # `kill PID`: the demo process only
    assert 'stopped by SIGTERM' in log


def test_demo_worker_failure_is_a_clear_error(world, tmp_path):
    out = tmp_path / 'demo'
    demo(world, out, threads=1, procs=1, world=WORLD, progress=False, epochs=1, **TINY)
    with pytest.raises(TrainError, match='delete that folder'):  # the workers refuse: the folder holds another recipe
        demo(world, out, threads=2, procs=2, world=WORLD, progress=False, log=lambda m: None, epochs=1, **{**TINY, 'widths': '32,64,96'})


def test_cli_args_skip_defaults_and_spell_booleans():
    cfg = TrainConfig(root='r', epochs=2, progress=False, flip=True, spatial_attention=False)
    assert cli_args(cfg) == ['--root', 'r', '--epochs', '2', '--flip', '--no-spatial_attention', '--no-progress']
    assert cli_args(TrainConfig()) == []


@pytest.mark.parametrize('cfg', [TrainConfig(**RECIPES[name], root='r', out='o') for name in RECIPES] +
                         [TrainConfig(lr=1e-5, random_erasing=0.25, sampler='identity', num_instances=8, amp='off',
                                      tensorboard=True, resume=True, cross_attention=False, milestones='10,20')])
def test_cli_args_round_trip_through_hacnn_trains_parser(cfg):
    assert parse_dataclass(TrainConfig, cli_args(cfg), 'hacnn_train')[0] == cfg


def test_cli_args_refuse_none_where_the_default_is_not(monkeypatch):
    cfg = TrainConfig()
    monkeypatch.setattr(cfg, 'out', None)
    with pytest.raises(ValueError, match='out=None'): cli_args(cfg)


def _cli(*args, timeout=120):
    code = 'from hacnn_nbdev.demo import demo_main; demo_main()'
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def test_demo_cli_help():
    r = _cli('--help')
    assert r.returncode == 0, r.stderr
    for opt in ('--root', '--out', '--n_ids', '--threads', '--procs', '--epochs', '--seed', '--debug'): assert opt in r.stdout


def test_demo_cli_tiny_world_in_seconds(tmp_path):
    r = _cli('--root', tmp_path / 'w', '--out', tmp_path / 'out', '--n-ids', 16, '--epochs', 1, '--procs', 1,
             '--threads', 1, '--widths', '16,32,48', '--no-progress', timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'trained:' in r.stdout and 'untrained:' in r.stdout
    m = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert m['world']['params']['n_ids'] == 16 and m['epochs'] == 1
    assert m['command'].startswith('hacnn_demo --root') and '--n-ids 16' in m['command']


@pytest.mark.parametrize('args, says', [
    (['--n-ids', 1], '--n_ids must be'),                        # out of make_world's range
    (['--n-ids', 4], 'fewer than one batch'),                   # too small to train on
    (['--widths', '1,2'], '--widths must be three positive integers'),
    (['--root', '{file}'], 'is a file'),                        # --root is a file
    (['--out', '{file}'], 'is a file'),                         # --out is a file
])
def test_demo_cli_mistakes_are_one_line_and_status_2(tmp_path, args, says):
    f = tmp_path / 'a_file'
    f.write_text('x')
    args = [str(a).replace('{file}', str(f)) for a in args]
    base = {'--root': tmp_path / 'w', '--out': tmp_path / 'out'}
    r = _cli(*args, *[w for k, v in base.items() if k not in args for w in (k, v)], '--epochs', 1, '--procs', 1)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('hacnn_demo: error:') and says in err[0], r.stderr
    assert 'Traceback' not in r.stderr
