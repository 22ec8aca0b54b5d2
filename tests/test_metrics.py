"""Identity angle, PSNR/SSIM, MS-SWD, the metric registry and the offline pyiqa wrapper."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from honestface.errors import ConfigError, ImageError, MissingModelFileError
from honestface.image_io import load_image
from honestface.metrics import identity_angle_degrees, ms_swd, psnr, ssim
from honestface.metrics.iqa import PYIQA_METRICS, check_pyiqa_metric, hub_folders, offline_hub, pyiqa_installed
from honestface.metrics.registry import METRICS, TABLE1_METRICS, parse_metric_list


def celeba_faces(shared_data: Path, count: int = 2) -> torch.Tensor:
    files = sorted((shared_data / "celeba").glob("*/*.jpg"))[:count]
    return torch.stack([load_image(f) for f in files])


# ----------------------------------------------------------------------------- Deg.
def test_identity_angle_known_angles_batched_and_scale_free():
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    angles = identity_angle_degrees(a, b)
    torch.testing.assert_close(angles, torch.tensor([90.0, 180.0, 45.0, 0.0]), atol=1e-4, rtol=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 512)), rng.normal(size=(4, 512))
    expected = np.degrees(np.arccos((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)))
    np.testing.assert_allclose(identity_angle_degrees(x, y), expected, rtol=1e-10)
    x[2] = np.nan
    assert np.isnan(identity_angle_degrees(x, y)[2])


# ----------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_and_ssim_match_scikit_image_on_real_faces(shared_data):
    faces = celeba_faces(shared_data)
    noisy = (faces + 0.04 * torch.randn(faces.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ours_psnr, ours_ssim = psnr(noisy, faces), ssim(noisy, faces)
    for i in range(faces.shape[0]):
        a = faces[i].permute(1, 2, 0).double().numpy()
        b = noisy[i].permute(1, 2, 0).double().numpy()
        assert float(ours_psnr[i]) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-9)
        reference = structural_similarity(
            a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert float(ours_ssim[i]) == pytest.approx(reference, abs=1e-6)
    assert math.isinf(float(psnr(faces, faces)[0])) and float(ssim(faces, faces)[0]) == pytest.approx(1.0)
    assert float(psnr(noisy, faces, y_channel=True)[0]) != pytest.approx(float(ours_psnr[0]), rel=1e-3)
    with pytest.raises(ImageError):
        psnr(faces, faces[:, :, :10])


# ----------------------------------------------------------------------------- MS-SWD
def test_ms_swd_zero_for_identical_and_grows_with_colour_shift(shared_data):
    faces = celeba_faces(shared_data)[:, :, ::4, ::4].contiguous()  # 64x64 keeps it fast
    assert torch.equal(ms_swd(faces, faces), torch.zeros(2))
    fast = dict(num_projections=32, num_scales=3)
    distances = []
    for shift in (0.01, 0.04, 0.1):
        warm = faces.clone()
        warm[:, 0] += shift  # more red
        warm[:, 2] -= shift  # less blue
        distances.append(ms_swd(warm.clamp(0, 1), faces, **fast))
    assert bool((distances[0] > 0).all())
    assert bool((distances[0] < distances[1]).all()) and bool((distances[1] < distances[2]).all())
    # Symmetric, deterministic for a seed, and a different seed gives different projections.
    swapped = faces.flip(1)  # RGB -> BGR
    torch.testing.assert_close(ms_swd(faces, swapped, **fast), ms_swd(swapped, faces, **fast))
    torch.testing.assert_close(ms_swd(swapped, faces, seed=3, **fast), ms_swd(swapped, faces, seed=3, **fast))
    assert not torch.equal(ms_swd(swapped, faces, seed=3, **fast), ms_swd(swapped, faces, seed=4, **fast))
    # A colour change hurts more than moving the same colours around (it compares distributions).
    moved = torch.roll(faces, shifts=3, dims=-1)
    assert bool((ms_swd(moved, faces, **fast) < distances[2]).all())


def test_ms_swd_rejects_bad_input():
    with pytest.raises(ImageError):
        ms_swd(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError):
        ms_swd(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), patch_size=4)


# ----------------------------------------------------------------------------- registry
def test_registry_has_the_paper_columns_and_directions():
    assert [METRICS[k].column for k in TABLE1_METRICS] == [
        "LPIPS", "DISTS", "C-IQA", "M-IQA", "MUSIQ", "FID", "Deg.", "L2-LD", "ALD-e", "ALD-m"
    ]
    higher = {k for k, spec in METRICS.items() if not spec.lower_is_better}
    assert higher == {"psnr", "ssim", "clipiqa", "maniqa", "musiq"}
    assert parse_metric_list("psnr, ALD-e ,table1", ())[:3] == ("psnr", "ald_e", "lpips")
    assert parse_metric_list(None, ("ssim",)) == ("ssim",)
    with pytest.raises(ConfigError, match="unknown metric"):
        parse_metric_list("sharpness", ())


# ----------------------------------------------------------------------------- pyiqa, offline
def test_missing_pyiqa_weights_are_reported_with_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    models = tmp_path / "models"
    assert hub_folders(models) == [models / "pyiqa", tmp_path / "torch" / "hub"]
    for key, spec in PYIQA_METRICS.items():
        status = check_pyiqa_metric(key, models)
        assert not status.available
        if pyiqa_installed():
            assert spec.hub_files[-1] in status.reason and str(models / "pyiqa") in status.reason
        else:
            assert "pyiqa is not installed" in status.reason


def test_offline_hub_refuses_every_download(tmp_path):
    before = torch.hub.get_dir()
    with offline_hub(tmp_path):
        assert torch.hub.get_dir() == str(tmp_path)
        with pytest.raises(MissingModelFileError) as refused:
            torch.hub.load_state_dict_from_url("https://download.example.invalid/weights/some-net-0123abcd.pth")
        assert refused.value.filename == "some-net-0123abcd.pth" and "Downloads are disabled" in refused.value.args[0]
        if pyiqa_installed():
            import pyiqa.utils.download_util as download_util

            with pytest.raises(MissingModelFileError):
                download_util.load_file_from_url("https://download.example.invalid/LPIPS_v0.1_alex-df73285e.pth")
    assert torch.hub.get_dir() == before
    assert not any(tmp_path.rglob("*.pth"))


def write_random_lpips_weights(hub: Path) -> None:
    """pyiqa's LPIPS (AlexNet, v0.1) files in their real formats, with random values."""
    import torchvision
    from pyiqa.archs.lpips_arch import LPIPS

    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    (hub / "pyiqa").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    with offline_hub(hub):
        network = LPIPS(net="alex", version="0.1", pretrained=False)
    for layer in network.modules():  # LPIPS' linear heads are non-negative
        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1):
            layer.weight.data.abs_()
    torch.save(network.state_dict(), hub / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")


def write_random_fid_weights(hub: Path, monkeypatch) -> None:
    """pyiqa's FID Inception file in its real format, with random values."""
    import pyiqa.archs.inception as inception

    (hub / "pyiqa").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    with monkeypatch.context() as patch:
        patch.setattr(inception, "load_pretrained_network", lambda *args, **kwargs: None)
        network = inception.fid_inception_v3()
    torch.save(network.state_dict(), hub / "pyiqa" / "pt_inception-2015-12-05-6726825d.pth")


@pytest.mark.slow
@pytest.mark.skipif(not pyiqa_installed(), reason="pyiqa is not installed")
def test_lpips_through_pyiqa_from_local_weight_files(tmp_path, shared_data):
    """LPIPS built from weight files in their real formats (random values) in <models>/pyiqa."""
    from honestface.metrics.iqa import PyiqaMetric

    write_random_lpips_weights(tmp_path / "models" / "pyiqa")
    assert check_pyiqa_metric("lpips", tmp_path / "models").available
    metric = PyiqaMetric("lpips", models_dir=tmp_path / "models")
    faces = celeba_faces(shared_data)[:, :, ::2, ::2].contiguous()
    blurred = torch.nn.functional.avg_pool2d(faces, 5, stride=1, padding=2)
    same, different = metric(faces, faces), metric(blurred, faces)
    assert same.shape == (2,) and float(same.abs().max()) < 1e-6
    assert bool((different > 0).all())
