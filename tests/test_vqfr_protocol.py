"""``evaluate --protocol vqfr``: VQFR's metric_paper conventions, its networks' file formats.

The network files are written with random values in the formats those projects
distribute (resnet18_110.pth: a DataParallel state dict; alignment_WFLW_4HG.pth:
``{"state_dict": ...}``), and every number is checked against an independent
computation: OpenCV / numpy for the grey 128 px input, numpy for the angle and the mean /
variance correction, hand-placed heatmap peaks for the landmark decoding.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from honestface.errors import ConfigError, MissingModelFileError
from honestface.face.awing import (
    AWING_FILE,
    AWingFAN,
    awing_from_file,
    decode_awing_heatmaps,
    load_awing,
)
from honestface.face.resnet_face import RESNET_FACE18_FILE, ResNetFace, grey128, load_resnet_face18
from honestface.image_io import load_image, save_image
from honestface.metrics.pixel import correct_mean_var, psnr


def _randomise_batchnorm(network: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def write_resnet_face18(folder: Path) -> ResNetFace:
    """A random resnet_face18 saved as the distributed file: ``module.``-prefixed keys."""
    torch.manual_seed(0)
    network = ResNetFace().eval()
    _randomise_batchnorm(network, 0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, folder / RESNET_FACE18_FILE)
    return network


def write_awing(folder: Path) -> AWingFAN:
    """A random AWing FAN saved as the distributed file: ``{"state_dict": ..., ...}``."""
    torch.manual_seed(1)
    network = AWingFAN().eval()
    _randomise_batchnorm(network, 1)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 7, "state_dict": network.state_dict()}, folder / AWING_FILE)
    return network


@pytest.fixture(scope="module")
def celeba_faces(shared_data) -> list[Path]:
    identities = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())
    return [sorted(identity.glob("*.jpg"))[0] for identity in identities[:3]]


# ----------------------------------------------------------------------------- ArcFace resnet_face18


def test_resnet_face18_file_has_the_distributed_key_names_and_loads(tmp_path):
    source = write_resnet_face18(tmp_path / "metric_weights")
    state = torch.load(tmp_path / "metric_weights" / RESNET_FACE18_FILE, weights_only=True)
    # the names and shapes of arcface-pytorch's resnet_face18(use_se=False) behind DataParallel
    expected = {
        "module.conv1.weight": (64, 1, 3, 3), "module.prelu.weight": (1,),
        "module.layer1.0.bn0.weight": (64,), "module.layer1.0.prelu.weight": (1,),
        "module.layer2.0.conv2.weight": (128, 64, 3, 3), "module.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "module.layer2.0.downsample.1.running_var": (128,), "module.layer4.1.conv1.weight": (512, 512, 3, 3),
        "module.bn4.weight": (512,), "module.fc5.weight": (512, 512 * 8 * 8), "module.bn5.running_mean": (512,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".se." in k for k in state) and "module.layer1.0.downsample.0.weight" not in state
    recogniser = load_resnet_face18(models_dir=tmp_path)
    faces = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected_embedding = source(grey128(faces))
    assert torch.allclose(recogniser.embed(faces), expected_embedding, atol=1e-5)


def test_missing_or_wrong_recogniser_file_says_what_and_where(tmp_path):
    with pytest.raises(MissingModelFileError) as error:
        load_resnet_face18(models_dir=tmp_path)
    message = str(error.value)
    assert RESNET_FACE18_FILE in message and "metric_weights" in message and "VQFR" in message
    with pytest.raises(MissingModelFileError, match=AWING_FILE):
        load_awing(models_dir=tmp_path)
    (tmp_path / "metric_weights").mkdir()
    torch.save({"module.conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "metric_weights" / RESNET_FACE18_FILE)
    with pytest.raises(Exception, match="resnet_face18"):
        load_resnet_face18(models_dir=tmp_path)


def test_grey128_is_opencvs_grey_image_and_resize(celeba_faces, tmp_path):
    """cv2.imread(path, 0) + cv2.resize(.., (128, 128)) + (x - 127.5) / 127.5, as the script does."""
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "face.png"
    face = torch.nn.functional.interpolate(load_image(celeba_faces[0])[None], size=512, mode="bicubic").clamp(0, 1)
    save_image(face[0], path)
    image = load_image(path)[None]
    ours = grey128(image)[0, 0].numpy()

    grey = cv2.resize(cv2.imread(str(path), 0), (128, 128), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(ours, (grey.astype(np.float32) - 127.5) / 127.5)

    # numpy, from the definition: BT.601 grey; 512 -> 128 bilinear on pixel centres averages
    # source pixels 4i+1 and 4i+2 in each direction
    rgb = np.asarray(image[0].permute(1, 2, 0).numpy() * 255.0).round()
    luma = np.floor(rgb @ np.array([0.299, 0.587, 0.114]))
    small = np.floor(0.25 * (luma[1::4, 1::4] + luma[2::4, 1::4] + luma[1::4, 2::4] + luma[2::4, 2::4]) + 0.5)
    assert np.abs(ours - (small - 127.5) / 127.5).max() <= 1.0 / 127.5 + 1e-6  # libpng's fixed-point grey


def test_deg_is_the_numpy_angle_and_pairs_under_one_degree_are_left_out(celeba_faces, tmp_path):
    from honestface.evaluation.evaluator import Evaluator, ImagePair

    network = write_resnet_face18(tmp_path / "models" / "metric_weights")
    gt_dir, restored_dir = tmp_path / "gt", tmp_path / "restored"
    images = {}
    for index, path in enumerate(celeba_faces):
        face = load_image(path)
        save_image(face, gt_dir / f"f{index}.png")
        # f0 restored exactly (0 degrees), the others altered
        restored = face if index == 0 else (face * (0.6 + 0.1 * index)).clamp(0, 1).flip(-1)
        save_image(restored, restored_dir / f"f{index}.png")
        images[f"f{index}"] = (load_image(restored_dir / f"f{index}.png"), load_image(gt_dir / f"f{index}.png"))
    evaluator = Evaluator(["deg"], models_dir=tmp_path / "models", protocol="vqfr")
    assert evaluator.statuses["deg"].available and evaluator.statuses["deg"].column == "Deg."
    pairs = [ImagePair(n, restored_dir / f"{n}.png", gt_dir / f"{n}.png") for n in images]
    report = evaluator.evaluate_pairs(pairs)

    angles = {}
    with torch.no_grad():
        for name, (restored, gt) in images.items():
            a, b = network(grey128(torch.stack([gt, restored]))).double().numpy()
            cosine = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
            angles[name] = math.degrees(math.acos(min(cosine, 1.0)))  # rounding can put an identical pair above 1
    for row in report.rows:
        assert row["deg"] == pytest.approx(angles[row["name"]], abs=1e-3)
    assert angles["f0"] < 1.0 and min(angles["f1"], angles["f2"]) > 1.0
    summary = report.summary()["deg"]
    assert summary["left_out"] == 1 and summary["count"] == 2
    assert summary["mean"] == pytest.approx((angles["f1"] + angles["f2"]) / 2, abs=1e-3)
    table = report.format_table()
    assert table.startswith("Protocol: vqfr") and "1 pair(s) under 1 degree left out" in table


# ----------------------------------------------------------------------------- AWing, LMD


def test_awing_decoding_of_known_peaks():
    """Peaks at known cells; the larger neighbour decides the quarter-pixel step."""
    heatmaps = np.zeros((3, 64, 64))
    known = [(10, 20, +1, -1), (40, 33, -1, -1), (5, 60, +1, +1)]  # x, y, step x, step y
    for index, (x, y, step_x, step_y) in enumerate(known):
        heatmaps[index, y, x] = 1.0
        heatmaps[index, y, x + step_x] = 0.5
        heatmaps[index, y + step_y, x] = 0.5
    points = decode_awing_heatmaps(heatmaps, (512, 256))  # H = 512, W = 256
    expected = [((x + 0.25 * sx + 0.5) * 4, (y + 0.25 * sy + 0.5) * 8) for x, y, sx, sy in known]
    assert np.allclose(points, expected)
    # VQFR's rule: a peak in the first row makes every point compare its lower neighbour in y
    # with the first heatmap value, so point 1 loses its step up
    heatmaps[0, 20, 10], heatmaps[0, 0, 12] = 0.0, 2.0
    points = decode_awing_heatmaps(heatmaps, (64, 64))
    assert np.allclose(points[:2], [(12.5, 0.5), (40 - 0.25 + 0.5, 33 + 0.5)])


def test_awing_file_has_the_distributed_key_names_and_matches_an_independent_network(tmp_path):
    network = write_awing(tmp_path / "metric_weights")
    state = torch.load(tmp_path / "metric_weights" / AWING_FILE, weights_only=True)["state_dict"]
    expected = {
        "conv1.conv.weight": (64, 6, 7, 7), "conv2.downsample.2.weight": (128, 64, 1, 1),
        "m0.coordconv.conv.weight": (256, 259, 1, 1), "m1.coordconv.conv.weight": (256, 261, 1, 1),
        "m3.b2_plus_1.conv3.weight": (64, 64, 3, 3), "m2.b1_4.bn1.running_mean": (256,),
        "l3.weight": (99, 256, 1, 1), "al2.weight": (256, 99, 1, 1), "bl0.weight": (256, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "bl3.weight" not in state and "al3.weight" not in state
    loaded = awing_from_file(tmp_path / "metric_weights" / AWING_FILE)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # facexlib's copy of the original network (an implementation independent of ours) takes the file
    facexlib_awing = pytest.importorskip("facexlib.alignment.awing_arch")
    reference = facexlib_awing.FAN(num_modules=4, num_landmarks=98, device="cpu")
    reference.load_state_dict(state, strict=True)


def test_correct_mean_var_is_vqfrs_two_pass_correction():
    generator = np.random.default_rng(0)
    restored, gt = generator.random((3, 32, 40)), generator.random((3, 32, 40)) * 0.5 + 0.2
    expected = restored.copy()
    for channel in range(3):  # the script's loop, in numpy
        for _ in range(2):
            expected[channel] = expected[channel] - expected[channel].mean() + gt[channel].mean()
            expected[channel] = expected[channel] / expected[channel].std() * gt[channel].std()
    ours = correct_mean_var(torch.from_numpy(restored)[None], torch.from_numpy(gt)[None])[0].numpy()
    assert np.allclose(ours, expected, atol=1e-12)
    assert np.allclose(ours.mean(axis=(1, 2)), gt.mean(axis=(1, 2)))
    value = psnr(torch.from_numpy(ours)[None], torch.from_numpy(gt)[None])
    assert float(value) == pytest.approx(10 * np.log10(1 / np.mean((expected - gt) ** 2)))


def test_protocols_refuse_metrics_they_do_not_define(tmp_path):
    from honestface.evaluation.evaluator import Evaluator

    with pytest.raises(ConfigError, match="L2-LD.*--protocol honestface"):
        Evaluator(["l2ld", "psnr"], protocol="vqfr")
    with pytest.raises(ConfigError, match="LMD.*--protocol vqfr"):
        Evaluator(["lmd"], protocol="honestface")
    with pytest.raises(ConfigError, match="unknown evaluation protocol"):
        Evaluator(["psnr"], protocol="basicsr")
    # a missing network is reported as an unavailable metric, with the file and folder
    evaluator = Evaluator(["psnr", "deg", "lmd"], models_dir=tmp_path, protocol="vqfr")
    assert evaluator.statuses["psnr"].available
    for key, name in (("deg", RESNET_FACE18_FILE), ("lmd", AWING_FILE)):
        assert not evaluator.statuses[key].available
        assert name in evaluator.statuses[key].reason and "metric_weights" in evaluator.statuses[key].reason


@pytest.mark.slow
def test_evaluate_protocol_vqfr_on_files_in_the_fields_formats(celeba_faces, tmp_path, capsys):
    """The command line end to end: Deg., LMD, PSNR / SSIM; every output names the protocol."""
    from honestface.cli import main

    models = tmp_path / "models"
    write_resnet_face18(models / "metric_weights")
    network = write_awing(models / "metric_weights")
    facexlib_awing = pytest.importorskip("facexlib.alignment.awing_arch")
    gt_dir, restored_dir = tmp_path / "gt", tmp_path / "restored"
    for index, path in enumerate(celeba_faces[:2]):
        face = load_image(path)
        save_image(face, gt_dir / f"f{index}.png")
        save_image((face * 0.8 + 0.1).flip(-1), restored_dir / f"f{index}.png")
    out_json, out_csv = tmp_path / "report.json", tmp_path / "report.csv"
    code = main(["evaluate", "--restored", str(restored_dir), "--gt", str(gt_dir), "--protocol", "vqfr",
                 "--metrics", "psnr,ssim,deg,lmd", "--models-dir", str(models), "--json", str(out_json),
                 "--csv", str(out_csv), "--per-image", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Protocol: vqfr") and "LMD↓" in printed and "Deg.↓" in printed
    report = json.loads(out_json.read_text())
    assert report["protocol"]["name"] == "vqfr"
    assert {m["key"]: m["available"] for m in report["metrics"]} == {"psnr": True, "ssim": True, "deg": True,
                                                                      "lmd": True}
    rows = list(csv.DictReader(out_csv.open()))
    assert {row["protocol"] for row in rows} == {"vqfr"}

    # the same heatmaps as facexlib's copy of the original network, from the same file
    reference = facexlib_awing.FAN(num_modules=4, num_landmarks=98, device="cpu").eval()
    reference.load_state_dict(torch.load(models / "metric_weights" / AWING_FILE, weights_only=True)["state_dict"])
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(network(x)[-1], reference(x)[0][-1], atol=1e-4)

    # LMD against the original decoding (facexlib's calculate_points) of the same heatmaps
    facexlib_awing.np.float = float  # the original uses the alias NumPy removed
    with torch.no_grad():
        for row in report["images"]:
            points = []
            for path in (row["restored"], row["ground_truth"]):
                image = load_image(Path(path))[None]
                from honestface.face.awing import awing_input

                heatmaps = network(awing_input(image))[-1][:, :98].numpy()
                if np.argmax(heatmaps.reshape(98, -1), axis=1).max() == 64 * 64 - 1:
                    # a peak in the last cell, where the original decoding fails (IndexError)
                    points.append(decode_awing_heatmaps(heatmaps[0], tuple(image.shape[-2:])))
                else:
                    points.append(facexlib_awing.calculate_points(heatmaps).reshape(-1, 2) * (image.shape[-1] / 64))
            expected = np.sqrt(((points[0] - points[1]) ** 2).sum(1)).mean()
            assert row["lmd"] == pytest.approx(expected, abs=1e-6)
