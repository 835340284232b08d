"""Classification readers on tiny data made in tmp_path: ImageFolder, MNIST IDX, CIFAR-10 pickles, digits."""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvtool.data.classification_sets import TensorImageSet, dataset_stats, open_classification_set
from cvtool.data.image_io import is_readable_image, read_image
from cvtool.data.splits import stratified_split
from cvtool.errors import CvtoolError


def _rgb(seed: int, h: int = 5, w: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_class_tree(folder: Path, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_rgb(i)).save(folder / name / f"{i:03d}.png")


# --- ImageFolder -------------------------------------------------------------------------------------------


def test_imagefolder_split_dirs_give_sorted_class_labels_and_exact_pixels(tmp_path):
    _write_class_tree(tmp_path / "train", {"zebra": 2, "ant": 3})
    _write_class_tree(tmp_path / "val", {"zebra": 1, "ant": 1})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    Image.fromarray(_rgb(9)).save(tmp_path / "train" / "ant" / ".hidden.png")
    (tmp_path / "train" / ".cache").mkdir()
    Image.fromarray(_rgb(8)).save(tmp_path / "train" / "zebra" / "UPPER.PNG")

    train = open_classification_set("imagefolder", tmp_path, "train")
    val = open_classification_set("imagefolder", tmp_path, "val", classes=train.classes)

    assert train.classes == ["ant", "zebra"] and train.channels == 3
    assert train.targets == [0, 0, 0, 1, 1, 1]
    assert val.targets == [0, 1]
    assert train.source == f"ImageFolder {tmp_path / 'train'} (2 classes, 6 images)"
    image, label = train[1]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and label == 0
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(_rgb(1)))


def test_imagefolder_without_split_dirs_uses_a_seeded_stratified_split(tmp_path):
    _write_class_tree(tmp_path, {"a": 10, "b": 5, "c": 2})
    everything = open_classification_set("imagefolder", tmp_path, "all")
    train = open_classification_set("imagefolder", tmp_path, "train", val_fraction=0.2, seed=3)
    val = open_classification_set("imagefolder", tmp_path, "val", val_fraction=0.2, seed=3)
    test = open_classification_set("imagefolder", tmp_path, "test", val_fraction=0.2, seed=3)

    assert len(everything) == 17
    assert set(train.files).isdisjoint(val.files)
    assert sorted(train.files + val.files) == sorted(everything.files)
    assert [val.targets.count(c) for c in range(3)] == [2, 1, 1]
    assert test.files == val.files
    again = open_classification_set("imagefolder", tmp_path, "val", val_fraction=0.2, seed=3)
    assert again.files == val.files
    splits = {tuple(open_classification_set("imagefolder", tmp_path, "val", seed=s).files) for s in range(6)}
    assert len(splits) > 1


def test_imagefolder_missing_split_names_the_splits_present(tmp_path):
    _write_class_tree(tmp_path / "train", {"a": 1})
    with pytest.raises(CvtoolError, match=r"unknown split 'test'.*use one of: train$"):
        open_classification_set("imagefolder", tmp_path, "test")


def test_imagefolder_class_list_mismatch_names_the_folders(tmp_path):
    _write_class_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    with pytest.raises(CvtoolError, match=r"unexpected folders: \['dog'\]; missing folders: \['bird'\]"):
        open_classification_set("imagefolder", tmp_path, "train", classes=["cat", "bird"])


def test_imagefolder_given_class_list_sets_label_order(tmp_path):
    _write_class_tree(tmp_path / "train", {"cat": 1, "dog": 2})
    ds = open_classification_set("imagefolder", tmp_path, "train", classes=["dog", "cat"])
    assert ds.classes == ["dog", "cat"] and ds.targets == [0, 0, 1]


def test_imagefolder_empty_class_folder_is_an_error_naming_it(tmp_path):
    _write_class_tree(tmp_path / "train", {"full": 1})
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "readme.md").write_text("x")
    with pytest.raises(CvtoolError, match="class folder has no images") as info:
        open_classification_set("imagefolder", tmp_path, "train")
    assert info.value.where == str(tmp_path / "train" / "empty")


def test_imagefolder_with_one_class_folder_is_refused_naming_it(tmp_path):
    _write_class_tree(tmp_path / "train", {"cats": 2})
    with pytest.raises(CvtoolError) as info:
        open_classification_set("imagefolder", tmp_path, "train")
    assert info.value.what == "classification needs at least 2 classes, found 1 class folder: cats"
    assert info.value.where == str(tmp_path / "train")


def _tree_with_corrupt_files(root: Path) -> tuple[Path, Path]:
    _write_class_tree(root / "train", {"a": 3, "b": 2})
    garbage = root / "train" / "a" / "x.png"
    garbage.write_bytes(b"these are not the bytes of a PNG" * 4)
    png = (root / "train" / "b" / "000.png").read_bytes()
    truncated = root / "train" / "b" / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    return garbage, truncated


def test_corrupt_images_error_naming_the_file_when_read(tmp_path):
    garbage, truncated = _tree_with_corrupt_files(tmp_path)
    ds = open_classification_set("imagefolder", tmp_path, "train")
    assert len(ds) == 7  # no pre-scan without skip_invalid
    for bad in (garbage, truncated):
        with pytest.raises(CvtoolError, match="corrupt or unreadable") as info:
            ds[ds.files.index(str(bad))]
        assert info.value.where == str(bad) and "skip_invalid=true" in info.value.fix


def test_corrupt_image_read_in_a_dataloader_worker_raises_the_same_error_in_the_main_process(tmp_path):
    garbage, _ = _tree_with_corrupt_files(tmp_path)
    ds = open_classification_set("imagefolder", tmp_path, "train")
    with pytest.raises(CvtoolError) as direct:
        ds[ds.files.index(str(garbage))]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [ds.files.index(str(garbage))]), num_workers=1)
    with pytest.raises(CvtoolError) as from_worker:
        next(iter(loader))
    assert (from_worker.value.what, from_worker.value.where, from_worker.value.fix) == (
        direct.value.what, direct.value.where, direct.value.fix)
    assert str(from_worker.value) == direct.value.line()
    assert "DataLoader worker" in "".join(from_worker.value.__notes__)  # the worker's traceback, for --debug


def test_skip_invalid_drops_corrupt_files_counts_and_logs_them(tmp_path, caplog):
    garbage, truncated = _tree_with_corrupt_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cvtool.data.classification_sets"):
        ds = open_classification_set("imagefolder", tmp_path, "train", skip_invalid=True)
    assert len(ds) == 5 and ds.num_skipped == 2
    assert str(garbage) not in ds.files and str(truncated) not in ds.files
    assert ds.targets == [0, 0, 0, 1, 1]
    assert "skipped 2 corrupt" in caplog.text and str(garbage) in caplog.text
    assert all(ds[i][0].shape == (3, 5, 7) for i in range(len(ds)))


def test_integrity_check_catches_flipped_png_bytes_and_truncated_jpegs(tmp_path):
    Image.fromarray(_rgb(0, 16, 16)).save(tmp_path / "ok.png")
    Image.fromarray(_rgb(0, 16, 16)).save(tmp_path / "ok.jpg")
    png, jpg = (tmp_path / "ok.png").read_bytes(), (tmp_path / "ok.jpg").read_bytes()
    flipped = bytearray(png)
    flipped[len(png) - 30] ^= 0x10  # inside the compressed pixel data (IDAT), before the IEND chunk
    (tmp_path / "flipped.png").write_bytes(flipped)
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    checks = {
        name: is_readable_image(tmp_path / name) for name in ("ok.png", "ok.jpg", "flipped.png", "cut.jpg")
    }
    assert checks == {"ok.png": True, "ok.jpg": True, "flipped.png": False, "cut.jpg": False}


def test_gray_rgba_and_palette_images_come_out_as_rgb_uint8(tmp_path):
    folder = tmp_path / "train" / "only"
    folder.mkdir(parents=True)
    rgb = _rgb(0)
    Image.fromarray(rgb[..., 0]).save(folder / "a_gray.png")
    Image.fromarray(np.dstack([rgb, np.full((5, 7), 7, np.uint8)])).save(folder / "b_rgba.png")
    palette = Image.fromarray(np.arange(35, dtype=np.uint8).reshape(5, 7), mode="P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 3)])
    palette.save(folder / "c_palette.png")

    ds = open_classification_set("imagefolder", tmp_path, "train", classes=["only"])
    gray, rgba, pal = (ds[i][0] for i in range(3))
    for image in (gray, rgba, pal):
        assert image.shape == (3, 5, 7) and image.dtype == torch.uint8
    assert torch.equal(gray, torch.from_numpy(rgb[..., 0]).expand(3, 5, 7))
    assert torch.equal(rgba.permute(1, 2, 0), torch.from_numpy(rgb))
    assert pal[:, 1, 2].tolist() == [9, 246, 3]


@pytest.mark.parametrize("suffix", [".bmp", ".tiff", ".ppm", ".jpg"])
def test_read_image_decodes_other_formats_and_gray_mode(tmp_path, suffix):
    rgb = _rgb(4)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(rgb).save(path, **({"quality": 100} if suffix == ".jpg" else {}))
    image = read_image(path)
    gray = read_image(path, mode="GRAY")
    assert image.shape == (3, 5, 7) and gray.shape == (1, 5, 7) and gray.dtype == torch.uint8
    with Image.open(path) as pil:
        expected_rgb, expected_gray = np.array(pil.convert("RGB")), np.array(pil.convert("L"))
    if suffix != ".jpg":
        assert np.array_equal(expected_rgb, rgb) and torch.equal(gray[0], torch.from_numpy(expected_gray))
    tolerance = 2 if suffix == ".jpg" else 0  # JPEG: libjpeg builds may differ in IDCT rounding
    assert (image.permute(1, 2, 0).int() - torch.from_numpy(expected_rgb).int()).abs().max() <= tolerance
    assert (gray[0].int() - torch.from_numpy(expected_gray).int()).abs().max() <= tolerance


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_image_scales_16_bit_images_to_uint8(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16)).save(path)
    assert read_image(path)[:, 0].tolist() == [[0, 128, 255]] * 3


# --- MNIST -------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_mnist(folder: Path, part: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = _idx_bytes(array)
        name = f"{part}-{kind}-ubyte"
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)


def _digits_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("layout", ["root", "MNIST/raw"])
def test_mnist_reads_plain_and_gzipped_idx_files_exactly(tmp_path, layout):
    folder = tmp_path if layout == "root" else tmp_path / "MNIST" / "raw"
    train_images, train_labels = _digits_like(4, seed=0)
    test_images, test_labels = _digits_like(3, seed=1)
    _write_mnist(folder, "train", train_images, train_labels, gz=True)
    _write_mnist(folder, "t10k", test_images, test_labels, gz=False)

    train = open_classification_set("mnist", tmp_path, "train")
    val = open_classification_set("mnist", tmp_path, "val")

    assert train.classes == [str(d) for d in range(10)] and train.channels == 1
    assert train.targets == train_labels.tolist() and val.targets == test_labels.tolist()
    assert train.images.shape == (4, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train[2][0][0], torch.from_numpy(train_images[2]))
    assert torch.equal(val[1][0][0], torch.from_numpy(test_images[1]))


def test_mnist_wrong_magic_is_an_error_naming_the_file(tmp_path):
    images, labels = _digits_like(2, seed=0)
    _write_mnist(tmp_path, "t10k", images, labels, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + bad.read_bytes()[4:])
    with pytest.raises(CvtoolError, match="t10k-images-idx3-ubyte is not an MNIST IDX file") as info:
        open_classification_set("mnist", tmp_path, "test")
    assert info.value.where == str(bad)


def test_mnist_truncated_file_is_not_an_idx_file(tmp_path):
    images, labels = _digits_like(2, seed=0)
    _write_mnist(tmp_path, "train", images, labels, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CvtoolError, match="train-images-idx3-ubyte is not an MNIST IDX file"):
        open_classification_set("mnist", tmp_path, "train")


def test_mnist_missing_files_message_names_the_expected_files(tmp_path):
    with pytest.raises(CvtoolError, match="MNIST files not found") as info:
        open_classification_set("mnist", tmp_path, "train")
    assert "t10k-labels-idx1-ubyte[.gz]" in info.value.fix and "dataset.download=true" in info.value.fix
    with pytest.raises(CvtoolError, match="dataset root not found") as info:
        open_classification_set("mnist", tmp_path / "nowhere", "train")
    assert "train-images-idx3-ubyte[.gz]" in info.value.fix


def test_mnist_download_uses_torchvision_and_reports_network_errors(tmp_path, monkeypatch):
    images, labels = _digits_like(2, seed=5)

    class FakeMNIST:
        def __init__(self, root, train, download):
            _write_mnist(Path(root) / "MNIST" / "raw", "train" if train else "t10k", images, labels, gz=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    ds = open_classification_set("mnist", tmp_path / "fresh", "val", download=True)
    assert ds.targets == labels.tolist()

    class OfflineMNIST:
        def __init__(self, root, train, download):
            raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    with pytest.raises(CvtoolError, match=r"MNIST download failed \(no network\?\)"):
        open_classification_set("mnist", tmp_path / "other", "train", download=True)


# --- CIFAR-10 ----------------------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(folder: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        with (folder / name).open("wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": []}, f, protocol=2)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_vis": 3072, "num_cases_per_batch": 2}, f)


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10_reads_official_batches_in_rgb_plane_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    train_rows = {f"data_batch_{i}": (_cifar_rows(2, i), [i, 9 - i]) for i in range(1, 6)}
    test_data = _cifar_rows(3, 0)
    test_data[1, 0], test_data[1, 1024], test_data[1, 2048] = 200, 100, 50  # pixel (0, 0): R, G, B
    test_data[1, 32 + 5] = 17  # red plane, row 1, column 5
    _write_cifar(folder, {**train_rows, "test_batch": (test_data, [4, 7, 2])})

    train = open_classification_set("cifar10", tmp_path, "train")
    test = open_classification_set("cifar10", tmp_path, "test")

    assert train.classes == CIFAR_NAMES and train.channels == 3
    assert train.targets == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4] and len(test) == 3
    image, label = test[1]
    assert label == 7 and image.shape == (3, 32, 32)
    assert image[:, 0, 0].tolist() == [200, 100, 50] and image[0, 1, 5] == 17
    assert torch.equal(train[9][0].flatten(), torch.from_numpy(train_rows["data_batch_5"][0][1]))


def test_cifar10_files_directly_under_root_are_found(tmp_path):
    _write_cifar(tmp_path, {"test_batch": (_cifar_rows(2, 0), [0, 1])})
    assert open_classification_set("cifar10", tmp_path, "val").targets == [0, 1]


def test_cifar10_missing_files_message_lists_them(tmp_path):
    with pytest.raises(CvtoolError, match="CIFAR-10 files not found") as info:
        open_classification_set("cifar10", tmp_path, "train")
    assert "data_batch_1..data_batch_5, test_batch and batches.meta" in info.value.fix


def test_cifar10_batch_with_wrong_shape_is_rejected(tmp_path):
    _write_cifar(tmp_path, {"test_batch": (np.zeros((2, 1024), np.uint8), [0, 1])})
    with pytest.raises(CvtoolError, match=r"test_batch is not a CIFAR-10 python-version file \('data'"):
        open_classification_set("cifar10", tmp_path, "test")


class _RunsCode:
    def __reduce__(self):
        return (print, ("pickle payload executed",))


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    _write_cifar(tmp_path, {"test_batch": (_cifar_rows(2, 0), [0, 1])})
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": _RunsCode(), "labels": [0]}))
    with pytest.raises(CvtoolError, match=r"refusing to load builtins\.print"):
        open_classification_set("cifar10", tmp_path, "test")
    assert "payload executed" not in capsys.readouterr().out


# --- scikit-learn digits -----------------------------------------------------------------------------------


def test_digits_splits_all_1797_images_stratified_and_seeded():
    train = open_classification_set("digits", "unused", "train", val_fraction=0.25, seed=1)
    val = open_classification_set("digits", "unused", "val", val_fraction=0.25, seed=1)
    everything = open_classification_set("digits", "unused", "all")

    assert len(train) + len(val) == len(everything) == 1797
    assert abs(len(val) - 0.25 * 1797) <= 10
    assert train.classes == [str(d) for d in range(10)] and train.channels == 1
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(everything.images.min()) == 0 and int(everything.images.max()) == 255
    assert set(everything.images.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)}
    assert all(abs(val.targets.count(c) - 0.25 * everything.targets.count(c)) <= 0.5 for c in range(10))
    same = open_classification_set("digits", "unused", "val", val_fraction=0.25, seed=1)
    other = open_classification_set("digits", "unused", "val", val_fraction=0.25, seed=2)
    assert torch.equal(same.images, val.images) and not torch.equal(other.images, val.images)


def test_transform_is_applied_to_images():
    ds = open_classification_set("digits", "unused", "val", transform=v2.Resize((32, 32), antialias=True))
    image, label = ds[0]
    assert image.shape == (1, 32, 32) and isinstance(label, int)
    ds.transform = None
    assert ds[0][0].shape == (1, 8, 8)


# --- common ------------------------------------------------------------------------------------------------


def test_unknown_kind_lists_the_valid_kinds(tmp_path):
    with pytest.raises(CvtoolError, match="use one of: imagefolder, mnist, cifar10, digits"):
        open_classification_set("svhn", tmp_path, "train")


def test_unknown_split_and_missing_root_are_user_errors(tmp_path):
    with pytest.raises(CvtoolError, match=r"unknown split 'holdout'.*train, val, test"):
        open_classification_set("mnist", tmp_path, "holdout")
    with pytest.raises(CvtoolError, match="dataset root not found") as info:
        open_classification_set("imagefolder", tmp_path / "missing", "train")
    assert info.value.where == str(tmp_path / "missing")


def test_stratified_split_is_deterministic_disjoint_and_keeps_a_val_item_per_class():
    targets = [0] * 10 + [1] * 3 + [2] * 2 + [3]
    train, val = stratified_split(targets, 0.2, seed=7)
    assert (train, val) == stratified_split(targets, 0.2, seed=7)
    assert sorted(train + val) == list(range(len(targets))) and not set(train) & set(val)
    assert [sum(targets[i] == c for i in val) for c in range(4)] == [2, 1, 1, 0]
    assert stratified_split(targets, 0.0, seed=7) == (list(range(len(targets))), [])
    with pytest.raises(CvtoolError, match="val_fraction must be in"):
        stratified_split(targets, 1.5, seed=0)


def test_dataset_stats_gives_per_channel_mean_and_std():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[:2, 2] = 255  # blue: half the images white, half black
    ds = TensorImageSet(images, [0, 1, 0, 1], ["a", "b"], "test")
    mean, std = dataset_stats(ds)
    assert mean == pytest.approx([0.0, 1.0, 0.5]) and std == pytest.approx([0.0, 0.0, 0.5])
    sampled_mean, _ = dataset_stats(ds, max_items=2, seed=0)
    assert sampled_mean[:2] == pytest.approx([0.0, 1.0])
