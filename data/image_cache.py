"""Images decoded once and kept for a whole run: one contiguous uint8 array [N, S, S, 3].

Training reads every image of its category in every epoch (1501 of them for the paper's
schedule), so decoding and resizing each file once and keeping the S x S result saves all the
later decodes; the result is exactly what a read gives (data/io.read_rgb_resized), so the
batches do not change. The array is filled before the DataLoader starts its worker processes,
which are forked and so read the very pages of the training process: they are only ever read,
so none is copied. It lives in an anonymous mapping of its own rather than on the malloc heap,
whose neighbouring blocks the workers' own allocations would write to.
"""
from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from tqdm import tqdm

CHANNELS = 3


def decoded_bytes(n_images: int, size: int) -> int:
    """Bytes that ``n_images`` decoded images of ``size`` x ``size`` take in memory."""
    return int(n_images) * int(size) * int(size) * CHANNELS


class DecodedImages:
    """``n`` uint8 [size, size, 3] images in one contiguous array, filled once by :meth:`fill`."""

    def __init__(self, n: int, size: int) -> None:
        self.size = int(size)
        nbytes = decoded_bytes(n, size)
        # an anonymous shared mapping: page-aligned, outside the heap, the same pages in every
        # forked worker (and zero-filled on demand: nothing is committed before it is written)
        self._map = mmap.mmap(-1, max(1, nbytes))
        self.array = np.frombuffer(self._map, dtype=np.uint8, count=nbytes).reshape(n, self.size, self.size, CHANNELS)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def __getitem__(self, i: int) -> np.ndarray:
        """Image ``i``, a read-only view (a caller that changes it must copy it first)."""
        view = self.array[i]
        view.flags.writeable = False
        return view

    def fill(self, load: Callable[[int], np.ndarray], threads: int = 1, progress: bool = False,
             desc: str = "decoding images once") -> None:
        """Store ``load(i)`` (uint8 [size, size, 3]) for every i, ``threads`` at a time (the
        decoders and PIL's resize release the GIL), showing progress. The first failing image
        in index order raises its own error; the images not started yet are not loaded."""
        pool = ThreadPoolExecutor(max_workers=max(1, int(threads)))
        bar = tqdm(total=len(self), desc=desc, unit="image", disable=not progress, leave=False)
        try:
            for i, image in enumerate(pool.map(load, range(len(self)))):
                if image.shape != self.array.shape[1:] or image.dtype != np.uint8:
                    raise ValueError(f"image {i}: got {image.dtype} {image.shape}, expected uint8 "
                                     f"{self.array.shape[1:]}")
                self.array[i] = image
                bar.update()
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
