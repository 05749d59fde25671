"""Whether a training process keeps its images decoded in memory (data/image_cache.py): the rule,
and the line that says what it chose.

A category's training images, and the texture images, are decoded once and kept at the working
size unless ``--no-image-cache`` is given or they would take more than ``MEMORY_SHARE`` of the
memory available (utils/machine/resources.available_memory, read just before they are decoded),
that share divided among the training processes on the machine (under torchrun each process
keeps its own: with DistributedDataParallel every rank sees every image over the epochs, with
--split-categories each keeps its own categories'). Otherwise the images are decoded from their
files every time, as before: the same batches, only slower.
"""
from __future__ import annotations

from dataclasses import dataclass

from data.datasets import TrainDataset
from data.image_cache import decoded_bytes
from data.textures import TextureSource
from models.modes import has_rgb
from utils.machine.resources import available_cores, available_memory, processes_on_this_machine

MEMORY_SHARE = 0.5  # the rest is left to the network, the DataLoader workers and everything else
MIB, GIB = 2 ** 20, 2 ** 30
CACHE_RULE = (f"train: decode every training image (and texture) from its file every epoch instead of once; the "
              f"default keeps them decoded in memory at the working size when that takes at most "
              f"{MEMORY_SHARE:.0%} of the memory available (--dry-run says how much)")


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB" if nbytes < 10 * MIB else f"{nbytes / MIB:.0f} MiB"


@dataclass(frozen=True)
class CachePlan:
    """What keeping one category's images decoded would take, and whether it is done."""

    n_images: int
    image_bytes: int
    n_textures: int
    texture_bytes: int  # 0 where the textures are kept already (an earlier category) or there are none
    available: int | None  # bytes of memory available, None: the system does not say
    processes: int  # training processes on this machine, each keeping its own
    refused: bool  # --no-image-cache

    @property
    def budget(self) -> int | None:
        """Bytes this process may keep: its share of MEMORY_SHARE of the memory available."""
        return None if self.available is None else int(self.available * MEMORY_SHARE) // self.processes

    @property
    def keeps_images(self) -> bool:
        return self.image_bytes > 0 and not self.refused and (self.budget is None or self.image_bytes <= self.budget)

    @property
    def keeps_textures(self) -> bool:
        return self.keeps_images and self.texture_bytes > 0 and (
            self.budget is None or self.image_bytes + self.texture_bytes <= self.budget)

    def _memory(self) -> str:
        if self.available is None:
            return "the memory available is unknown"
        each = f", shared by {self.processes} processes" if self.processes > 1 else ""
        return f"{MEMORY_SHARE:.0%} of the {self.available / GIB:.1f} GiB available{each}"

    def line(self, category: str, size: int) -> str | None:
        """What this process does, in one line (None: nothing to say: --no-image-cache, mode d)."""
        if self.refused or self.image_bytes == 0:
            return None
        if not self.keeps_images:
            return (f"[{category}] note: its {self.n_images} training images would take {_mib(self.image_bytes)} "
                    f"decoded at {size} px, more than {self._memory()}: decoding them from their files every "
                    f"epoch instead (the same batches, slower)")
        textures = ""
        if self.keeps_textures:
            textures = f", and {self.n_textures} texture images ({_mib(self.texture_bytes)})"
        elif self.texture_bytes:
            textures = f"; the {self.n_textures} texture images ({_mib(self.texture_bytes)}) do not fit too"
        return (f"[{category}] {self.n_images} training images decoded once and kept in memory at {size} px "
                f"({_mib(self.image_bytes)}){textures}; {self._memory()}")


    def report(self, category: str, size: int) -> str:
        """``--dry-run``'s line: what keeping the images decoded takes, and whether training will."""
        if self.image_bytes == 0:
            return "image cache: none (depth modes keep their depth maps, no rgb images to decode)"
        textures = f" and the {self.n_textures} texture images {_mib(self.texture_bytes)}" if self.texture_bytes else ""
        if self.refused:
            verdict = "--no-image-cache: training decodes them from their files every epoch"
        elif not self.keeps_images:
            verdict = "too large: training decodes them from their files every epoch"
        else:
            verdict = "kept in memory" + ("" if self.keeps_textures or not self.texture_bytes else
                                          " (the training images; the textures do not fit too)")
        return (f"image cache: {self.n_images} training images ({category}) take "
                f"{_mib(self.image_bytes)} decoded at {size} px{textures}; {self._memory()}: {verdict}")


def plan(n_images: int, mode: str, size: int, textures: TextureSource | None, refused: bool,
         available: int | None = None, processes: int | None = None) -> CachePlan:
    """The plan for ``n_images`` training images at ``size`` px (``available``, ``processes``:
    this machine's unless given)."""
    rgb = has_rgb(mode)
    texture_bytes = textures.decoded_bytes(size) if rgb and textures is not None and \
        not textures.keeps_decoded(size) else 0
    return CachePlan(n_images, decoded_bytes(n_images, size) if rgb else 0, len(textures.paths) if textures else 0,
                     texture_bytes, available_memory() if available is None else available,
                     processes_on_this_machine() if processes is None else processes, refused)


def keep_decoded(train_set: TrainDataset, textures: TextureSource | None, refused: bool,
                 progress: bool) -> CachePlan:
    """Decode the training images (and textures) once if the plan keeps them; returns the plan."""
    chosen = plan(len(train_set), train_set.mode, train_set.img_size, textures, refused)
    threads = max(1, available_cores() // chosen.processes)
    if chosen.keeps_images:
        train_set.keep_decoded(threads, progress)
    if chosen.keeps_textures and textures is not None:
        textures.keep_decoded(train_set.img_size, threads, progress)
    return chosen
