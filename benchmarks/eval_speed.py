"""How long scoring takes: VID mAP, motion mAP and COCO AP of ~2,000 synthetic frames.

    python benchmarks/eval_speed.py [--videos 67 --frames 30 --size 256 --detections-per-frame 20]

Generates a synthetic split in a temporary folder, turns its ground truth into detections with
score 1 plus random false positives scored below 0.9 (so the matcher has work to do), and times
``sltnet-eval``'s path: loading and validating both files, then every metric. Every false positive
ranks below every true box, so each metric must print 100.0.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sltnet.data.stcoco import load_stcoco
from sltnet.data.synthetic.writing import generate_split
from sltnet.evaluation import evaluate, format_table, load_detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=67)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--detections-per-frame", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        summary = generate_split(folder, "speed", args.videos, args.frames, args.size, seed=0, workers=2)
        ground_truth = json.loads(Path(summary.json_path).read_text())
        rng = np.random.default_rng(0)
        detections = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in ground_truth["annotations"]
        ]
        category_ids = [c["id"] for c in ground_truth["categories"]]
        for image in ground_truth["images"]:
            for _ in range(args.detections_per_frame - 3):
                x, y = rng.uniform(0, args.size - 20, 2)
                w, h = rng.uniform(8, args.size / 3, 2)
                detections.append(
                    {
                        "image_id": image["id"],
                        "category_id": int(rng.choice(category_ids)),
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "score": float(rng.uniform(0, 0.9)),
                    }
                )
        detections_path = Path(folder) / "detections.json"
        detections_path.write_text(json.dumps(detections))

        start = time.perf_counter()
        dataset = load_stcoco(summary.json_path, str(Path(folder) / "speed"))
        metrics = evaluate(dataset, load_detections(str(detections_path), dataset))
        elapsed = time.perf_counter() - start
    print(format_table(metrics))
    print(
        f"\nscored {len(dataset)} frames, {len(ground_truth['annotations'])} ground-truth boxes, "
        f"{len(detections)} detections in {elapsed:.2f} s"
    )


if __name__ == "__main__":
    main()
