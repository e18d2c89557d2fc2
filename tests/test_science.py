"""What the textbook teaches, measured: calibration metrics, loss=bce, the loss zoo, predicting a user's images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import fit_only, mlflow_runs, run_cli, weights
from softmax_lab.jobs.train_job import train
from softmax_lab.maths.metrics import EvalMetrics, confidence_bin

# ---------------------------------------------------------------------------------------------
# Calibration


def test_calibration_on_a_hand_computed_example():
    # two samples, three classes: confidences 0.7 (right) and 0.5 (wrong); bins of width 1/15
    P = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2]], dtype=torch.float64)
    O, y = P.log(), torch.tensor([0, 0])
    m = EvalMetrics(3)
    m.update(O, y, torch.tensor(0.0))
    r = m.compute()
    assert r["acc"] == 0.5
    assert r["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    # bins: 0.7 in (10/15, 11/15] with accuracy 1, 0.5 in (7/15, 8/15] with accuracy 0
    assert r["ece"] == pytest.approx((abs(1 - 0.7) + abs(0 - 0.5)) / 2)
    brier = ((0.7 - 1) ** 2 + 0.2**2 + 0.1**2 + (0.3 - 1) ** 2 + 0.5**2 + 0.2**2) / 2
    assert r["brier"] == pytest.approx(brier)
    entropy = -sum(p * math.log(p) for p in (0.7, 0.2, 0.1, 0.3, 0.5, 0.2)) / 2
    assert r["entropy"] == pytest.approx(entropy)
    assert confidence_bin(torch.tensor([0.05, 0.07, 0.999, 1.0])).tolist() == [0, 1, 14, 14]


def test_calibration_agrees_with_independent_computations():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

    g = torch.Generator().manual_seed(0)
    m = EvalMetrics(10, confusion=True)
    Os, ys = [], []
    for _ in range(4):  # several batches, as validation feeds them
        O, y = torch.randn(300, 10, generator=g) * 3, torch.randint(0, 10, (300,), generator=g)
        m.update(O, y, torch.tensor(1.0))
        Os.append(O)
        ys.append(y)
    O, y = torch.cat(Os), torch.cat(ys)
    r = m.compute()
    P = O.softmax(1)
    assert r["ece"] == pytest.approx(MulticlassCalibrationError(10, n_bins=15)(P, y).item(), abs=1e-6)
    assert r["nll"] == pytest.approx(F.cross_entropy(O, y).item(), rel=1e-6)
    assert r["acc"] == pytest.approx(MulticlassAccuracy(10, average="micro")(O, y).item())
    assert r["brier"] == pytest.approx(((P - F.one_hot(y, 10)) ** 2).sum(1).mean().item(), rel=1e-6)
    assert r["confusion"].sum().item() == 1200 and r["confusion"].diag().sum().item() == round(r["acc"] * 1200)
    per_class = r["confusion"].diag() / r["confusion"].sum(1)
    assert r["per_class_acc"] == pytest.approx(per_class.tolist())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_calibration_sums_stay_float32_when_a_true_precision_casts_the_module(dtype):
    """precision=bf16-true / 16-true cast every floating state of the module: 10,000 confidences summed in bfloat16
    stop growing (a test ECE of 0.53 instead of 0.04). The states go back to float32 before they add anything."""
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(0)
    m = EvalMetrics(10).to(dtype)  # what Lightning's true-precision plugin does to the LightningModule
    O, y = (torch.randn(10000, 10, generator=g) * 3).to(dtype), torch.randint(0, 10, (10000,), generator=g)
    for i in range(0, 10000, 2000):
        m.update(O[i:i + 2000], y[i:i + 2000], torch.tensor(1.0, dtype=dtype))
    expected = MulticlassCalibrationError(10, n_bins=15)(O.float().softmax(1), y).item()
    assert m.compute()["ece"] == pytest.approx(expected, abs=1e-5)
    assert m.compute()["nll"] == pytest.approx(F.cross_entropy(O.float(), y).item(), rel=1e-5)


def test_every_run_measures_calibration_and_draws_its_reliability(make_cfg, tmp_path):
    cfg = make_cfg("loss=mse")
    metrics = train(cfg)
    assert {"test/nll", "test/ece", "test/brier", "val/nll", "val/ece", "val/entropy"} <= set(metrics)
    assert (Path(cfg.paths.output_dir) / "reliability.png").exists()
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.get_metric_history(runs[0].info.run_id, "val/ece")) == 2


# ---------------------------------------------------------------------------------------------
# loss=bce


def test_bce_trains_the_same_model_in_both_impls(make_cfg):
    common = ["loss=bce", "logger=none", "+trainer.precision=64-true", "optimizer.momentum=0.5"]
    cfgs = {impl: make_cfg(f"impl={impl}", *common) for impl in ("scratch", "nn")}
    cfgs["scratch"].paths.output_dir += "-scratch"
    s, n = (fit_only(cfg).trainer.callback_metrics for cfg in cfgs.values())
    assert s["val/acc"] == n["val/acc"] > 0.5
    assert float(s["train/loss"]) == pytest.approx(float(n["train/loss"]), rel=1e-12)
    torch.testing.assert_close(weights(cfgs["scratch"]), weights(cfgs["nn"]), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# The loss zoo


def test_the_loss_zoo_is_drawn_from_the_losses_the_model_trains_with(tmp_path):
    from softmax_lab.pictures.loss_zoo import loss_zoo, one_logit_curves

    t = torch.linspace(-3, 3, 7, dtype=torch.float64)
    loss, gradient = one_logit_curves("huber", 0, t)
    expected = torch.where((t - 1).abs() <= 1, 0.5 * (t - 1) ** 2, (t - 1).abs() - 0.5)  # the logit vs target 1
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(gradient, (t - 1).clamp(-1, 1))
    loss, gradient = one_logit_curves("ce", 0, t)
    torch.testing.assert_close(loss, torch.log(t.exp() + 9) - t)
    path = loss_zoo(tmp_path / "zoo.png")
    assert Image.open(path).size == (1300, 750)


# ---------------------------------------------------------------------------------------------
# predict.py: a user's own images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    from conftest import compose

    out = tmp_path_factory.mktemp("predict-run")
    cfg = compose([f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.max_epochs=3", "logger=none",
                   "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"], out)
    train(cfg)
    return next((out / "checkpoints").glob("best-epoch*.ckpt"))


def band_image(c: int, size: tuple[int, int] = (28, 28), light_background=False) -> np.ndarray:
    """The tiny data's class c (a light band at rows 2+2c) drawn at any size; uint8 grey."""
    img = np.zeros((28, 28), np.uint8)
    img[2 + 2 * c : 4 + 2 * c, :] = 230
    img = Image.fromarray(img).resize(size, Image.NEAREST)
    arr = np.asarray(img)
    return 255 - arr if light_background else arr


@pytest.mark.slow
def test_predict_names_the_class_of_image_files_of_any_size_and_mode(trained, tmp_path):
    from softmax_lab.data.image_files import load_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    cases = {"c3_grey28.png": (3, "L", (28, 28), False), "c7_rgb112.png": (7, "RGB", (28, 28), False),
             "c5_rgba.png": (5, "RGBA", (28, 28), False), "c1_light_bg.jpg": (1, "RGB", (28, 28), True)}
    for name, (c, mode, size, light) in cases.items():
        Image.fromarray(band_image(c, size, light)).convert(mode).save(folder / name)
    (folder / "notes.png").write_text("not an image")
    x = load_image(folder / "c1_light_bg.jpg")  # a light background is inverted: the object light on black
    assert x.shape == (28, 28) and x[:2].mean() < 0.1 and x[4:6].mean() > 0.7
    r = run_cli([f"ckpt_path={trained}", f"images={folder}", f"hydra.run.dir={tmp_path / 'out'}"],
                script="src/predict.py", measured=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out
    printed = out.splitlines()
    lines = {line.split(":", 1)[0]: (line, printed[i + 1]) for i, line in enumerate(printed)
             if line.startswith(("c", "notes"))}
    names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    for name, (c, *_) in cases.items():
        line, beneath = lines[name]
        assert line.startswith(f"{name}: {names[c]} ("), line  # the class and its probability, then what was done
        assert ("[inverted (light background)]" in line) == name.startswith("c1_light"), line
        assert beneath.startswith(f"    top-3: {names[c]} "), beneath
    assert "notes.png: not a readable image" in lines["notes.png"][0]
    assert (tmp_path / "out" / "predictions.png").exists()


def test_predict_resizes_a_large_photo_like_image(tmp_path):
    from softmax_lab.data.image_files import load_image

    big = np.full((300, 200), 255, np.uint8)  # a dark object on white paper, off-centre
    big[40:120, 20:180] = 30
    path = tmp_path / "photo.jpg"
    Image.fromarray(big).convert("RGB").save(path)
    x = load_image(path)
    assert x.shape == (28, 28) and x.max() > 0.7 and x[0].max() < 0.05  # inverted, trimmed, centred on black
    rows = np.nonzero(x.max(1) > 0.5)[0]
    assert 28 * 0.25 <= len(rows) <= 28 * 0.6  # an 80 x 160 object fills the width, half the height


@pytest.mark.slow
def test_predict_test_images_draws_the_textbook_grid(trained, tmp_path, tiny_data):
    r = run_cli([f"ckpt_path={trained}", "images=test:12", f"data_dir={tiny_data}", f"hydra.run.dir={tmp_path}"],
                script="src/predict.py", measured=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("test image ") == 12 and " of 12 right" in r.stdout
    assert Image.open(tmp_path / "predictions.png").size == (1350, 380)


def predict_lines(trained, tmp_path, capsys, *args):
    from conftest import compose
    from softmax_lab.jobs.predict_job import predict

    capsys.readouterr()
    predict(compose([f"ckpt_path={trained}", *args], tmp_path / "out", config_name="predict"))
    return capsys.readouterr().out


def test_predict_scales_a_16_bit_image_and_says_so(trained, tmp_path, capsys):
    eight = band_image(4)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 16-bit grey (mode I;16)
    out = predict_lines(trained, tmp_path, capsys, f"images={tmp_path}")
    line = {x.split(":")[0]: x for x in out.splitlines()}
    assert "scaled from 0..65535" in line["sixteen.png"]
    assert line["sixteen.png"].split("  [")[0].split(": ", 1)[1] == line["eight.png"].split(": ", 1)[1]  # same answer


@pytest.mark.parametrize("light", [True, False])
def test_a_transparent_background_is_made_the_shade_that_sets_the_object_off(tmp_path, light):
    from softmax_lab.data.image_files import prepare_image

    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[10:14, :, :3] = 240 if light else 20  # a band, on nothing
    rgba[10:14, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    x, notes = prepare_image(tmp_path / "cutout.png")
    assert x[10:14].mean() > 0.85 and x[:8].max() < 0.05  # the object light, the background black, either way
    assert notes[0] == f"transparent background made {'black' if light else 'white'} ({'light' if light else 'dark'} " \
        "object)"


def test_sensor_noise_on_a_large_photo_does_not_move_the_crop(tmp_path):
    from softmax_lab.data.image_files import prepare_image

    photo = np.full((600, 400), 0.95)  # a dark coat on light paper, off-centre
    photo[100:400, 50:250] = 0.15
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 0.04, photo.shape), 0, 1)
    for name, img in (("clean.png", photo), ("noisy.png", noisy)):
        Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / name)
    clean, _ = prepare_image(tmp_path / "clean.png")
    seen, notes = prepare_image(tmp_path / "noisy.png")
    assert np.abs(seen - clean).mean() < 0.05 and seen[:, :3].max() < 0.2  # the object fills the height, as clean
    assert notes == ["inverted (light background)", "400x600 cropped to the object, scaled to 28x28"]


def test_a_blank_image_gets_no_answer_and_the_others_still_do(trained, tmp_path, capsys):
    Image.fromarray(np.full((50, 50), 128, np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(band_image(2)).save(tmp_path / "band.png")
    out = predict_lines(trained, tmp_path, capsys, f"images={tmp_path}")
    assert "blank.png: a blank image (one shade, 0.50): nothing to classify" in out and "band.png: pullover" in out


def test_top_k_adapts_to_a_checkpoint_with_fewer_classes(tmp_path, tiny_data, capsys):
    from conftest import compose

    cfg = compose([f"data.data_dir={tiny_data}", "data.val_size=20", "data.classes=[3,5]", "trainer.max_epochs=1",
                   "logger=none", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"], tmp_path / "two")
    train(cfg)
    two = next((tmp_path / "two" / "checkpoints").glob("best-epoch*.ckpt"))
    Image.fromarray(band_image(3)).save(tmp_path / "x.png")
    out = predict_lines(two, tmp_path, capsys, f"images={tmp_path / 'x.png'}")  # top_k=3 by default
    assert "top_k=3: this checkpoint knows 2 classes (dress, sandal); listing all 2" in out and "    top-2: " in out


def test_asking_for_more_test_images_than_exist_says_so_and_keeps_the_picture_readable(trained, tmp_path, tiny_data,
                                                                                       capsys):
    out = predict_lines(trained, tmp_path, capsys, "images=test:999999", f"data_dir={tiny_data}")
    assert "images=test:999999: the test set has 200 images; predicting all 200" in out
    assert out.count("test image ") == 200 and "(the first 90 of 200: a bigger grid would not be readable)" in out
    assert Image.open(tmp_path / "out" / "predictions.png").size[1] < 2000


@pytest.mark.parametrize("args, says", [
    (["images=/nowhere/*.png"], "no image files there"),
    (["images=test:0"], "expected test:N with N >= 1"),
    (["images=x.png", "top_k=0"], "top_k=0 is not allowed: expected an integer >= 1"),
])
def test_predict_refuses_bad_input_with_one_message(trained, tmp_path, args, says):
    from conftest import compose
    from softmax_lab.errors import UserError
    from softmax_lab.jobs.predict_job import predict

    with pytest.raises(UserError, match=says):
        predict(compose([f"ckpt_path={trained}", *args], tmp_path, config_name="predict"))
