"""Feeding the trainer: half-anomalous batches whose synthesis is reproducible from the seed.

Every sample's randomness comes from a seed carried in its sampler key, so a batch's content
depends only on (seed, epoch, batch, position): not on the number of DataLoader workers, the
order in which workers finish, or anything else in the process.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from data.synthesis import AnomalySynthesizer

Key = tuple[int, bool, int]  # (dataset_index, make_anomaly, sample_seed)


def n_anomalous(batch_len: int) -> int:
    """How many leading samples of a batch get a synthetic anomaly: floor(B/2), but 1 if B == 1."""
    return 1 if batch_len == 1 else batch_len // 2


class HalfBatchSampler(Sampler[list[Key]]):
    """Batch sampler yielding lists of keys (dataset_index, make_anomaly, sample_seed).

    Each epoch's order is a permutation drawn from a generator seeded with (seed, epoch). The
    first floor(B/2) positions of each batch (1 if B == 1) are marked anomalous, the rest normal,
    where B is that batch's actual size. sample_seed is derived from (seed, epoch, global batch
    index, position) with np.random.SeedSequence.

    Distributed training: the epoch's global batches are dealt round-robin, rank r taking global
    batches r, r + world_size, ...; each rank's batch holds `batch_size` samples, so the
    effective batch is world_size * batch_size. All ranks yield the same number of batches: with
    drop_last the leftover global batches (and a short last one) are dropped, otherwise the list
    of global batches is padded by repeating it from its start (the repeats get their own seeds).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n_items < 0 or batch_size < 1:
            raise ValueError(f"need n_items >= 0 and batch_size >= 1, got {n_items}, {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative (np.random.SeedSequence), got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order and seeds the next iteration yields (call before each epoch).

        ``start_batch`` skips this rank's first batches of the epoch without loading them: a run
        resumed from a mid-epoch checkpoint continues with exactly the batches it had not seen.
        """
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be non-negative, got {epoch}, {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _n_global(self) -> int:
        """Number of global batches before the distributed drop/pad."""
        if self.drop_last:
            return self.n_items // self.batch_size
        return math.ceil(self.n_items / self.batch_size)

    def __len__(self) -> int:
        n = self._n_global()
        if self.drop_last:
            return n // self.world_size
        return math.ceil(n / self.world_size)

    def _global_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])).permutation(self.n_items)
        else:
            order = np.arange(self.n_items)
        n = self._n_global()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(n)]
        total = len(self) * self.world_size
        # Pad (never needed with drop_last, which truncates instead) by cycling the epoch's batches.
        while batches and len(batches) < total:
            batches.append(batches[len(batches) % n])
        return batches[:total]

    def sample_seed(self, global_batch: int, position: int) -> int:
        """The synthesis seed of one sample: a deterministic function of (seed, epoch, batch, position)."""
        ss = np.random.SeedSequence([self.seed, self.epoch, global_batch, position])
        return int(ss.generate_state(1, dtype=np.uint64)[0])

    def __iter__(self) -> Iterator[list[Key]]:
        batches = self._global_batches()
        for g in range(self.rank + self.start_batch * self.world_size, len(batches), self.world_size):
            items = batches[g]
            k = n_anomalous(len(items))
            yield [(int(idx), pos < k, self.sample_seed(g, pos)) for pos, idx in enumerate(items)]


class SyntheticAnomalyDataset(Dataset):
    """Adds a synthetic anomaly (or none) to samples of a base dataset, keyed by sampler keys.

    The base dataset's item i is dict(image=[C, S, S], fg=[1, S, S], index=i). Item `key` =
    (i, make_anomaly, seed) is dict(image, eps, mask, mask_c), all float32; eps/mask/mask_c are
    synthesised with np.random.default_rng(seed) when make_anomaly, else zeros. A base item's
    ``class`` (a multi-class training set's category index) is passed on.
    """

    def __init__(self, base: Dataset, synthesizer: AnomalySynthesizer) -> None:
        self.base = base
        self.synthesizer = synthesizer

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: Key) -> dict[str, Tensor]:
        i, make_anomaly, seed = key
        item = self.base[int(i)]
        image = item["image"].to(torch.float32)
        if make_anomaly:
            out = self.synthesizer(image, item["fg"].to(torch.float32), np.random.default_rng(int(seed)))
        else:
            zeros = torch.zeros((1,) + tuple(image.shape[1:]), dtype=torch.float32)
            out = {"eps": torch.zeros_like(image), "mask": zeros, "mask_c": zeros.clone()}
        sample = {"image": image, "eps": out["eps"], "mask": out["mask"], "mask_c": out["mask_c"]}
        if "class" in item:
            sample["class"] = item["class"]
        return sample


def make_train_loader(
    base_dataset: Dataset,
    synthesizer: AnomalySynthesizer,
    batch_size: int,
    seed: int,
    workers: int,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader of half-anomalous batches. Call `loader.batch_sampler.set_epoch(epoch)` each epoch.

    With world_size > 1, `batch_size` is per rank (effective batch world_size * batch_size).
    """
    dataset = SyntheticAnomalyDataset(base_dataset, synthesizer)
    sampler = HalfBatchSampler(
        len(dataset), batch_size, seed, shuffle=shuffle, drop_last=False, rank=rank, world_size=world_size
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=False,
    )
