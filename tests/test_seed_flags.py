"""Every flag of the seed's (PaddleSeg 2.8's) train.py / val.py / predict.py / export.py lands on the same
option of the matching `ddrnet` subcommand (parsing only; test_train.py and test_eval_modes.py run them)."""
import pytest

from ddrnet.cli import build_parser
from ddrnet.runtime.errors import DDRNetError


def parse(*argv):
    argv = list(argv)
    return build_parser(argv).parse_args(argv)


def test_train_flags_set_the_config_keys_paddleseg_sets():
    from ddrnet.train.cmd_train import build_config

    args = parse("train", "--config", "ddrnet23_cityscapes_1024x1024_120k.yml", "--save_dir", "out", "--iters", "7",
                 "--batch_size", "2", "--learning_rate", "0.02", "--num_workers", "3", "--save_interval", "5",
                 "--log_iters", "1", "--keep_checkpoint_max", "4", "--seed", "11", "--precision", "fp16",
                 "--amp_level", "O2", "--opts", "model.enable_auxiliary_loss=True", "loss.coef=[1,0.4]",
                 "--resume_model", "out/iter_000005", "--do_eval", "--use_vdl")
    cfg = build_config(args)
    assert (cfg["iters"], cfg["batch_size"], cfg["lr_scheduler"]["learning_rate"], cfg["num_workers"]) == (7, 2, 0.02, 3)
    assert (cfg["save_interval"], cfg["eval_interval"], cfg["log_iters"], cfg["keep_checkpoint_max"]) == (5, 5, 1, 4)
    assert (cfg["seed"], cfg["precision"], cfg["amp_level"]) == (11, "fp16", "O2")
    assert cfg["model"]["aux_head"] is True and cfg["loss"]["coef"] == [1, 0.4]
    assert (args.save_dir, args.resume_model, args.do_eval, args.use_vdl) == ("out", "out/iter_000005", True, True)


def test_eval_flags_choose_paddleseg_modes_over_the_configs_test_config(tmp_path):
    from ddrnet.cmd_eval import eval_mode

    args = parse("eval", "--model_path", "w.pdparams", "--aug_eval", "--scales", "0.75", "1.25", "--flip_vertical",
                 "--is_slide", "--crop_size", "512", "256", "--stride", "384", "192", "--num_workers", "2")
    mode = eval_mode(args, {"test_config": {"aug_eval": True, "scales": 2.0, "flip_horizontal": True}})
    assert args.weights == "w.pdparams"
    assert mode.scales == [0.75, 1.25] and mode.flips == [(False, False), (False, True)]  # the flags win
    assert (mode.slide, mode.crop_wh, mode.stride_wh) == (True, (512, 256), (384, 192))
    from_config = eval_mode(parse("eval", "--model", "m"), {"test_config": {"aug_eval": True, "scales": 2.0}})
    assert from_config.scales == [2.0] and not from_config.plain
    assert eval_mode(parse("eval", "--model", "m"), {}).plain
    with pytest.raises(DDRNetError, match="--auc_roc: not supported"):
        eval_mode(parse("eval", "--model", "m", "--auc_roc"), {})


def test_predict_and_export_aliases():
    predict = parse("predict", "--model_path", "w", "--image_path", "img.png", "--save_dir", "out", "--aug_pred",
                    "--scales", "0.5", "1.0", "--flip_horizontal", "--config", "c.yml")
    assert (predict.weights, predict.input, predict.out, predict.config) == ("w", "img.png", "out", "c.yml")
    assert predict.aug and predict.scales == [0.5, 1.0] and predict.flip_horizontal
    export = parse("export", "--model_path", "w", "--save_dir", "out", "--input_shape", "1", "3", "512", "1024",
                   "--output_op", "softmax", "--config", "c.yml")
    assert (export.weights, export.out, export.input_shape_list, export.output_op) == ("w", "out", [1, 3, 512, 1024],
                                                                                      "softmax")


def test_predict_reads_a_paddleseg_image_list(tmp_path):
    from ddrnet.cmd_predict import list_images

    (tmp_path / "a.png").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("a.png a_label.png\n\nsub/b.jpg\n")
    assert list_images(str(listing)) == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.jpg")]
