"""Training data: the frame groups a run trains on, in a resumable order.

The stream of training samples is a pure function of (SEED, epoch, position) and loading a sample
draws no random numbers, so a resumed run sees exactly the samples an uninterrupted run would; each
process takes its slice of every iteration's global batch.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from yacs.config import CfgNode

from sltnet.data.batching import FrameGroup, TrainingGroup, load_training_group
from sltnet.data.catalog import DatasetCatalog, load_dataset
from sltnet.data.records import StCocoDataset
from sltnet.data.sampling import TrainingGroupSampler, TrainingSample
from sltnet.data.transforms import ImagePreprocessor
from sltnet.errors import SltnetError


def build_group_sampler(cfg: CfgNode, dataset: StCocoDataset, temporal: bool) -> TrainingGroupSampler:
    """Frame groups of one dataset: N-frame windows with support groups for SLTnet (stage 2),
    single frames without support groups for the baseline (stage 1)."""
    if not temporal:
        cfg = cfg.clone()
        cfg.defrost()
        st = cfg.MODEL.SPATIOTEMPORAL
        st.NUM_FRAMES, st.FORWARD_AGGREGATION, st.TEMPORAL_DROPOUT, st.LONG_TERM = 1, False, False, False
    return TrainingGroupSampler.from_config(dataset, cfg)


def training_preprocessor(cfg: CfgNode) -> ImagePreprocessor:
    """The image path with the training resize limit; each sample brings its own short side."""
    return ImagePreprocessor(
        short_side=cfg.INPUT.MIN_SIZE_TRAIN[0],
        max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
        size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
    )


@dataclass(frozen=True)
class LoadingError:
    """A user mistake met while loading a sample in a DataLoader worker process.

    PyTorch would re-raise the worker's :class:`SltnetError` in the main process with its whole
    traceback as the message; handed over as data, it is raised there with its own one line.
    """

    message: str


def checked_batch(batch: Sequence[TrainingGroup | LoadingError]) -> list[TrainingGroup]:
    """The groups of a loaded batch.

    Raises:
        SltnetError: the first sample of the batch that failed to load in a worker, with its message.
    """
    groups = []
    for item in batch:
        if isinstance(item, LoadingError):
            raise SltnetError(item.message)
        groups.append(item)
    return groups


class TrainingSampleStream(Dataset):
    """The endless stream of training samples over all training datasets, epoch after epoch.

    Sample ``g`` of the stream is position ``g % L`` of epoch ``g // L`` (``L`` samples per epoch).
    An epoch holds every dataset's samples for that epoch (:meth:`TrainingGroupSampler.epoch`),
    shuffled together; its order is a pure function of (seed, epoch), so any position can be
    recomputed after a restart, and loading a sample draws no random numbers.

    Args:
        datasets: the training datasets, each with its own image root.
        samplers: one sampler per dataset.
        preprocessor: decode/resize/normalise (:func:`training_preprocessor`).
        seed: ``SEED``.
    """

    def __init__(
        self,
        datasets: Sequence[StCocoDataset],
        samplers: Sequence[TrainingGroupSampler],
        preprocessor: ImagePreprocessor,
        seed: int,
    ) -> None:
        self.image_roots = [dataset.image_root for dataset in datasets]
        self.samplers = list(samplers)
        self.preprocessor = preprocessor
        self.seed = seed
        self.epoch_length = sum(len(sampler) for sampler in self.samplers)
        self._cached_epoch: tuple[int, list[tuple[int, TrainingSample]]] = (-1, [])

    def epoch(self, epoch: int) -> list[tuple[int, TrainingSample]]:
        """``(dataset index, sample)`` of one epoch, in training order."""
        if self._cached_epoch[0] != epoch:
            samples = [
                (index, sample) for index, sampler in enumerate(self.samplers) for sample in sampler.epoch(epoch)
            ]
            # A stream separate from the per-dataset samplers' ([seed, epoch]) mixes the datasets.
            order = np.random.default_rng([self.seed, epoch, len(self.samplers)]).permutation(len(samples))
            self._cached_epoch = (epoch, [samples[i] for i in order])
        return self._cached_epoch[1]

    def position(self, index: int) -> tuple[int, int]:
        """``(epoch, position in the epoch)`` of stream sample ``index``."""
        return divmod(index, self.epoch_length)

    def __getitem__(self, index: int) -> TrainingGroup | LoadingError:
        """The sample at stream position ``index``.

        Raises:
            SltnetError: a bad image or annotation, in the main process. In a DataLoader worker
                the error comes back as a :class:`LoadingError` instead (see :func:`checked_batch`).
        """
        try:
            epoch, position = self.position(index)
            dataset_index, sample = self.epoch(epoch)[position]
            return load_training_group(sample, self.image_roots[dataset_index], self.preprocessor)
        except SltnetError as err:
            if get_worker_info() is None:
                raise
            return LoadingError(str(err))


class RankBatchSampler(Sampler[list[int]]):
    """Stream indices of this process's share of each iteration's batch.

    Iteration ``i`` (counted from the start of this sampler) takes the global batch
    ``[first + i * B, first + (i + 1) * B)``; process ``r`` of ``W`` takes the ``r``-th of its ``W``
    equal slices.

    Args:
        first_sample: stream index of the first sample (samples consumed before a resume).
        num_iterations: batches to yield.
        global_batch: ``SOLVER.IMS_PER_BATCH``, a multiple of ``world_size``.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, first_sample: int, num_iterations: int, global_batch: int, rank: int, world_size: int) -> None:
        self.first_sample = first_sample
        self.num_iterations = num_iterations
        self.global_batch = global_batch
        self.per_process = global_batch // world_size
        self.offset = rank * self.per_process

    def __len__(self) -> int:
        return self.num_iterations

    def __iter__(self) -> Iterator[list[int]]:
        for iteration in range(self.num_iterations):
            start = self.first_sample + iteration * self.global_batch + self.offset
            yield list(range(start, start + self.per_process))


def load_training_datasets(cfg: CfgNode, catalog: DatasetCatalog) -> list[StCocoDataset]:
    """``DATASETS.TRAIN``, each checked to have ``MODEL.ROI_HEADS.NUM_CLASSES`` classes and the same class names."""
    if not cfg.DATASETS.TRAIN:
        raise SltnetError("DATASETS.TRAIN is empty: name at least one training dataset")
    datasets = [load_dataset(name, catalog) for name in cfg.DATASETS.TRAIN]
    for dataset in datasets:
        if dataset.num_classes != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise SltnetError(
                f"{dataset.json_path}: {dataset.num_classes} classes, but MODEL.ROI_HEADS.NUM_CLASSES is "
                f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
            )
        if dataset.class_names != datasets[0].class_names:
            raise SltnetError(
                f"{dataset.json_path}: classes {dataset.class_names} differ from those of {datasets[0].json_path} "
                f"({datasets[0].class_names}); training datasets must share one class list"
            )
    return datasets


def move_group(group: TrainingGroup, device: torch.device) -> TrainingGroup:
    """A training group and its support groups with their tensors on ``device``."""
    support = [replace(frames, **_frame_group_tensors(frames, device)) for frames in group.support]
    return replace(group, **_frame_group_tensors(group, device), support=support)


class _FrameGroupTensors(TypedDict):
    """The tensor fields of a :class:`FrameGroup`."""

    images: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor


def _frame_group_tensors(group: FrameGroup, device: torch.device) -> _FrameGroupTensors:
    return {
        "images": group.images.to(device, non_blocking=True),
        "boxes": group.boxes.to(device, non_blocking=True),
        "classes": group.classes.to(device, non_blocking=True),
    }
