"Tests for hacnn_nbdev.viz: input handling, contract checks on the model's maps, figures, the input spec."
import numpy as np, pytest, torch, matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import torch.nn.functional as F
from torch import nn
from PIL import Image
from hacnn_nbdev import viz
from hacnn_nbdev.core import InputSpec

SP = InputSpec(mean=(0.5, 0.45, 0.4), std=(0.2, 0.25, 0.3))   # 160 x 64, not the default statistics

class StandIn(nn.Module):
    "A contract-following stand-in for HACNN.attention_maps; `break_` makes it break one rule."
    def __init__(self, break_=None): super().__init__(); self.c = nn.Conv2d(3, 4, 3, padding=1); self.break_ = break_
    def attention_maps(self, x):
        out = []
        for s in (4, 8, 16):
            f = F.avg_pool2d(self.c(x), s)
            lv = dict(spatial=torch.sigmoid(f[:, :1]), soft=0.5 + 0.5 * torch.sigmoid(f),
                      boxes=torch.tensor([[.1, k/4, .9, (k+1)/4] for k in range(4)]).expand(x.shape[0], 4, 4))
            if self.break_ == 'range': lv['spatial'] = lv['spatial'] * 4 - 1  # reaches below 0
            if self.break_ == 'key': del lv['boxes']
            if self.break_ == 'shape': lv['spatial'] = lv['spatial'][:, 0]
            out.append(lv)
        return out

@pytest.fixture(autouse=True)
def _close_figs():
    yield; plt.close('all')

def test_inputs_of_every_kind_give_the_same_model_input(tmp_path):
    arr = (np.random.RandomState(0).rand(100, 40, 3) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path/'a.jpg', quality=100); Image.fromarray(arr).save(tmp_path/'a.png')
    x_arr, pic = viz.prepare_image(arr, SP)
    for src in (tmp_path/'a.png', str(tmp_path/'a.png'), Image.fromarray(arr), arr.astype(np.float32) / 255):
        x, _ = viz.prepare_image(src, SP)
        assert x.shape == (1, 3, 160, 64) and torch.allclose(x, x_arr, atol=1e-2)
    np.testing.assert_allclose(viz.to_picture(x_arr, SP), pic, atol=1e-5)        # the picture is what the model sees
    x, _ = viz.prepare_image(Image.fromarray(arr).convert('L'), SP)              # grey pictures become RGB
    assert x.shape == (1, 3, 160, 64)
    x, _ = viz.prepare_image(Image.fromarray(arr).convert('RGBA'), InputSpec(120, 40))  # alpha dropped, other sizes
    assert x.shape == (1, 3, 120, 40)

def test_the_picture_is_the_data_modules_denormalise():
    from hacnn_nbdev.loaders import denormalise
    x = torch.randn(3, 16, 8) * 3
    want = denormalise(x, SP.mean, SP.std).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(viz.to_picture(x, SP), want)
    np.testing.assert_array_equal(viz.to_picture(x[None], SP), want)
    assert viz.to_picture(x).min() >= 0 and viz.to_picture(x).max() <= 1

def test_bad_inputs_are_refused_with_a_message(tmp_path):
    from hacnn_nbdev.data import BadImageError
    with pytest.raises(ValueError, match=r'\(3,H,W\) or \(1,3,H,W\)'): viz.prepare_image(torch.zeros(2, 3, 8, 4), SP)
    with pytest.raises(ValueError, match='RGB'): viz.prepare_image(np.zeros((8, 4, 4), np.uint8), SP)
    with pytest.raises(TypeError, match='cannot read'): viz.prepare_image(None, SP)
    with pytest.raises(FileNotFoundError): viz.prepare_image(tmp_path/'missing.png', SP)
    (tmp_path/'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    with pytest.raises(BadImageError, match='broken.jpg'): viz.prepare_image(tmp_path/'broken.jpg', SP)
    with pytest.raises(ValueError, match='at least one image'): viz.attention_grid(StandIn(), [], SP)
    with pytest.raises(ValueError, match="'spatial' or 'soft'"): viz.attention_arrays(StandIn(), torch.zeros(1, 3, 32, 16), which='hard')

@pytest.mark.parametrize('break_,err,msg', [('range', ValueError, r'in \[0,1\]'), ('key', KeyError, 'no .boxes.'), ('shape', ValueError, 'has shape')])
def test_a_model_that_breaks_the_contract_fails_clearly(break_, err, msg):
    with pytest.raises(err, match=msg): viz.attention_arrays(StandIn(break_), torch.randn(2, 3, 32, 16) * 5)

def test_attention_arrays_keeps_the_training_mode():
    m = StandIn().train()
    lv = viz.attention_arrays(m, torch.randn(3, 3, 32, 16))
    assert m.training and len(lv) == 3
    assert lv[0]['spatial'].shape == (3, 8, 4) and lv[0]['boxes'].shape == (3, 4, 4)
    soft = viz.attention_arrays(m, torch.randn(3, 3, 32, 16), which='soft')
    assert all((l['spatial'] >= 0.5).all() and (l['spatial'] <= 1).all() for l in soft)

def test_grid_layout_and_contents():
    imgs = [(np.random.rand(160, 64, 3) * 255).astype(np.uint8) for _ in range(3)]
    fig = viz.attention_grid(StandIn(), imgs, SP, per_row=2)
    axes = np.array(fig.axes).reshape(2, 14)
    assert sum(len(a.patches) for a in axes.flat) == 3 * 3 * 4     # 3 images × 3 levels × 4 regions
    assert all(len(a.images) == 0 for a in axes[1, 7:])              # the unused slot stays empty
    fig = viz.plot_attention(StandIn(), torch.randn(3, 160, 64), spec=SP, stretch=False)
    assert len(fig.axes) == 7 and fig.axes[2].get_title() == 'SA 1'

def test_boxes_outside_the_image_are_clipped_not_refused():
    fig, ax = plt.subplots(); ax.imshow(np.zeros((16, 8, 3)))
    ps = viz.draw_regions(ax, [[-0.5, -0.2, 0.5, 0.3], [0.6, 0.9, 1.4, 1.3]], 16, 8)
    assert len(ps) == 2 and all(p.get_clip_on() for p in ps)

def _small_hacnn(**kw):
    from hacnn_nbdev.model import HACNN
    torch.manual_seed(0)
    return HACNN(num_classes=5, widths=(8, 16, 24), feat_dim=16, **kw)

def test_real_model_untrained_and_ablated():
    for kw in ({}, dict(spatial_attention=False, channel_attention=False, hard_attention=False)):
        m = _small_hacnn(**kw)
        lv = viz.attention_arrays(m, torch.randn(2, 3, 96, 32))
        assert [l['spatial'].shape for l in lv] == [(2, 24, 8), (2, 12, 4), (2, 6, 2)]
        assert all(l['boxes'].shape == (2, 4, 4) for l in lv)
        m.input_spec = InputSpec(96, 32)                                   # the model's own input spec is used
        fig = viz.plot_attention(m, np.zeros((200, 90, 3), np.uint8))
        assert len(fig.axes) == 7 and fig.axes[0].images[0].get_array().shape == (96, 32, 3)

def test_the_checkpoints_input_spec_travels_to_the_picture(tmp_path):
    from hacnn_nbdev.checkpoint import save_checkpoint, load_model, model_checkpoint
    m = _small_hacnn().eval()
    spec = InputSpec(96, 32, (.5, .5, .5), (.2, .2, .2))
    model = load_model(save_checkpoint(model_checkpoint(m, input_spec=spec), tmp_path/'a.pt'))
    assert model.input_spec == spec and not model.training
    arr = (np.random.RandomState(1).rand(150, 60, 3) * 255).astype(np.uint8)
    fig = viz.plot_attention(model, arr)
    assert fig.axes[0].images[0].get_array().shape == (96, 32, 3)             # drawn at the checkpoint's size
    seen = []
    class Recorder(StandIn):
        def attention_maps(self, x): seen.append(x); return super().attention_maps(x)
    rec = Recorder(); rec.input_spec = spec
    viz.plot_attention(rec, arr)
    torch.testing.assert_close(seen[0], viz.prepare_image(arr, spec)[0])        # the model's mean and std, not ImageNet's
    assert not torch.allclose(seen[0], viz.prepare_image(arr, InputSpec(96, 32))[0])
    fig = viz.plot_attention(model, arr, spec=InputSpec(64, 32))               # an explicit spec overrides
    assert fig.axes[0].images[0].get_array().shape == (64, 32, 3)
