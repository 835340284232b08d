"""Embedding pictures: nearest neighbours, ROC, projection and neighbour grids (numpy inputs, no torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import pixels_of, png

from cvtool.errors import CvtoolError
from cvtool.viz import embedding_plots as ep

GREEN, RED = (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)




def clusters(per_identity: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_identity)), per_identity)
    embeddings = rng.normal(size=(len(per_identity), 8))[labels] + 0.1 * rng.normal(size=(len(labels), 8))
    return embeddings, labels, [f"person_{i}" for i in range(len(per_identity))]


def test_nearest_neighbours_hand_case_excludes_the_query_not_its_duplicate_and_breaks_ties_by_index():
    embeddings = np.array([[0, 0], [1, 0], [3, 0], [0, 2], [1, 0]], dtype=np.float32)
    indices, distances = ep.nearest_neighbours(embeddings, [0, 4], k=3)
    # item 0: d(1) = d(4) = 1 (tie: 1 first), d(3) = 2, d(2) = 3; item 4 equals item 1: d(1) = 0, d(0) = 1, d(2) = 2
    np.testing.assert_array_equal(indices, [[1, 4, 3], [1, 0, 2]])
    np.testing.assert_allclose(distances, [[1, 1, 2], [0, 1, 2]])


def test_nearest_neighbours_equals_brute_force_with_duplicates():
    rng = np.random.default_rng(3)
    embeddings = rng.integers(0, 3, size=(40, 3)).astype(np.float64)  # many exact ties and duplicates
    queries = [0, 7, 39]
    indices, distances = ep.nearest_neighbours(embeddings, queries, k=6)
    full = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2)
    for row, query in enumerate(queries):
        others = np.array([i for i in range(40) if i != query])
        expected = others[np.lexsort((others, full[query, others]))][:6]
        np.testing.assert_array_equal(indices[row], expected)
        np.testing.assert_allclose(distances[row], full[query, expected])


def test_nearest_neighbours_clips_k_to_the_other_items_and_refuses_k_below_one():
    embeddings = np.array([[0.0], [2.0], [5.0], [1.0]])
    indices, distances = ep.nearest_neighbours(embeddings, [0], k=10)
    np.testing.assert_array_equal(indices, [[3, 1, 2]])
    np.testing.assert_allclose(distances, [[1, 2, 5]])
    with pytest.raises(CvtoolError) as error:
        ep.nearest_neighbours(embeddings, [0], k=0)
    assert error.value.where == "k"


def test_neighbours_figure_one_query_with_k_beyond_the_items_draws_every_other_item(tmp_path):
    embeddings = np.array([[0.0], [2.0], [5.0], [1.0]])
    labels, names = np.array([0, 0, 1, 1]), ["Aaron_Peirsol", "Arnold_Schwarzenegger"]
    images = [np.full((40, 30, 3), 60 * i, dtype=np.uint8) for i in range(4)]
    indices, distances = ep.nearest_neighbours(embeddings, [0], k=10)  # clipped to the 3 other items
    image = png(ep.neighbours_figure(tmp_path / "nn.png", images, [0], indices, distances, labels, names,
                                     threshold=1.5))
    assert image.size == (760, 260)  # 1 query + 3 neighbours at 1.9 in x 2.6 in, 100 dpi
    # neighbour 1 shares the query's identity (green frame), neighbours 3 and 2 do not (red frames)
    assert pixels_of(image, GREEN) > 400 and pixels_of(image, RED) > 2 * 400


def test_neighbours_figure_frames_all_green_when_every_neighbour_shares_the_identity(tmp_path):
    labels, names = np.array([0, 0, 0, 1]), ["a", "b"]
    images = {i: np.full((20, 20, 3), 200, dtype=np.uint8) for i in range(3)}  # only the drawn items
    image = png(ep.neighbours_figure(tmp_path / "nn.png", images, [0, 1], np.array([[1, 2], [0, 2]]),
                                     np.array([[0.5, 0.7], [0.5, 0.6]]), labels, names))
    assert image.size == (570, 470)
    assert pixels_of(image, GREEN) > 4 * 300 and pixels_of(image, RED) == 0


def test_roc_figure_writes_both_panels_also_for_a_perfect_roc(tmp_path):
    fpr, tpr = np.array([0, 0, 0.001, 0.01, 0.2, 1]), np.array([0, 0.7, 0.8, 0.95, 0.99, 1])
    image = png(ep.roc_figure(tmp_path / "roc.png", fpr, tpr, auc=0.99, eer=0.05, tar_at_far=0.8, title="val"))
    assert image.size == (1100, 460)
    assert pixels_of(image, RED) > 0  # the TAR at FAR operating point
    perfect = png(ep.roc_figure(tmp_path / "perfect.png", [0, 0, 1], [0, 1, 1], auc=1.0, eer=0.0))
    assert perfect.size == (1100, 460) and pixels_of(perfect, RED) == 0  # no tar_at_far: no point drawn


def test_projection_pca_is_deterministic_and_keeps_the_identities_with_most_items(tmp_path, monkeypatch):
    embeddings, labels, names = clusters([1, 3, 2, 3, 2])
    first = png(ep.projection_figure(tmp_path / "a.png", embeddings, labels, names, method="pca"))
    ep.projection_figure(tmp_path / "b.png", embeddings, labels, names, method="pca")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert first.size == (950, 650)  # with the legend beside the axes

    drawn = []
    monkeypatch.setattr(ep, "_project", lambda points, method, seed: drawn.append(points) or points[:, :2])
    ep.projection_figure(tmp_path / "c.png", embeddings, labels, names, max_identities=3)
    # counts [1, 3, 2, 3, 2]: identities 1 and 3 (3 items), then 2 (first of the two with 2 items)
    np.testing.assert_array_equal(drawn[0], embeddings[np.isin(labels, [1, 2, 3])])


def test_projection_leaves_the_legend_out_above_twenty_identities(tmp_path):
    embeddings, labels, names = clusters([2] * 21)
    image = png(ep.projection_figure(tmp_path / "p.png", embeddings, labels, names, max_identities=25))
    assert image.size == (750, 650)


def test_projection_tsne_runs_on_sixty_points_and_clips_perplexity(tmp_path):
    embeddings, labels, names = clusters([12] * 5)
    png(ep.projection_figure(tmp_path / "t.png", embeddings, labels, names, method="tsne", seed=1))
    few, few_labels, few_names = clusters([2, 2])  # 4 points: the default perplexity 30 would be refused
    png(ep.projection_figure(tmp_path / "few.png", few, few_labels, few_names, method="tsne"))


def test_projection_refuses_an_unknown_method_and_too_few_points(tmp_path):
    embeddings, labels, names = clusters([3, 3])
    with pytest.raises(CvtoolError) as error:
        ep.projection_figure(tmp_path / "u.png", embeddings, labels, names, method="umap")
    assert error.value.where == "method" and "pca" in error.value.fix and "tsne" in error.value.fix
    with pytest.raises(CvtoolError, match="at least 3"):
        ep.projection_figure(tmp_path / "u.png", embeddings[:2], labels[:2], names)
    assert not (tmp_path / "u.png").exists()


def test_module_works_without_torch(tmp_path):
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('torch imported by embedding_plots')\n")
    script = ("import sys\n"
              "import numpy as np\n"
              "from cvtool.viz import embedding_plots as ep\n"
              f"ep.roc_figure({str(tmp_path / 'roc.png')!r}, [0, 0.5, 1], [0, 0.9, 1], auc=0.7, eer=0.3)\n"
              f"ep.projection_figure({str(tmp_path / 'p.png')!r}, np.eye(4), np.array([0, 0, 1, 1]), ['a', 'b'])\n"
              "assert 'torch' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison.parent), str(Path.cwd())])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "roc.png").exists() and (tmp_path / "p.png").exists()
