"""`score_records` as a torchmetrics metric whose state is the records themselves, so that every rank's answers are
joined before scoring and the questions a `DistributedSampler` pads in twice count once."""

from __future__ import annotations

import json

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from sinkflow.benchmarks.base import Parser
from sinkflow.checks import choice
from sinkflow.eval.metrics import score_records

# Record fields no score reads, left out of the metric state: the rendered conversation is most of a record's size.
UNSCORED_FIELDS = ("prompt",)


class BenchmarkScores(Metric):
    """`score_records` over every record any rank passed to `update` (compute synchronises the ranks).

    The state is one `uint8` tensor per `update`: the UTF-8 JSON lines of its records (without `UNSCORED_FIELDS`).
    JSON escapes newlines inside strings, so after the ranks' tensors are concatenated (`dist_reduce_fx="cat"`,
    uneven sizes included) the newline bytes split the records again.
    """

    full_state_update = False

    def __init__(self, parser: Parser = "official", **kwargs) -> None:
        super().__init__(**kwargs)
        self.parser = choice("parser", parser, Parser)
        self.add_state("encoded", default=[], dist_reduce_fx="cat")
        # A rank that saw no record syncs an empty tensor of the metric's dtype, which must match the others' bytes.
        self.set_dtype(torch.uint8)

    def update(self, records: list[dict]) -> None:
        if not records:
            return
        lines = "".join(
            json.dumps({k: v for k, v in record.items() if k not in UNSCORED_FIELDS}, ensure_ascii=False) + "\n"
            for record in records
        )
        self.encoded.append(torch.frombuffer(bytearray(lines.encode("utf-8")), dtype=torch.uint8).to(self.device))

    def records(self) -> list[dict]:
        """The records of the state: this rank's, or every rank's inside `compute`."""
        if not len(self.encoded):
            return []
        data = dim_zero_cat(self.encoded).cpu().numpy().tobytes()
        return [json.loads(line) for line in data.split(b"\n")[:-1]]

    def compute(self) -> dict[str, float]:
        return score_records(self.records(), self.parser)
