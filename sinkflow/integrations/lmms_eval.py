"""sinkflow as an lmms-eval model: `lmms-eval --model sinkflow --model_args ckpt_path=<run>,sink_strategy=sink_front`.

Every `--model_args` entry is a Hydra override of `conf/evaluate.yaml` (`ckpt_path=`, `model=`, `sink_strategy=`,
`sink_strategy.detector.tau=80`, ...; a `sink_strategy` beside a `ckpt_path` routes the run with it), so the model is
built as `evaluate.py` builds it (`sinkflow.run.evaluation_module`). Each `generate_until` request becomes the sample
`evaluate.py` makes of the same question (`<image>\\n` before the task's prompt, the model config's template, the
collator) and is answered in batches by the module's own test-loop generation (`SinkflowModule.predict_step`): same
pathway, strategy, template and greedy decoding. lmms-eval finds the class through the `lmms_eval.models` entry point
(pyproject.toml, `lmms_eval_manifest.py`). Only this package imports lmms_eval.
"""

from __future__ import annotations

import logging
import os

import torch
from hydra.utils import instantiate
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from sinkflow.checks import number
from sinkflow.config import compose_config
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.datamodule import prompt_length
from sinkflow.data.templates import IMAGE_TOKEN
from sinkflow.run import evaluation_module

log = logging.getLogger(__name__)

# lmms-eval's tasks whose requests are `loglikelihood` (output_type loglikelihood / multiple_choice), at 0.7.3.
LOGLIKELIHOOD_TASKS = (
    "seedbench_ppl",
    "mmlu",
    "arc_easy",
    "hellaswag",
    "gpqa",
    "egoschema_mcppl",
    "perceptiontest_*_mcppl",
    "worldqa_mcppl",
    "worldvqa_mcppl",
)


def hydra_overrides(model_args: dict) -> list[str]:
    """`key=value` overrides from lmms-eval's parsed `--model_args` (it turns `true` into True and digits into
    numbers: they are written back as Hydra reads them). A `sink_strategy` named beside a `ckpt_path` routes the
    trained run with it (`use_checkpoint_strategy=false`, unless the arguments set that themselves): evaluate.py's
    default, the run's own strategy, would leave the strategy asked for unused."""
    args = dict(model_args)
    if "ckpt_path" in args and "sink_strategy" in args:
        args.setdefault("use_checkpoint_strategy", False)
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in args.items()]


def cut_at_stops(text: str, until: list[str]) -> str:
    """The text before the first of the `until` strings (lmms-eval's stop sequences), as if generation had stopped
    there: greedy decoding makes the answer up to a stop string the same either way."""
    for stop in until:
        text = text.split(stop)[0]
    return text


class SinkflowLMM(lmms):
    """lmms-eval's `sinkflow` model: `generate_until` through sinkflow's pathway and strategies, in batches of
    `batch_size` (lmms-eval's `--batch_size`), on `device` (its `--device`; default cuda when there is one)."""

    is_simple = True  # requests carry (context, generation kwargs, doc_to_visual, doc_id, task, split)

    def __init__(
        self,
        batch_size: int | str = 1,
        device: str | None = None,
        max_batch_size: int | None = None,
        **model_args,
    ) -> None:
        super().__init__()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "sinkflow's lmms-eval model runs in one process: launch `lmms-eval` without accelerate / torchrun "
                f"(WORLD_SIZE={os.environ['WORLD_SIZE']})"
            )
        if not str(batch_size).isdigit():
            raise ValueError(f"--batch_size must be a positive integer for --model sinkflow, got {batch_size!r}")
        self.batch_size = number("--batch_size", int(batch_size), integer=True, at_least=1)
        if max_batch_size is not None:
            log.warning("--max_batch_size=%s is ignored: --model sinkflow uses --batch_size as given", max_batch_size)
        self.cfg = compose_config(hydra_overrides(model_args), config_name="evaluate")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = evaluation_module(self.cfg).to(self.device).eval()
        # The generation collator evaluate.py's test loader uses (left padding, the model config's template).
        self.collator = Collator(self.module.processor, instantiate(self.cfg.model.template), generate=True)
        self.warned: set[tuple[str, str]] = set()

    def sample(self, request: Instance) -> tuple[dict, list[str]]:
        """The request as the sample evaluate.py makes of a question (`eval_sample`), and its stop strings."""
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise NotImplementedError(
                    f"task {task!r} (doc {doc_id}) gives a {type(visual).__name__} visual: sinkflow's lmms-eval model "
                    "answers about images only (no video, no audio)"
                )
        self.check_greedy(task, gen_kwargs)
        # One image: `<image>\n` before the prompt, as evaluate.py asks; several: the prompt's own placeholders, or
        # one per image before it.
        text = context if IMAGE_TOKEN in context else f"{IMAGE_TOKEN}\n" * len(visuals) + context
        limit = gen_kwargs.get("max_new_tokens") or self.module.generation.max_new_tokens
        sample = {
            "id": f"{task}/{doc_id}",
            "image": list(visuals) or None,
            "conversations": [{"from": "human", "value": text}],
            "meta": {"max_new_tokens": limit},
        }
        until = gen_kwargs.get("until") or []
        return sample, [until] if isinstance(until, str) else list(until)

    def check_greedy(self, task: str, gen_kwargs: dict) -> None:
        """Warn once per task and setting that sinkflow decodes greedily whatever the task asks."""
        asked = {
            "do_sample": bool(gen_kwargs.get("do_sample", False)),
            "temperature": (gen_kwargs.get("temperature") or 0) > 0,
            "num_beams": (gen_kwargs.get("num_beams") or 1) > 1,
        }
        for name in (name for name, differs in asked.items() if differs and (task, name) not in self.warned):
            self.warned.add((task, name))
            log.warning(
                "task %s asks for %s=%s: sinkflow decodes greedily (one beam, no sampling), as evaluate.py does",
                task,
                name,
                gen_kwargs[name],
            )

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers in request order; batches of similar prompts (longest first, as evaluate.py's test loader
        orders its questions), each row cut at its own `max_new_tokens` and stop strings."""
        samples, stops = zip(*(self.sample(request) for request in requests)) if requests else ((), ())
        order = sorted(range(len(samples)), key=lambda i: prompt_length(samples[i]), reverse=True)
        answers: list[str] = [""] * len(samples)
        starts = range(0, len(order), self.batch_size)
        for batch_idx, start in enumerate(tqdm(starts, desc="sinkflow answering", disable=not starts)):
            rows = order[start : start + self.batch_size]
            batch = batch_to(self.collator([samples[i] for i in rows]), self.device)
            for i, record in zip(rows, self.module.predict_step(batch, batch_idx)):
                answers[i] = cut_at_stops(record["prediction"], stops[i])
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "sinkflow's lmms-eval model answers generate_until requests only; tasks scored by loglikelihood "
            f"(output_type loglikelihood or multiple_choice: {', '.join(LOGLIKELIHOOD_TASKS)}) need it: run their "
            "generate_until variants (e.g. seedbench instead of seedbench_ppl)"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "sinkflow's lmms-eval model answers single-round generate_until requests only (its pathway routes one "
            "question's images per prompt); multi-round tasks are not supported"
        )
