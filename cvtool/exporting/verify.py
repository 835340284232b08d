"""Numerical verification of an exported file against the eager model: dense outputs by max |difference|, detections
by matching boxes, scores and labels (and comparing the matched detections' keypoints)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass
class Check:
    sample: str  # e.g. "2x3x96x160"
    passed: bool
    detail: str
    max_diff: float | None = None


def shape_name(image: Tensor) -> str:
    return "x".join(str(s) for s in image.shape)


def dense_check(sample: str, reference: list[Tensor], exported: list[Tensor], atol: float, rtol: float) -> Check:
    """Outputs agree when max |ref - exported| <= atol + rtol * max |ref|, output by output."""
    if len(reference) != len(exported) or any(r.shape != e.shape for r, e in zip(reference, exported)):
        got = ", ".join(shape_name(e) for e in exported)
        want = ", ".join(shape_name(r) for r in reference)
        return Check(sample, False, f"output shapes {got}, eager {want}")
    worst = None  # (diff / tolerance, diff, tolerance) of the output closest to failing
    for ref, out in zip(reference, exported):
        ref, out = ref.detach().float().cpu(), out.detach().float().cpu()
        diff = float((ref - out).abs().max()) if ref.numel() else 0.0
        tol = atol + rtol * (float(ref.abs().max()) if ref.numel() else 0.0)
        ratio = diff / tol if tol > 0 else float("inf") if diff > 0 else 0.0
        worst = max(worst or (-1.0, 0.0, 0.0), (ratio, diff, tol))
    ratio, diff, tol = worst
    passed = ratio <= 1.0
    return Check(sample, passed, f"max |diff| {diff:.2e} (tolerance {tol:.2e})", diff)


def _partner(a: dict, i: int, b: dict, box_atol: float) -> tuple[int, float] | None:
    """b's same-label detection with the box corners nearest to a's detection i, and their largest corner
    difference; None when there is none within box_atol px or at IoU >= 0.5."""
    same = (b["labels"] == a["labels"][i]).nonzero().flatten()
    if not len(same):
        return None
    corners = (b["boxes"][same].float() - a["boxes"][i].float()).abs().amax(1)
    j, diff = int(same[corners.argmin()]), float(corners.min())
    if diff <= box_atol or float(box_iou(a["boxes"][i:i + 1].float(), b["boxes"][j:j + 1].float())) >= 0.5:
        return j, diff
    return None


def _one_way(a: dict, b: dict, min_score: float, box_atol: float,
             score_atol: float) -> tuple[int, int, int, float, float, float]:
    """Of a's detections scoring >= min_score: how many have a partner in b, how many of the others sit at b's
    score cut-off (scoring no more than b's lowest + score_atol: the last places of a top-k or a threshold, where
    a last-digit difference may swap detections), and the largest box-corner and score (and mask probability)
    differences to the partners, and their largest keypoint x/y difference (0 without keypoints)."""
    confident = (a["scores"] >= min_score).nonzero().flatten().tolist()
    floor = float(b["scores"].min()) if len(b["scores"]) else float("-inf")
    matched, at_cutoff, box_diff, score_diff, keypoint_diff = 0, 0, 0.0, 0.0, 0.0
    for i in confident:
        partner = _partner(a, i, b, box_atol)
        if partner is None:
            at_cutoff += float(a["scores"][i]) <= floor + score_atol
            continue
        j, corners = partner
        matched += 1
        box_diff = max(box_diff, corners)
        score_diff = max(score_diff, float((a["scores"][i] - b["scores"][j]).abs()))
        if "masks" in a and "masks" in b:  # mask probabilities count as scores
            score_diff = max(score_diff, float((a["masks"][i].float() - b["masks"][j].float()).abs().max()))
        if "keypoints" in a and "keypoints" in b:  # (x, y, visibility) per keypoint: the positions, in px
            moved = (a["keypoints"][i, :, :2].float() - b["keypoints"][j, :, :2].float()).abs()
            keypoint_diff = max(keypoint_diff, float(moved.max()) if moved.numel() else 0.0)
    return matched, at_cutoff, len(confident), box_diff, score_diff, keypoint_diff


def detection_check(sample: str, reference: dict, exported: dict, min_score: float, box_atol: float,
                    score_atol: float, keypoint_atol: float | None = None) -> Check:
    """Every detection scoring >= min_score on either side has a same-label partner on the other within box_atol
    px and score_atol, apart from detections at the other side's score cut-off; with keypoint_atol, the partners'
    keypoints lie within keypoint_atol px of each other."""
    reference = {k: v.detach().cpu() for k, v in reference.items()}
    exported = {k: v.detach().cpu() for k, v in exported.items()}
    m1, c1, n1, box1, score1, kp1 = _one_way(reference, exported, min_score, box_atol, score_atol)
    m2, c2, n2, box2, score2, kp2 = _one_way(exported, reference, min_score, box_atol, score_atol)
    box_diff, score_diff, keypoint_diff = max(box1, box2), max(score1, score2), max(kp1, kp2)
    passed = m1 + c1 == n1 and m2 + c2 == n2 and box_diff <= box_atol and score_diff <= score_atol
    cutoff = f" ({c1 + c2} at the score cut-off)" if c1 + c2 else ""
    detail = (f"{m1}/{n1} eager detections matched, {m2}/{n2} back{cutoff}; max box diff {box_diff:.2e} px "
              f"(tolerance {box_atol:g}), max score diff {score_diff:.2e} (tolerance {score_atol:g})")
    if keypoint_atol is not None and "keypoints" in reference:
        passed = passed and keypoint_diff <= keypoint_atol
        detail += f", max keypoint diff {keypoint_diff:.2e} px (tolerance {keypoint_atol:g})"
    return Check(sample, passed, detail, box_diff)


def as_detections(outputs: list[Tensor], names: list[str]) -> dict[str, Tensor]:
    return {name: torch.as_tensor(o) for name, o in zip(names, outputs)}
