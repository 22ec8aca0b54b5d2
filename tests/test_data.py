"""Training data: identity split, references, padding, determinism, bad files, sharding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from honestface.errors import ConfigError
from training.data import (
    DataConfig,
    EpochSampler,
    IdentityFaceDataset,
    build_datasets,
    infinite_batches,
    scan_identity_folders,
    split_identities,
)


@pytest.fixture(scope="module")
def celeba(shared_data) -> Path:
    return shared_data / "celeba"


def small_config(roots, **kwargs) -> DataConfig:
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("max_references", 3)
    return DataConfig(roots=[str(r) for r in roots], **kwargs)


def test_split_is_by_identity_seeded_and_covers_all(celeba, shared_data):
    identities = scan_identity_folders([celeba, shared_data / "lfw"])
    keys = {i.key for i in identities}
    assert any(k.startswith("0:") for k in keys) and any(k.startswith("1:") for k in keys)
    train, val = split_identities(identities, 0.1, seed=3)
    train_keys, val_keys = {i.key for i in train}, {i.key for i in val}
    assert not train_keys & val_keys and train_keys | val_keys == keys
    assert abs(len(val) - round(0.1 * len(identities))) <= 1
    again, _ = split_identities(identities, 0.1, seed=3)
    other, _ = split_identities(identities, 0.1, seed=4)
    assert [i.key for i in again] == [i.key for i in train]
    assert [i.key for i in other] != [i.key for i in train]


def test_sample_has_references_of_same_identity_never_the_gt(celeba):
    config = small_config([celeba], val_fraction=0.0, min_references=1)
    dataset, val = build_datasets(config)
    assert val is None
    for index in range(0, len(dataset), max(1, len(dataset) // 25)):
        sample = dataset[(index, 11)]
        n = sample["num_references"]
        assert sample["gt"].shape == sample["lq"].shape == (3, 32, 32)
        assert sample["references"].shape == (3, 3, 32, 32)
        assert 1 <= n <= 3 and sample["reference_mask"].sum() == n
        assert sample["reference_mask"][:n].all() and not sample["reference_mask"][n:].any()
        assert torch.all(sample["references"][n:] == 0)
        identity_index, file_index = dataset.items[index]
        identity = dataset.identities[identity_index]
        gt_path = identity.files[file_index]
        assert sample["path"] == str(gt_path) and sample["identity"] == identity.key
        # every reference is one of the other files of the person, not the GT itself
        candidates = {p: dataset._read(p) for p in identity.files}
        for ref in sample["references"][:n]:
            matches = [p for p, img in candidates.items() if torch.allclose(img, ref)]
            assert matches and gt_path not in matches


def test_reference_count_varies_and_same_seed_gives_same_sample(celeba):
    config = small_config([celeba], val_fraction=0.0, max_references=4)
    dataset, _ = build_datasets(config)
    counts = {dataset[(i, 5)]["num_references"] for i in range(40)}
    assert len(counts) >= 3 and 0 in counts
    a, b, c = dataset[(7, 99)], dataset[(7, 99)], dataset[(7, 100)]
    assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["references"], b["references"])
    assert not torch.equal(a["lq"], c["lq"])
    assert not torch.equal(a["lq"], a["gt"])


def test_unreadable_files_are_skipped(tmp_path, celeba, caplog):
    source = sorted(p for p in celeba.iterdir() if p.is_dir())[:2]
    for folder in source:
        target = tmp_path / folder.name
        target.mkdir()
        for image in sorted(folder.glob("*.jpg"))[:3]:
            shutil.copy(image, target / image.name)
    bad = tmp_path / source[0].name / "000000_broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    config = small_config([tmp_path], val_fraction=0.0, min_references=3, max_references=3)
    dataset, _ = build_datasets(config)
    bad_index = [i for i, (ident, f) in enumerate(dataset.items) if dataset.identities[ident].files[f] == bad][0]
    sample = dataset[(bad_index, 1)]
    assert sample["path"] != str(bad) and torch.isfinite(sample["gt"]).all()
    for index in range(len(dataset)):
        sample = dataset[(index, 2)]
        assert sample["num_references"] <= 3
    assert any("unreadable" in r.message for r in caplog.records)


def test_sampler_shards_ranks_and_resumes_mid_epoch():
    length, world = 10, 3
    shards = [list(EpochSampler(length, seed=4, rank=r, world_size=world)) for r in range(world)]
    assert all(len(s) == 4 for s in shards)
    assert {i for shard in shards for i, _ in shard} == set(range(length))
    sampler = EpochSampler(length, seed=4)
    full = list(sampler)
    sampler.advance(6)
    resumed = EpochSampler(length, seed=4)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == full[6:]
    sampler.next_epoch()
    assert [i for i, _ in sampler] != [i for i, _ in full]
    with pytest.raises(ConfigError):
        EpochSampler(11, seed=4).load_state_dict(sampler.state_dict())


def test_infinite_batches_resume_gives_identical_batches(celeba):
    config = small_config([celeba], val_fraction=0.0, max_references=2)
    identities = scan_identity_folders([celeba])[:3]
    dataset = IdentityFaceDataset(identities, config)
    sampler = EpochSampler(len(dataset), seed=0)
    stream = infinite_batches(dataset, sampler, batch_size=4)
    batches = [next(stream) for _ in range(3)]
    state = sampler.state_dict()
    following = [next(stream) for _ in range(len(dataset) // 4 + 2)]  # crosses an epoch boundary
    fresh = EpochSampler(len(dataset), seed=0)
    fresh.load_state_dict(state)
    stream2 = infinite_batches(dataset, fresh, batch_size=4)
    for expected in following:
        got = next(stream2)
        assert got["path"] == expected["path"]
        assert torch.equal(got["lq"], expected["lq"])
    assert batches[0]["path"] != following[0]["path"]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        DataConfig(min_references=3, max_references=2)
    with pytest.raises(ConfigError):
        DataConfig.from_dict({"root": "x"})
    with pytest.raises(ConfigError):
        scan_identity_folders([tmp_path / "missing"])
    with pytest.raises(ConfigError):
        scan_identity_folders([tmp_path])


def test_grayscale_training_pairs_convert_the_ground_truth_too(celeba):
    """paper.yaml's VQFR grayscale augmentation: a gray LQ comes with a gray GT; the GT of a
    colour LQ keeps its colours (references are never converted)."""
    from honestface.degradation import DegradationConfig

    always = small_config([celeba], val_fraction=0.0, min_references=1,
                          degradation=DegradationConfig(gray_probability=1.0).to_dict())
    dataset, _ = build_datasets(always)
    sample = dataset[(0, 1)]
    for key in ("lq", "gt"):
        assert torch.allclose(sample[key][0], sample[key][1], atol=1e-6) and torch.allclose(sample[key][0], sample[key][2], atol=1e-6)
    assert not torch.allclose(sample["references"][0, 0], sample["references"][0, 1])
    never = small_config([celeba], val_fraction=0.0, degradation=DegradationConfig(gray_probability=0.0).to_dict())
    colour = build_datasets(never)[0][(0, 1)]
    assert not torch.allclose(colour["gt"][0], colour["gt"][1])
