"""Record the training input distribution of a bundled model in its config JSON (the weights file is not touched).

    rep3d phantom data/phantom --num-train 40 --num-test 10 --seed 0
    python benchmarks/training_distribution.py data/phantom rep3d/weights/rep3d_tiny_phantom.json

The training cases are the split ``rep3d train`` used (``load_msd_dataset(DATA, seed=SEED)``: the validation cases
are left out); the summary (:func:`rep3d.inference.distribution.dataset_distribution`) goes under
``rep3d.metadata.training_distribution``, the key ``rep3d predict`` compares every input with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rep3d.data.msd import load_msd_dataset
from rep3d.inference.distribution import TRAINING_DISTRIBUTION_KEY, dataset_distribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the MSD dataset the model was trained on")
    parser.add_argument("config", type=Path, help="the bundled config JSON to update")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (its train / val split)")
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    meta = config["rep3d"]["metadata"]
    dataset = load_msd_dataset(args.data, seed=args.seed)
    meta[TRAINING_DISTRIBUTION_KEY] = dataset_distribution(
        dataset.train, modality=meta.get("modality", "CT"), window=meta["intensity_window"],
        source=f"{dataset.name} training cases" + (" (SYNTHETIC)" if meta.get("synthetic") else ""))
    args.config.write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps(meta[TRAINING_DISTRIBUTION_KEY], indent=2))


if __name__ == "__main__":
    main()
