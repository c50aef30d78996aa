"""Analyses of a model's visual pathway: `python analyze.py task=<name> [model=...] [dataset=...]`, one of the tasks
registered in sinkflow/analysis/ (README "Analyses")."""

import hydra
from omegaconf import DictConfig

import sinkflow.config  # noqa: F401  (registers the config resolvers)
from sinkflow.run import analyze


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    analyze(cfg)


if __name__ == "__main__":
    main()
