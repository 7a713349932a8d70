"""hacnn_nbdev.train beyond the notebook: exact resumption, refusal of code-carrying checkpoints, NaN stop,
wrong inputs, the CLI, signals, and DistributedDataParallel with two CPU (gloo) processes."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
import hacnn_nbdev.train as T
from hacnn_nbdev.checkpoint import CheckpointError

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
# tiny model and images (80x32 instead of the paper's 160x64) keep each epoch well under a second
TINY = dict(widths='16,32,48', batch_size=8, height=80, width=32, progress=False, threads=1)
TINY_CLI = ['--widths', '16,32,48', '--batch_size', 8, '--height', 80, '--width', 32, '--no-progress', '--threads', 1]


def make_tiny_world(root, n_ids=6, per_id=6, seed=0):
    "A Market-1501-layout world of two-colour people: n_ids train ids, n_ids test ids, 64x32 JPEGs."
    root, rng = Path(root), np.random.default_rng(seed)
    colours = rng.integers(0, 255, (2 * n_ids + 1, 2, 3))
    splits = (('bounding_box_train', range(1, n_ids + 1), per_id, (1, 2)),
              ('query', range(n_ids + 1, 2 * n_ids + 1), 1, (1,)),
              ('bounding_box_test', range(n_ids + 1, 2 * n_ids + 1), 2, (2,)))
    for sub, ids, n, cams in splits:
        (root / sub).mkdir(parents=True, exist_ok=True)
        for pid in ids:
            for j in range(n):
                a = np.zeros((64, 32, 3)); a[:32], a[32:] = colours[pid, 0], colours[pid, 1]
                a = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(root / sub / f'{pid:04d}_c{cams[j % len(cams)]}s1_{j:06d}_00.jpg')
    return root


@pytest.fixture(scope='module')
def world(tmp_path_factory): return make_tiny_world(tmp_path_factory.mktemp('world'))


def run(*args, timeout=120, **kw):
    return subprocess.run([str(BIN / 'hacnn_train'), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


def weights(path): return torch.load(path, weights_only=True)['model']


def assert_same(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k].double(), b[k].double(), atol=tol, rtol=0, msg=f'{k} differs')


# ---- nothing lost -------------------------------------------------------------------------------------

def test_resume_equals_straight_run(world, tmp_path):
    T.train(root=world, out=tmp_path / 'straight', epochs=2, flip=True, **TINY)
    T.train(root=world, out=tmp_path / 'resumed', epochs=1, flip=True, **TINY)
    ck1 = torch.load(tmp_path / 'resumed/last.pt', weights_only=True)
    assert ck1['epoch'] == 1 and ck1['format'] == T.CKPT_FORMAT and ck1['model_kwargs']['num_classes'] == 6
    T.train(root=world, out=tmp_path / 'resumed', epochs=2, resume=True, **TINY)
    a, b = (torch.load(tmp_path / r / 'last.pt', weights_only=True) for r in ('straight', 'resumed'))
    assert a['epoch'] == b['epoch'] == 2
    assert_same(a['model'], b['model'])
    assert_same(a['optimizer']['state'][0], b['optimizer']['state'][0])
    la, lb = (T.read_history(tmp_path / r) for r in ('straight', 'resumed'))
    assert [r['epoch'] for r in lb] == [1, 2]
    assert [r['loss'] for r in la] == pytest.approx([r['loss'] for r in lb], abs=1e-6)
    assert (tmp_path / 'resumed/curves.png').stat().st_size > 1000


class StopAfter(T.StopFlag):
    "A stop request that arrives after `n` batches, as a Ctrl-C would."
    n = 3
    def __init__(self): super().__init__(); self.calls = 0
    @property
    def requested(self):
        self.calls += 1
        return self.calls > StopAfter.n
    @requested.setter
    def requested(self, v): pass


def test_stop_mid_epoch_saves_and_resumes_exactly(world, tmp_path, monkeypatch):
    T.train(root=world, out=tmp_path / 'straight', epochs=2, **TINY)
    with monkeypatch.context() as m:
        m.setattr(T, 'StopFlag', StopAfter)
        T.train(root=world, out=tmp_path / 'stopped', epochs=2, **TINY)  # 4 batches per epoch: stops in epoch 1
    ck = torch.load(tmp_path / 'stopped/last.pt', weights_only=True)
    assert (ck['epoch'], ck['step_in_epoch']) == (0, 3)
    T.train(root=world, out=tmp_path / 'stopped', epochs=2, resume=True, **TINY)
    assert_same(weights(tmp_path / 'straight/last.pt'), weights(tmp_path / 'stopped/last.pt'))
    la, lb = (T.read_history(tmp_path / r) for r in ('straight', 'stopped'))
    assert [r['loss'] for r in la] == pytest.approx([r['loss'] for r in lb], abs=1e-6)


def test_sigint_saves_and_exits_cleanly(world, tmp_path):
    out = tmp_path / 'run'
    p = subprocess.Popen([str(BIN / 'hacnn_train'), '--root', world, '--out', out, '--epochs', '500', *map(str, TINY_CLI)], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / 'metrics.jsonl').exists() and time.time() - t0 < 60: time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    so, se = p.communicate(timeout=60)
    assert p.returncode == 0, se
    assert 'stopped by SIGINT' in so and '--resume' in so
    ck = torch.load(out / 'last.pt', weights_only=True)
    assert 1 <= ck['epoch'] < 500
    assert not list(out.glob('.*.tmp'))  # no half-written checkpoint left behind


def test_refuses_code_carrying_checkpoint(world, tmp_path):
    out, flag = tmp_path / 'run', tmp_path / 'pwned'
    out.mkdir()

    class Evil:
        def __reduce__(self): return (os.system, (f'touch {flag}',))
    torch.save({'format': T.CKPT_FORMAT, 'model': Evil()}, out / 'last.pt')
    with pytest.raises(CheckpointError, match='refused to load'):
        T.train(root=world, out=out, epochs=1, resume=True, **TINY)
    r = run('--root', world, '--out', out, '--epochs', 1, '--resume', *TINY_CLI)
    assert r.returncode == 2 and 'refused to load' in r.stderr and 'Traceback' not in r.stderr
    assert not flag.exists()  # the payload never ran


def test_nan_loss_stops_and_keeps_last_good_checkpoint(world, tmp_path, monkeypatch):
    out = tmp_path / 'run'
    T.train(root=world, out=out, epochs=1, **TINY)
    good = weights(out / 'last.pt')
    real, calls = T.hacnn_loss, []

    def poisoned(g, l, p, s=0.0):
        loss, parts = real(g, l, p, s); calls.append(1)
        return (loss * float('nan') if len(calls) == 2 else loss), parts
    monkeypatch.setattr(T, 'hacnn_loss', poisoned)
    with pytest.raises(T.NonFiniteLossError, match=r'loss became nan at epoch 2, batch 2.*last good state \(epoch 1\).*--resume'):
        T.train(root=world, out=out, epochs=3, resume=True, **TINY)
    ck = torch.load(out / 'last.pt', weights_only=True)
    assert ck['epoch'] == 1
    assert_same(good, ck['model'], tol=0)
    assert len(T.read_history(out)) == 1


def test_nan_from_divergence(world, tmp_path):
    with pytest.raises(T.NonFiniteLossError, match='the loss became (nan|inf).*no checkpoint had been written yet.*Lower the learning rate'):
        T.train(root=world, out=tmp_path / 'run', epochs=3, lr=1e30, optimizer='sgd', **TINY)
    assert not (tmp_path / 'run/last.pt').exists()


# ---- wrong inputs -------------------------------------------------------------------------------------

def test_no_data(tmp_path):
    with pytest.raises(T.TrainError, match='pass --root'): T.train(out=tmp_path / 'r', **TINY)
    with pytest.raises(T.TrainError, match='does not exist.*hacnn_synth'): T.train(root=tmp_path / 'nowhere', out=tmp_path / 'r', **TINY)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(T.TrainError, match='bounding_box_train'): T.train(root=tmp_path / 'empty', out=tmp_path / 'r', **TINY)
    r = run('--root', tmp_path / 'nowhere', '--out', tmp_path / 'r')
    assert r.returncode == 2 and 'hacnn_train: error: no data at' in r.stderr and 'Traceback' not in r.stderr


def test_too_few_images_for_a_batch(world, tmp_path):
    with pytest.raises(T.TrainError, match='lower --batch_size'):
        T.train(root=world, out=tmp_path / 'r', **{**TINY, 'batch_size': 64})


def test_out_holding_another_run(world, tmp_path):
    out = tmp_path / 'run'
    T.train(root=world, out=out, epochs=1, **TINY)
    before = (out / 'last.pt').stat().st_mtime_ns
    with pytest.raises(T.TrainError, match='already holds a training run.*--resume.*another --out'):
        T.train(root=world, out=out, epochs=1, **TINY)
    assert (out / 'last.pt').stat().st_mtime_ns == before  # nothing overwritten
    with pytest.raises(T.TrainError, match=r"--widths '32,64,96' \(the run has '16,32,48'\)"):
        T.train(root=world, out=out, epochs=2, resume=True, **{**TINY, 'widths': '32,64,96'})
    T.train(root=world, out=out, epochs=1, resume=True, **TINY)  # already done: nothing to do, no error
    assert torch.load(out / 'last.pt', weights_only=True)['epoch'] == 1


def test_checkpoint_for_another_number_of_classes(world, tmp_path):
    other = make_tiny_world(tmp_path / 'other', n_ids=8)
    out = tmp_path / 'run'
    T.train(root=other, out=out, epochs=1, **TINY)
    with pytest.raises(T.TrainError, match='trained for 8 identities.*has 6 training identities.*another --out'):
        T.train(root=world, out=out, epochs=2, resume=True, **TINY)


def test_bad_options():
    with pytest.raises(ValueError, match='three positive integers'): T.TrainConfig(widths='16,32')
    with pytest.raises(T.ConfigError, match="--optimizer 'lbfgs' is not one of: adam, sgd"): T.TrainConfig(optimizer='lbfgs')


# every numeric option is checked before data is read or a file written: (options, the option named)
BAD_OPTIONS = [(['--epochs', 0], '--epochs'), (['--epochs', -3], '--epochs'), (['--batch_size', 0], '--batch_size'),
               (['--batch-size', -4], '--batch_size'), (['--batch_size', 1], '--batch_size'),
               (['--feat_dim', 0], '--feat_dim'), (['--n_regions', 0], '--n_regions'),
               (['--label_smoothing', 2], '--label_smoothing'), (['--lr', -1], '--lr'),
               (['--schedule', 'linear'], '--schedule'), (['--milestones', '20,10', '--schedule', 'multistep'], '--milestones'),
               (['--widths', '1,2'], '--widths'), (['--random_erasing', 1.5], '--random_erasing'),
               (['--epochs', 'ten'], '--epochs'), (['--config', 'nope'], '--config'), (['--bogus', 1], 'unrecognized')]

@pytest.mark.parametrize('opts,named', BAD_OPTIONS)
def test_cli_bad_option_is_one_line_exit_2_and_touches_nothing(tmp_path, opts, named):
    out = tmp_path / 'run'
    r = run('--root', tmp_path / 'nowhere', '--out', out, *opts)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.startswith('hacnn_train: error: ') and named in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()                                   # validated before anything was written


def test_cli_device_without_gpu_and_debug(tmp_path):
    if torch.cuda.is_available(): pytest.skip('a GPU is present')
    r = run('--root', tmp_path, '--out', tmp_path / 'run', '--device', 'cuda')
    assert r.returncode == 2 and 'no CUDA GPU' in r.stderr and 'Traceback' not in r.stderr
    r = run('--root', tmp_path, '--out', tmp_path / 'run', '--device', 'cuda', '--debug')
    assert r.returncode != 0 and 'Traceback' in r.stderr


def test_config_file_round_trip_and_flags_override(world, tmp_path):
    T.train(root=world, out=tmp_path / 'a', epochs=1, flip=True, **TINY)
    r = run('--config', tmp_path / 'a/config.json', '--out', tmp_path / 'b', '--epochs', 1, '--no-flip')
    assert r.returncode == 0, r.stderr
    a, b = (json.loads((tmp_path / x / 'config.json').read_text()) for x in 'ab')
    assert {k for k in a if a[k] != b[k]} == {'out', 'flip'} and b['flip'] is False


def test_named_recipes():
    assert T.recipe('paper') == T.TrainConfig()
    z = T.recipe('torchreid')
    assert (z.optimizer, z.base_lr, z.epochs, z.milestone_list, z.flip) == ('sgd', 0.03, 300, [150, 225], True)
    assert T.recipe('demo').widths == '32,64,96'


# ---- nothing lost (2): the output folder -------------------------------------------------------------

def test_out_with_foreign_files_is_refused(world, tmp_path):
    out = tmp_path / 'mine'; out.mkdir()
    for n in ('config.json', 'best.pt'): (out / n).write_text('my own file')
    with pytest.raises(T.TrainError, match='holds config.json, best.pt but no training run'):
        T.train(root=world, out=out, epochs=1, **TINY)
    assert (out / 'config.json').read_text() == 'my own file'
    f = tmp_path / 'afile'; f.write_text('x')
    with pytest.raises(T.TrainError, match='is a file'): T.train(root=world, out=f, epochs=1, **TINY)


def test_second_run_into_the_same_out_is_locked_out(world, tmp_path):
    out = tmp_path / 'run'
    with T.RunLock(out):
        r = run('--root', world, '--out', out, '--epochs', 1, *TINY_CLI)
        assert r.returncode == 2 and 'in use by another training run' in r.stderr and str(os.getpid()) in r.stderr
    assert not out.exists()                                   # the folder made for the lock went with it
    out.mkdir()
    (out / '.lock').write_text(json.dumps({'pid': 999_999_999, 'host': __import__('socket').gethostname()}))
    T.train(root=world, out=out, epochs=1, **TINY)             # a dead process's lock is taken over
    assert not (out / '.lock').exists() and (out / 'last.pt').exists()


def test_unscorable_test_split_is_refused_before_training(tmp_path):
    w = make_tiny_world(tmp_path / 'w')
    for p in (w / 'bounding_box_test').iterdir(): p.unlink()
    with pytest.raises(T.TrainError, match='0 gallery images'):
        T.train(root=w, out=tmp_path / 'r', epochs=1, eval_every=1, **TINY)
    assert not (tmp_path / 'r' / 'last.pt').exists()


def test_epoch_is_saved_before_evaluation(world, tmp_path, monkeypatch):
    def broken(self): raise OSError('the gallery disk went away')
    monkeypatch.setattr(T.Trainer, 'evaluate', broken)
    with pytest.raises(OSError): T.train(root=world, out=tmp_path / 'r', epochs=1, eval_every=1, **TINY)
    assert torch.load(tmp_path / 'r/last.pt', weights_only=True)['epoch'] == 1   # the epoch is not lost


def test_one_identity_is_refused(tmp_path):
    w = make_tiny_world(tmp_path / 'w')
    for p in (w / 'bounding_box_train').iterdir():
        if not p.name.startswith('0001_'): p.unlink()
    from hacnn_nbdev.data import TooFewIdentitiesError
    with pytest.raises(TooFewIdentitiesError, match='holds 1 identity'): T.train(root=w, out=tmp_path / 'r', **TINY)
    r = run('--root', w, '--out', tmp_path / 'r', *TINY_CLI)
    assert r.returncode == 2 and 'holds 1 identity' in r.stderr and not (tmp_path / 'r').exists()


def test_skip_unreadable(tmp_path):
    w = make_tiny_world(tmp_path / 'w')
    bad = sorted((w / 'bounding_box_train').iterdir())[0]
    bad.write_bytes(b'not a jpeg')
    r = run('--root', w, '--out', tmp_path / 'a', '--epochs', 1, *TINY_CLI)
    assert r.returncode == 1 and bad.name in r.stderr and 'Traceback' not in r.stderr, r.stderr
    r = run('--root', w, '--out', tmp_path / 'b', '--epochs', 1, '--skip-unreadable', *TINY_CLI)
    assert r.returncode == 0 and bad.name in r.stderr, r.stderr       # trained, and the bad file was named


def test_resume_refuses_nan_weights_bare_tensors_and_misfits(world, tmp_path):
    out = tmp_path / 'run'
    T.train(root=world, out=out, epochs=1, **TINY)
    ck = torch.load(out / 'last.pt', weights_only=True)
    bad = {**ck, 'model': {**ck['model'], 'stem.0.weight': ck['model']['stem.0.weight'] * float('nan')}}
    torch.save(bad, out / 'last.pt')
    with pytest.raises(CheckpointError, match="non-finite weights.*'stem.0.weight'"):
        T.train(root=world, out=out, epochs=2, resume=True, **TINY)
    torch.save(torch.zeros(3), out / 'last.pt')
    r = run('--root', world, '--out', out, '--epochs', 2, '--resume', *TINY_CLI)
    assert r.returncode == 2 and 'bare tensor' in r.stderr and 'Traceback' not in r.stderr
    ck['model']['global_cls.weight'] = ck['model']['global_cls.weight'][:, :3]
    torch.save(ck, out / 'last.pt')
    r = run('--root', world, '--out', out, '--epochs', 2, '--resume', *TINY_CLI)
    assert r.returncode == 2 and 'does not fit' in r.stderr and len(r.stderr.splitlines()) == 1


def test_tensorboard_option(world, tmp_path):
    pytest.importorskip('tensorboard', reason='the tensorboard package is optional')
    T.train(root=world, out=tmp_path / 'r', epochs=1, tensorboard=True, **TINY)
    assert any((tmp_path / 'r/tensorboard').iterdir())


def test_cli_help():
    r = run('--help')
    assert r.returncode == 0
    for opt in ('--root', '--out', '--epochs', '--seed', '--resume', '--widths', '--no-hard_attention', '--eval_every', '--amp',
                '--config', 'torchreid', 'Sec. 4'):
        assert opt in r.stdout, opt
    r = subprocess.run([str(BIN / 'hacnn_demo'), '--help'], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and '--threads' in r.stdout and '--root' in r.stdout


def test_identity_sampler_and_eval_via_cli(world, tmp_path):
    out = tmp_path / 'run'
    r = run('--root', world, '--out', out, '--epochs', 1, *TINY_CLI, '--sampler', 'identity', '--num_instances', 2, '--eval_every', 1)
    assert r.returncode == 0, r.stderr
    rec = T.read_history(out)[0]
    for k in ('loss', 'acc', 'acc_global', 'acc_local', 'lr', 'time', 'images_per_s', 'rank1', 'mAP', 'mINP'): assert k in rec
    assert 0 <= rec['rank1'] <= 1 and 0 <= rec['mAP'] <= 1
    assert torch.load(out / 'best.pt', weights_only=True)['epoch'] == 1  # the best (only) evaluated epoch
    assert (out / 'curves.png').exists() and json.loads((out / 'config.json').read_text())['sampler'] == 'identity'


# ---- DistributedDataParallel: 2 CPU processes over gloo ------------------------------------------------

DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
import hacnn_nbdev.train as T
root, out = sys.argv[1], sys.argv[2]
info, device = T.init_distributed('cpu')   # the job's process group, as `train` sets it up
t = T.Trainer(T.TrainConfig(root=root, out=out, epochs=2, widths='16,32,48', batch_size=8, height=80, width=32,
                            progress=False, threads=1), None, info, device)
t.fit()
torch.save({k: v.detach().clone() for k, v in t.model.state_dict().items()}, f'{out}/rank{t.dist.rank}.pt')
dist.destroy_process_group()
"""


def test_ddp_two_cpu_processes_keep_replicas_identical(world, tmp_path):
    script = tmp_path / 'ddp.py'; script.write_text(DDP_SCRIPT)
    out = tmp_path / 'ddp'; out.mkdir()
    r = subprocess.run([str(BIN / 'torchrun'), '--standalone', '--nproc_per_node', '2', str(script), str(world), str(out)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'cpu x 2 process(es)' in r.stdout
    r0, r1 = torch.load(out / 'rank0.pt'), torch.load(out / 'rank1.pt')
    assert_same(r0, r1, tol=0)  # identical replicas: weights and BN statistics
    assert_same(r0, weights(out / 'last.pt'), tol=0)  # rank 0 wrote the checkpoint
    hist = T.read_history(out)
    assert [h['epoch'] for h in hist] == [1, 2] and hist[0]['images_per_s'] > 0
    # each process saw half of every batch of 8: the job trained on 4 batches of 8 = 32 of the 36 images per epoch
    assert [h['images'] for h in hist] == [32, 32]
    ck = torch.load(out / 'last.pt', weights_only=True)
    assert ck['world_size'] == 2 and len(ck['rng']['ranks']) == 2


# ---- the hard-attention FCs' own learning rate -----------------------------------------------------------

def test_theta_lr_mult_groups_and_resume(world, tmp_path):
    from hacnn_nbdev.model import HACNN
    cfg = T.TrainConfig(theta_lr_mult=10, widths='16,32,48')
    m = HACNN(**cfg.model_kwargs(6)); names = {id(p): n for n, p in m.named_parameters()}
    g = T.param_groups(m, cfg)
    assert {names[id(p)] for p in g[1]['params']} == {n for n in names.values() if '.hard.fc.' in n}
    assert len(g[1]['params']) == 6 and len(g[0]['params']) + 6 == len(names)          # 3 levels x (weight, bias); nothing lost
    assert [pg['lr'] for pg in T.make_optimizer(g, cfg).param_groups] == pytest.approx([5e-4, 5e-3])
    assert len(T.param_groups(m, T.TrainConfig())) == len(names)                         # factor 1: the paper's single group
    T.train(root=world, out=tmp_path / 'straight', epochs=2, theta_lr_mult=10, **TINY)
    T.train(root=world, out=tmp_path / 'resumed', epochs=1, theta_lr_mult=10, **TINY)
    T.train(root=world, out=tmp_path / 'resumed', epochs=2, resume=True, theta_lr_mult=10, **TINY)
    a, b = (torch.load(tmp_path / r / 'last.pt', weights_only=True) for r in ('straight', 'resumed'))
    assert_same(a['model'], b['model'])
    assert [pg['lr'] for pg in b['optimizer']['param_groups']] == pytest.approx([5e-4, 5e-3])   # the group survives the resume


def test_kill_9_during_a_save_leaves_no_orphan_for_long(tmp_path):
    "A writer killed outright leaves its temporary file; the next save of the same checkpoint removes it."
    from hacnn_nbdev.checkpoint import save_checkpoint, load_checkpoint
    script = ("import sys, torch\nfrom hacnn_nbdev.checkpoint import save_checkpoint\n"
              "x = {'w': torch.randn(40_000_000)}\n"
              "while True: save_checkpoint(x, sys.argv[1])\n")
    p = subprocess.Popen([sys.executable, '-c', script, str(tmp_path / 'last.pt')], env=ENV)
    deadline = time.time() + 60
    while not list(tmp_path.glob('.last.pt.*.tmp')) and time.time() < deadline: time.sleep(0.01)
    p.kill(); p.wait()                                           # SIGKILL, mid-write
    assert list(tmp_path.glob('.last.pt.*.tmp')), 'the writer was killed outside a write'
    save_checkpoint({'epoch': 1}, tmp_path / 'last.pt')
    assert sorted(q.name for q in tmp_path.iterdir()) == ['last.pt'] and load_checkpoint(tmp_path / 'last.pt')['epoch'] == 1
