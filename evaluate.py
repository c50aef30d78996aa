"""Evaluate a trained run or a pretrained model: `python evaluate.py ckpt_path=.../last.ckpt [dataset=...]`."""

import hydra
from omegaconf import DictConfig

import sinkflow.config  # noqa: F401  (registers the config resolvers)
from sinkflow.run import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
