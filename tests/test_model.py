"""Model zoo: PaddleSeg parameter names, parameter counts and MACs of the paper, any input size."""
import numpy as np
import paddle
import pytest

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.checkpoint import load_checkpoint, load_weights
from ddrnet.train.model import build_model, count_macs

# paper (Hong et al. 2021), 19 classes, no aux head: parameters and MACs at 1024x2048
PAPER = {"ddrnet23_slim": (5.7e6, 36.3e9), "ddrnet23": (20.1e6, 143.1e9), "ddrnet39": (32.3e6, 281.2e9)}


def n_params(model):
    return sum(int(p.size) for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER))
def test_param_count_matches_paper(name):
    assert n_params(build_model(name)) == pytest.approx(PAPER[name][0], rel=0.01)


def test_macs_match_paper():
    # full resolution for slim; 23 and 39 at 512x1024, where every conv's output is exactly 1/4
    assert count_macs(build_model("ddrnet23_slim")) == pytest.approx(PAPER["ddrnet23_slim"][1], rel=0.01)
    for name in ("ddrnet23", "ddrnet39"):
        macs = 4 * count_macs(build_model(name), (1, 3, 512, 1024))
        assert macs == pytest.approx(PAPER[name][1], rel=0.01)


@pytest.mark.parametrize("hw", [(64, 128), (67, 131), (97, 161), (33, 40)])
def test_eval_forward_any_size(hw):
    model = build_model("ddrnet23_slim")
    model.eval()
    with paddle.no_grad():
        out = model(paddle.randn([2, 3, *hw]))
    assert list(out.shape) == [2, 19, *hw]


def test_train_forward_returns_main_and_aux():
    model = build_model("ddrnet23_slim", num_classes=7, aux_head=True)
    model.train()
    outs = model(paddle.randn([2, 3, 64, 96]))
    assert [list(o.shape) for o in outs] == [[2, 7, 64, 96]] * 2
    model_no_aux = build_model("ddrnet23_slim", num_classes=7)
    model_no_aux.train()
    assert len(model_no_aux(paddle.randn([1, 3, 64, 64]))) == 1


def _random_state(model, seed=0):
    rng = np.random.RandomState(seed)
    state = {}
    for key, value in model.state_dict().items():
        a = rng.randn(*value.shape).astype("float32")
        if key.endswith("_variance"):
            a = np.abs(a) * 0.5 + 0.5
        elif len(value.shape) == 4:
            a *= np.sqrt(2.0 / np.prod(value.shape[1:]))
        state[key] = paddle.to_tensor(a)
    return state


def test_same_names_shapes_and_logits_as_paddleseg():
    """PaddleSeg's own DDRNet_23 (the reference's model): same keys, shapes and logits."""
    paddleseg_models = pytest.importorskip("paddleseg.models")
    for aux in (False, True):
        ref = paddleseg_models.DDRNet_23(num_classes=19, enable_auxiliary_loss=aux)
        ours = build_model("ddrnet23", aux_head=aux)
        ref_state, our_state = ref.state_dict(), ours.state_dict()
        assert sorted(ref_state) == sorted(our_state)
        assert all(list(ref_state[k].shape) == list(our_state[k].shape) for k in ref_state)
    state = _random_state(ref)
    ref.set_state_dict(state)
    ours.set_state_dict(state)
    ref.eval()
    ours.eval()
    x = paddle.randn([1, 3, 128, 256])
    with paddle.no_grad():
        expected, got = ref(x)[0].numpy(), ours(x).numpy()
    assert np.abs(expected - got).max() <= 1e-5 * np.abs(expected).max()


def test_paddleseg_weights_without_aux_load_into_aux_model(tmp_path):
    """The reference's released weights have no aux_head.* keys: exactly those may be missing."""
    plain = build_model("ddrnet23_slim")
    path = str(tmp_path / "model.pdparams")
    paddle.save(plain.state_dict(), path)
    model, meta = load_checkpoint(path, model_name="ddrnet23_slim", aux_head=True)[:2]
    assert meta["aux_head"] and model.has_aux_head
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy())


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = str(tmp_path / "slim.pdparams")
    paddle.save(build_model("ddrnet23_slim").state_dict(), path)
    with pytest.raises(DDRNetError, match="slim.pdparams: weights do not fit"):
        load_weights(build_model("ddrnet23"), path)
    with pytest.raises(DDRNetError, match="no state.json"):
        load_checkpoint(path)


@pytest.mark.parametrize("shape,size", [((2, 19, 32, 32), (256, 256)), ((1, 4, 5, 7), (33, 21)),
                                        ((2, 3, 1, 1), (4, 4)), ((1, 2, 9, 17), (72, 136))])
def test_training_upsample_equals_the_interpolation_op(shape, size):
    """CPU training takes the heads' final upsample as two matrix products (a faster backward): the same
    values and gradients as Paddle's bilinear interpolation, at any size."""
    import paddle.nn.functional as F

    from ddrnet.train.model import _upsample_to_input

    x = paddle.randn(list(shape))
    x.stop_gradient = False
    like = paddle.zeros([1, 1, *size])
    expected = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)
    got = _upsample_to_input(x, like)
    grad = paddle.randn(expected.shape)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(paddle.grad(got, x, grad)[0].numpy(), paddle.grad(expected, x, grad)[0].numpy(),
                               rtol=1e-5, atol=1e-4)
