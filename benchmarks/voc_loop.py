"""A straightforward per-detection loop implementation of the PASCAL VOC devkit's evaluation (VOCevaldet.m /
py-faster-rcnn's voc_eval.py, with the stable sort of the MATLAB devkit). It is the baseline of
benchmarks/eval_speed.py and the oracle that tests compare cvtool's vectorised code with."""

from __future__ import annotations


def voc_loop_ap(gt: dict, dets: list, use_07: bool) -> float | None:
    """gt: {image_id: [(box, difficult), ...]} of one class; dets: [(image_id, score, box), ...] of that class in
    file order; boxes (xmin, ymin, xmax, ymax) 1-based inclusive. None when the class has no non-difficult GT."""
    npos = sum(not difficult for objects in gt.values() for _, difficult in objects)
    if npos == 0:
        return None
    taken = {image_id: [False] * len(objects) for image_id, objects in gt.items()}
    ranked = sorted(range(len(dets)), key=lambda i: -dets[i][1])  # Python's sort is stable
    tp, fp = [], []
    for i in ranked:
        image_id, _, box = dets[i]
        best, best_j = -float("inf"), -1
        for j, (g, _) in enumerate(gt.get(image_id, [])):
            iw = min(box[2], g[2]) - max(box[0], g[0]) + 1
            ih = min(box[3], g[3]) - max(box[1], g[1]) + 1
            if iw > 0 and ih > 0:
                inter = iw * ih
                union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
                if inter / union > best:
                    best, best_j = inter / union, j
        if best >= 0.5:
            if gt[image_id][best_j][1]:
                continue  # difficult: neither TP nor FP
            if not taken[image_id][best_j]:
                taken[image_id][best_j] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        else:
            tp.append(0)
            fp.append(1)
    recall, precision, tps, t, f = [], [], [], 0, 0
    for a, b in zip(tp, fp):
        t, f = t + a, f + b
        tps.append(t)
        recall.append(t / npos)
        precision.append(t / (t + f))
    if use_07:  # max precision at recall >= k/10, compared exactly as 10 * tp >= k * npos
        ap = 0.0
        for k in range(11):
            ps = [p for p, t in zip(precision, tps) if 10 * t >= k * npos]
            ap += max(ps) if ps else 0.0
        return ap / 11
    mrec, mpre = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])

