"""Plain image files (for `cvtool predict source=...`): a file, a directory, or a glob."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from cvtool.errors import CvtoolError

from .image_io import IMAGE_EXTENSIONS, is_image_file, read_image


def list_images(source: str | Path) -> list[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if is_image_file(p))
        if files:
            return files
        raise CvtoolError("no images found", where=str(source),
                          fix=f"put image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) there")
    raise CvtoolError("source not found", where=str(source), fix="pass source=IMAGE_FILE or source=DIRECTORY")


class ImageFiles(Dataset):
    """Items are (uint8 image C×H×W after `transform`, index)."""

    def __init__(self, files: list[Path], channels: int, transform=None):
        self.files, self.mode, self.transform = files, "GRAY" if channels == 1 else "RGB", transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = read_image(self.files[index], mode=self.mode)
        return (self.transform(image) if self.transform else image), index
