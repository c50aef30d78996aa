"""Train an LVLM with sinkflow: `python train.py [model=...] [sink_strategy=...] [dataset=...] [trainer=...]`."""

import hydra
from omegaconf import DictConfig

import sinkflow.config  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from sinkflow.run import optimized_value, train  # here, not above: --help and config errors answer before torch

    return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    main()
