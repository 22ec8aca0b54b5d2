"""Training data: identity folders -> (GT face, synthetic LQ, references of the same person).

Layout of a data root (CelebRef-HQ, Reface-HQ, or what ``honestface prepare-dataset``
writes)::

    root/<identity>/<image>.png|jpg|...

Several roots can be combined; identities are keyed by ``(root, folder name)`` so equal
folder names in different roots stay different people. The train/validation split is
made over identities (never over images), with a seed.

Every sample is fully determined by ``(index, sample_seed)``: the sampler
(:class:`EpochSampler`) draws the seeds together with the data order, so a run resumed
from a checkpoint sees exactly the same samples, in the same order, with the same
degradations and references, however many loader workers there are.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from honestface.config import strict_from_dict
from honestface.degradation import DegradationConfig, degrade_pair
from honestface.errors import ConfigError, ImageError
from honestface.image_io import IMAGE_SUFFIXES, load_image, resize_to

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the faces are and how samples are built.

    Attributes:
        roots: identity-folder roots (relative paths are resolved from the config file's
            folder by the training program).
        image_size: GT/LQ/reference side length (faces are resized to it).
        max_references: N_max, the padded reference count of a sample.
        min_references: each sample gets a random N in [min_references, max_references]
            (bounded by the other images of that identity).
        min_images_per_identity: identities with fewer images are not used.
        val_fraction: share of identities held out for validation (at least one when > 0).
        val_max_samples: validation uses at most this many images.
        split_seed: seed of the identity split.
        horizontal_flip: flip GT (and its LQ) with probability 0.5.
        degradation: ranges of the synthetic LQ (VQFR defaults).
        aligned_faces: the images are FFHQ-style aligned crops (CelebRef-HQ, Reface-HQ,
            ``prepare-dataset``), so landmarks and heatmaps (Eq. 6, MFA, validation) are
            fitted in the known aligned face box and no face detector runs. ``False``
            detects the face in every image (for data that is not aligned); the trainer
            then counts the misses (see ``train.max_landmark_miss_rate``).
        synthetic_lq: degrade every face into its LQ. ``False`` skips the degradation (the
            sample's ``lq`` is its ``gt``) for programs that learn from clean faces alone
            (``train_autoencoder.py`` kinds ``kl`` and ``vq-hq``): at 512 px it costs several
            times the reading of the image.
    """

    roots: list[str] = field(default_factory=list)
    image_size: int = 512
    max_references: int = 4
    min_references: int = 0
    min_images_per_identity: int = 1
    val_fraction: float = 0.05
    val_max_samples: int = 64
    split_seed: int = 0
    horizontal_flip: bool = True
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    aligned_faces: bool = True
    synthetic_lq: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.roots, (str, Path)):
            self.roots = [str(self.roots)]
        if isinstance(self.degradation, dict):
            self.degradation = DegradationConfig.from_dict(self.degradation)
        if self.max_references < 0 or self.min_references < 0 or self.min_references > self.max_references:
            raise ConfigError(f"need 0 <= min_references <= max_references, got "
                              f"{self.min_references}, {self.max_references}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["degradation"] = self.degradation.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DataConfig":
        return strict_from_dict(cls, data, "the data options")


@dataclass(frozen=True)
class Identity:
    """One person: a key unique over all roots and the sorted image files."""

    key: str
    files: tuple[Path, ...]


def scan_identity_folders(roots: Sequence[str | Path], min_images: int = 1) -> list[Identity]:
    """Identities of every root, sorted by key; unreadable/missing roots raise ConfigError."""
    identities: list[Identity] = []
    for root_index, root in enumerate(roots):
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"data root is not a folder: {root}")
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = tuple(sorted(p for p in folder.iterdir()
                                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
            if len(files) >= max(1, min_images):
                identities.append(Identity(f"{root_index}:{folder.name}", files))
    if not identities:
        raise ConfigError(f"no identity folders with images (at least {min_images} each) in {list(map(str, roots))}")
    return identities


def identity_name(identity: Identity) -> str:
    """``<root folder name>/<identity folder name>``: names a person without machine paths."""
    folder = identity.files[0].parent
    return f"{folder.parent.name}/{folder.name}"


def split_identities(identities: Sequence[Identity], val_fraction: float,
                     seed: int) -> tuple[list[Identity], list[Identity]]:
    """Seeded identity-level split -> (train, val); no person is in both."""
    order = np.random.default_rng(seed).permutation(len(identities))
    n_val = 0 if val_fraction <= 0 else max(1, int(round(val_fraction * len(identities))))
    if n_val >= len(identities):
        raise ConfigError(f"val_fraction {val_fraction} leaves no training identity of {len(identities)}")
    val = sorted((identities[i] for i in order[:n_val]), key=lambda x: x.key)
    train = sorted((identities[i] for i in order[n_val:]), key=lambda x: x.key)
    return train, val


class IdentityFaceDataset(torch.utils.data.Dataset):
    """Samples of one split. ``dataset[(index, seed)]`` (or ``dataset[index]``) returns::

        {"gt": (3,S,S), "lq": (3,S,S), "references": (N_max,3,S,S) zero-padded,
         "reference_mask": (N_max,) bool, True for real references,
         "reference_paths": N_max file paths ("" for padding),
         "num_references": int, "identity": str, "path": str}

    all images in [0, 1]. References are other files of the same identity (never the GT
    file). Unreadable images are logged once and skipped: a bad GT is replaced by the
    next readable image, a bad reference is dropped.
    """

    def __init__(self, identities: Sequence[Identity], config: DataConfig, augment: bool = True) -> None:
        self.identities = list(identities)
        self.config = config
        self.augment = augment
        self.items: list[tuple[int, int]] = [
            (identity_index, file_index)
            for identity_index, identity in enumerate(self.identities)
            for file_index in range(len(identity.files))
        ]
        if not self.items:
            raise ConfigError("dataset split has no images")
        self._bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, path: Path) -> torch.Tensor | None:
        if path in self._bad:
            return None
        try:
            image = load_image(path)
        except ImageError as error:
            self._bad.add(path)
            logger.warning("skipping unreadable image: %s", error)
            return None
        return resize_to(image[None], self.config.image_size)[0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        rng = np.random.default_rng([seed, index])
        size, n_max = self.config.image_size, self.config.max_references

        gt = None
        for attempt in range(len(self.items)):
            identity_index, file_index = self.items[(index + attempt) % len(self.items)]
            identity = self.identities[identity_index]
            gt = self._read(identity.files[file_index])
            if gt is not None:
                break
        if gt is None:
            raise ImageError("no readable image left in the dataset")

        if self.augment and self.config.horizontal_flip and rng.random() < 0.5:
            gt = gt.flip(-1)
        degradation_seed = int(rng.integers(0, 2**62))  # drawn either way: references stay the same
        if self.config.synthetic_lq:
            # a grayscale LQ (VQFR's gray_prob) comes with a grayscale ground truth (gt_gray)
            lq, gt, _ = degrade_pair(gt, self.config.degradation, generator=degradation_seed)
        else:
            lq = gt

        others = [i for i in range(len(identity.files)) if i != file_index]
        rng.shuffle(others)
        upper = min(n_max, len(others))
        lower = min(self.config.min_references, upper)
        wanted = int(rng.integers(lower, upper + 1)) if upper > 0 else 0
        references, reference_paths = [], []
        for other in others:
            if len(references) >= wanted:
                break
            image = self._read(identity.files[other])
            if image is not None:
                references.append(image)
                reference_paths.append(str(identity.files[other]))

        padded = torch.zeros(n_max, 3, size, size)
        mask = torch.zeros(n_max, dtype=torch.bool)
        for slot, image in enumerate(references):
            padded[slot] = image
            mask[slot] = True
        return {"gt": gt, "lq": lq, "references": padded, "reference_mask": mask,
                "reference_paths": reference_paths + [""] * (n_max - len(references)),
                "num_references": len(references), "identity": identity.key,
                "path": str(identity.files[file_index])}


class EpochSampler(torch.utils.data.Sampler):
    """Seeded order over epochs, sharded over ranks, resumable mid-epoch.

    Epoch ``e`` visits ``randperm(len, seed + e)``; rank ``r`` of ``w`` takes positions
    ``r, r + w, ...`` of it (the tail is padded by wrapping so every rank gets the same
    count). Yields ``(index, sample_seed)`` pairs; the seed is drawn with the order, so a
    sample's degradation and references do not depend on workers or on resuming.
    ``state_dict()``/``load_state_dict()`` hold (epoch, position); the training loop calls
    ``advance(n)`` after consuming ``n`` samples and ``next_epoch()`` when the loader ends
    (see :func:`infinite_batches`).
    """

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # samples of the current epoch already consumed by this rank

    def per_rank(self) -> int:
        return -(-self.length // self.world_size)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, 2**31 - 1, (self.length,), generator=generator)
        total = self.per_rank() * self.world_size
        if total > self.length:
            order = torch.cat([order, order[: total - self.length]])
            seeds = torch.cat([seeds, seeds[: total - self.length]])
        return order[self.rank::self.world_size], seeds[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._epoch_plan(self.epoch)
        for position in range(self.position, len(order)):
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        return self.per_rank() - self.position

    def advance(self, count: int) -> None:
        """``count`` more samples of the current epoch were consumed by this rank."""
        self.position += int(count)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "length": self.length, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("length", self.length)) != self.length:
            raise ConfigError(f"the data set changed since the checkpoint: {state.get('length')} samples "
                              f"then, {self.length} now")
        if int(state.get("world_size", self.world_size)) != self.world_size:
            logger.warning("resuming with %d processes instead of %d: the data order continues but "
                           "is no longer identical to the original run", self.world_size, state.get("world_size"))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def build_datasets(config: DataConfig) -> tuple[IdentityFaceDataset, IdentityFaceDataset | None]:
    """Scan the roots, split identities, and build (train, val) data sets."""
    identities = scan_identity_folders(config.roots, config.min_images_per_identity)
    train, val = split_identities(identities, config.val_fraction, config.split_seed)
    train_set = IdentityFaceDataset(train, config, augment=True)
    val_set = IdentityFaceDataset(val, config, augment=False) if val else None
    if val_set is not None and len(val_set.items) > config.val_max_samples:
        val_set.items = val_set.items[:: max(1, len(val_set.items) // config.val_max_samples)][: config.val_max_samples]
    return train_set, val_set


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples into a batch (tensors stacked, strings listed)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def make_loader(dataset: IdentityFaceDataset, sampler: torch.utils.data.Sampler, batch_size: int,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``(index, seed)`` keys; the last incomplete batch is dropped."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate, drop_last=True,
                                       persistent_workers=False,
                                       # own generator: starting a loader must not draw from the
                                       # global RNG, or a resumed run would diverge
                                       generator=torch.Generator().manual_seed(0))


def infinite_batches(dataset: IdentityFaceDataset, sampler: EpochSampler, batch_size: int,
                     num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """Endless batches; the sampler's position is advanced as each batch is handed out,
    so ``sampler.state_dict()`` taken between two batches resumes exactly after them."""
    empty_epochs = 0
    while True:
        loader = make_loader(dataset, sampler, batch_size, num_workers)
        produced = False
        for batch in loader:
            produced = True
            sampler.advance(batch_size)
            yield batch
        sampler.next_epoch()
        empty_epochs = 0 if produced else empty_epochs + 1
        if empty_epochs > 1:
            raise ConfigError(f"the training split has fewer samples per process ({sampler.per_rank()}) "
                              f"than the batch size ({batch_size})")
