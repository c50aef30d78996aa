"""Evaluate a trained run or a pretrained model: `python evaluate.py ckpt_path=.../last.ckpt [dataset=...]`."""

import hydra
from omegaconf import DictConfig

import sinkflow.config  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    from sinkflow.run import evaluate  # here, not above: --help and config errors answer before torch loads

    return evaluate(cfg)


if __name__ == "__main__":
    main()
