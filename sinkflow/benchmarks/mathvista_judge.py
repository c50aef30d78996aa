"""The optional MathVista judge: a local Hugging Face causal LM asked, with the official extraction prompt, for the
answers that no rule extracted (`python -m sinkflow.eval.score ... --judge PATH`; off by default).

The toolkits ask GPT the same question; a local model stands in for it, so judged scores depend on that model and
say so (docs/benchmarks.md#mathvista-judge).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sinkflow.benchmarks.base import Parser
from sinkflow.benchmarks.mathvista import extraction
from sinkflow.checks import number

# The official in-context examples (MathVista's evaluation/prompts/ext_ans.py; lmms-eval's DEMO_PROMPT is identical).
DEMO_PROMPT = """Please read the following example. Then extract the answer from the model response and type it at \
the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final \
value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the \
group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final \
value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], \
[1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B"""


def judge_prompt(query: str, response: str) -> str:
    """The official `create_test_prompt`: the examples, the problem's query, the response, `Extracted answer: `."""
    return f"{DEMO_PROMPT}\n\n{query}\n\n{response}\n\nExtracted answer: "


class LocalJudge:
    """Greedy generation from a local causal LM (through its chat template when it has one, the prompt as the one
    user message, as the toolkits send it to GPT); the answer is the generated text, stripped."""

    def __init__(self, path: str | Path, max_new_tokens: int = 256) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.max_new_tokens = number("judge max_new_tokens", max_new_tokens, integer=True, at_least=1)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"MathVista judge not found: {path} (a local Hugging Face causal LM directory)")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()

    def __call__(self, prompt: str) -> str:
        import torch

        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt
        inputs = self.tokenizer(text, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            ids = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def judge_records(records: list[dict], parser: Parser, judge: Callable[[str], str]) -> list[dict]:
    """The records, each MathVista one that no rule extracts under `parser` given the judge's `extraction` (the
    judge is asked for those only; other records are returned as they are)."""
    out = []
    for record in records:
        if record["benchmark"] == "mathvista" and extraction({**record, "extraction": ""}, parser) is None:
            record = {**record, "extraction": judge(judge_prompt(record["query"], record["prediction"]))}
        out.append(record)
    return out
