"""Analyses of a model's visual pathway: `python analyze.py task=<name> [model=...] [dataset=...]`, one of the tasks
registered in sinkflow/analysis/ (README "Analyses")."""

import hydra
from omegaconf import DictConfig

import sinkflow.config  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    from sinkflow.run import analyze  # here, not above: --help and config errors answer before torch loads

    analyze(cfg)


if __name__ == "__main__":
    main()
