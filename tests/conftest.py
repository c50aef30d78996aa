"""Shared fixtures: hermetic offline environment, one tiny checkpoint and one small shapes dataset per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Set at import, before any test module imports huggingface_hub (which reads HF_HUB_OFFLINE once, at import).
_TMP = Path(tempfile.mkdtemp(prefix="sinkflow-tests-"))
HERMETIC_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DIR": str(_TMP / "wandb"),
    "WANDB_CACHE_DIR": str(_TMP / "wandb-cache"),
    "WANDB_CONFIG_DIR": str(_TMP / "wandb-config"),
    "WANDB_DATA_DIR": str(_TMP / "wandb-data"),
    "SINKFLOW_CACHE": str(_TMP / "cache"),
}
os.environ.update(HERMETIC_ENV)


@pytest.fixture(scope="session")
def hermetic_env():
    """No hub, no network W&B, nothing written outside the tests' temp dirs (for subprocess environments)."""
    yield HERMETIC_ENV
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(hermetic_env) -> str:
    """A tiny LLaVA saved with save_pretrained (HF format) in the session cache."""
    from sinkflow.models.tiny import ensure_tiny_llava

    return ensure_tiny_llava(hermetic_env["SINKFLOW_CACHE"])


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small shapes dataset (64 training images, 12 evaluation images)."""
    from sinkflow.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes"), seed=0, n_train=64, n_eval=12)


@pytest.fixture(scope="session")
def routing_prompts() -> dict:
    """cot_route's configured routing prompts (`image_prompt`, `question_prompt`), read from conf/routing/cot.yaml."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "routing" / "cot.yaml"))


@pytest.fixture()
def image_path(shapes_root) -> str:
    return str(shapes_root / "eval_images" / "eval_00000.png")


@pytest.fixture(scope="session")
def assert_parity():
    """Check a sinkflow module against plain transformers on one batch: logits on real tokens, then greedy text."""
    import torch

    def check(module, reference, batch: dict, expected: dict) -> list[str]:
        with torch.no_grad():
            ours = module(batch).logits
            theirs = reference(**expected).logits
        mask = expected["attention_mask"].bool()
        torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)
        generated = module.generate(batch)
        with torch.no_grad():
            ids = reference.generate(**expected, max_new_tokens=module.generation.max_new_tokens, do_sample=False)
        tokenizer = module.processor.tokenizer
        assert generated == tokenizer.batch_decode(ids[:, expected["input_ids"].shape[1] :], skip_special_tokens=True)
        assert all(len(text) > 0 for text in generated)
        return generated

    return check


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A tiny BERT sentence encoder (WordPiece tokenizer trained in-process) saved in HF format."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("encoder")
    words = BertWordPieceTokenizer(lowercase=True)
    words.train_from_iterator(
        [
            "What is the background color? How many shapes are there? Is there a red circle?",
            "Which of these shapes is in the image? left right yes no",
        ],
        vocab_size=200,
        show_progress=False,
    )
    words.save_model(str(path))
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=words.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_family():
    """`tiny_family(name, seed, **sizes)`: (model, processor, family, template) of a registered family's tiny model
    (`sizes` override its spec's)."""
    from sinkflow.models.families.base import FAMILIES

    def build(name: str, seed: int, **sizes: int):
        family_cls = FAMILIES[name]
        model, processor = family_cls.build_tiny(seed=seed, **sizes)
        return model, processor, family_cls(), family_cls.default_template()

    return build


@pytest.fixture(scope="session")
def planted_family_module(tiny_family):
    """`planted_family_module(name, seed, strategy, prepare=None, **sizes)`: a SinkflowModule over a registered
    family's tiny model with planted sinks (k = 2, norm 150) that the paper's detector (tau = 100) finds, and the
    question collator strategies that ask the model need; `prepare(model, family)` may LoRA the model first."""
    from sinkflow.data.collate import Collator
    from sinkflow.module import SinkflowModule
    from sinkflow.sinks.detectors.norm_threshold import NormThreshold
    from sinkflow.sinks.simulated import SimulatedSinks

    def build(name: str, seed: int, strategy, prepare=None, **sizes: int):
        model, processor, family, template = tiny_family(name, seed, **sizes)
        if prepare is not None:
            model = prepare(model, family)
        return SinkflowModule(
            model,
            processor,
            family,
            strategy,
            NormThreshold(tau=100.0),
            simulated_sinks=SimulatedSinks(k=2, norm=150.0),
            question_collator=Collator(processor, template, generate=True),
        )

    return build


@pytest.fixture(scope="session")
def resized_images(shapes_root, tmp_path_factory):
    """`resized_images(sizes)`: the first shapes evaluation images resized to `sizes` ((w, h) each), saved as PNGs."""
    from PIL import Image

    def save(sizes: list[tuple[int, int]]) -> list[str]:
        folder = tmp_path_factory.mktemp("resized")
        paths = [str(folder / f"{i}.png") for i in range(len(sizes))]
        for i, (size, path) in enumerate(zip(sizes, paths)):
            Image.open(shapes_root / "eval_images" / f"eval_{i:05d}.png").convert("RGB").resize(size).save(path)
        return paths

    return save


@pytest.fixture(scope="session")
def shared_image_sets() -> list[str]:
    """The overrides that keep only the shapes evaluation sets asking about the images under eval_images/ (POPE, MME,
    MMStar, open): the formats that embed their images (MMMU's parquet) store copies, which analyses would count as
    more images."""
    from omegaconf import OmegaConf

    sets = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "dataset" / "shapes.yaml").eval_sets
    return [f"~dataset.eval_sets.{name}" for name in sets if name not in ("pope", "mme", "mmstar", "open")]


@pytest.fixture(scope="session")
def simulated_llava():
    """`simulated_llava(strategy, seed=2, prepare=None, model=None, **module_options)`: a SinkflowModule over a tiny
    LLaVA (seeded, or the given `(model, processor)`) with planted sinks (k = 2, norm 150) that the paper's detector
    (tau = 100) finds; `prepare(model)` may freeze or LoRA the model first."""
    from sinkflow.models.families.llava import LlavaFamily
    from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
    from sinkflow.module import SinkflowModule
    from sinkflow.sinks.detectors.norm_threshold import NormThreshold
    from sinkflow.sinks.simulated import SimulatedSinks

    def build(strategy, seed=2, prepare=None, model=None, **module_options):
        model, processor = model or build_tiny_llava(TinyLlavaSpec(seed=seed))
        if prepare is not None:
            model = prepare(model)
        detector, sinks = NormThreshold(tau=100.0), SimulatedSinks(k=2, norm=150.0)
        return SinkflowModule(
            model, processor, LlavaFamily(), strategy, detector, simulated_sinks=sinks, **module_options
        )

    return build


@pytest.fixture()
def image_question_batches(shapes_root):
    """make(processor, n_samples, question) -> a loader of generation batches asking `question` of the shapes
    evaluation images, two samples per image (as the evaluation sets ask several questions about one image)."""
    from torch.utils.data import DataLoader

    from sinkflow.data.collate import Collator
    from sinkflow.data.templates import VicunaV1

    def make(processor, n_samples: int, question: str) -> DataLoader:
        samples = [
            {
                "id": f"q{i}",
                "image": str(shapes_root / "eval_images" / f"eval_{i // 2:05d}.png"),
                "conversations": [{"from": "human", "value": f"<image>\n{question}"}],
                "meta": {"image": f"eval_{i // 2:05d}.png"},
            }
            for i in range(n_samples)
        ]
        return DataLoader(samples, batch_size=4, collate_fn=Collator(processor, VicunaV1(), generate=True))

    return make


_REPO = Path(__file__).resolve().parents[1]
_MME_FIXTURES = ("mme_eval_tool", "mme_lavin_results", "mme_lavin_results/expected_official.json")


@pytest.fixture(scope="session")
def pope_coco() -> Path:
    """The three original POPE question files, kept in the repository (tests/fixtures/README.md)."""
    return _REPO / "tests" / "fixtures" / "pope_coco"


@pytest.fixture(scope="session")
def mme_fixtures() -> Path:
    """The folder holding the MME tool files we may not redistribute (tests/fixtures/README.md):
    `$SINKFLOW_FIXTURES`, else the fixtures folder that CI keeps beside the checkout; the test skips without."""
    if os.environ.get("SINKFLOW_FIXTURES"):
        folder = Path(os.environ["SINKFLOW_FIXTURES"])
        missing = [name for name in _MME_FIXTURES if not (folder / name).exists()]
        if missing:
            pytest.fail(f"SINKFLOW_FIXTURES={folder} lacks {', '.join(missing)} (tests/fixtures/README.md)")
        return folder
    folder = _REPO.parent / "shared" / "fixtures"
    if all((folder / name).exists() for name in _MME_FIXTURES):
        return folder
    pytest.skip(
        "MME fixtures not found: set SINKFLOW_FIXTURES to a folder with mme_eval_tool/ (Your_Results/ of "
        "the official MME eval_tool, tools/eval_tool.zip in BradyFU/Awesome-Multimodal-Large-Language-Models), "
        "mme_lavin_results/ (its LaVIN/ folder) and mme_lavin_results/expected_official.json (the flat "
        "mme/<subtask>/{acc,acc_plus,score}, mme/perception and mme/cognition that its calculation.py "
        "prints for LaVIN/); see tests/fixtures/README.md"
    )


@pytest.fixture(scope="session")
def two_sizes(resized_images) -> list[str]:
    """Two shapes images of different sizes, 64 x 64 and 48 x 32 (what each family makes of them: its tests)."""
    return resized_images([(64, 64), (48, 32)])


@pytest.fixture(scope="session")
def noise_images(tmp_path_factory):
    """`noise_images(sizes)`: PNGs of seeded noise ((w, h) each). On the flat shapes images a random ViT's patch norms
    tie, and a tie would pick sinks by order rather than by norm."""
    import numpy as np
    from PIL import Image

    def save(sizes: list[tuple[int, int]]) -> list[str]:
        rng, folder = np.random.default_rng(0), tmp_path_factory.mktemp("noise")
        paths = [str(folder / f"{i}.png") for i in range(len(sizes))]
        for (width, height), path in zip(sizes, paths):
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        return paths

    return save


@pytest.fixture(scope="session")
def questions() -> list[str]:
    """The family tests' questions, one per image of a batch (the second longer, so that batches are padded)."""
    return ["What is the background color?", "How many shapes are there in this picture? Count them."]


@pytest.fixture(scope="session")
def question_batch(questions):
    """`question_batch(module, images, generate=True)`: one sample per image asking its question of `questions`,
    collated by the module's processor with the checkpoint's own chat template."""
    from sinkflow.data.collate import Collator
    from sinkflow.data.templates import ProcessorChatTemplate

    def collate(module, images: list[str], generate: bool = True) -> dict:
        samples = [
            {"id": str(i), "image": image, "conversations": [{"from": "human", "value": "<image>\n" + q}]}
            for i, (image, q) in enumerate(zip(images, questions))
        ]
        return Collator(module.processor, ProcessorChatTemplate(), generate=generate)(samples)

    return collate


@pytest.fixture(scope="session")
def loaded_pair():
    """`loaded_pair(path, family)`: a tiny checkpoint loaded through sinkflow (with `family`, routed by no strategy)
    and through plain transformers, both in eval mode."""
    from transformers import AutoModelForImageTextToText

    from sinkflow.models.build import load_pretrained
    from sinkflow.module import SinkflowModule
    from sinkflow.sinks.strategies.none import NoneStrategy

    def load(path: str, family):
        model, processor = load_pretrained(path, family=family)
        reference = AutoModelForImageTextToText.from_pretrained(path).eval()
        return SinkflowModule(model.eval(), processor, family, NoneStrategy()).eval(), reference

    return load


@pytest.fixture(scope="session")
def rerouted():
    """`rerouted(module, strategy, k=3)`: the module's model, processor and family routed by `strategy` (`front` /
    `end`: SinkFront / SinkEnd with `position_ids`, or any strategy object) on TopK(k) sinks."""
    from sinkflow.module import SinkflowModule
    from sinkflow.sinks.detectors.topk import TopK
    from sinkflow.sinks.strategies.sink_end import SinkEnd
    from sinkflow.sinks.strategies.sink_front import SinkFront

    def route(module, strategy, k: int = 3, position_ids: str = "contiguous"):
        if isinstance(strategy, str):
            strategy = {"front": SinkFront, "end": SinkEnd}[strategy](position_ids=position_ids)
        return SinkflowModule(module.model, module.processor, module.family, strategy, TopK(k=k)).eval()

    return route


@pytest.fixture(scope="session")
def rerouted_logits(rerouted, question_batch):
    """`rerouted_logits(module, place, position_ids, images)`: (logits, batch) of the question batch on `images`
    through the module's model routed by SinkFront / SinkEnd (`place`) on TopK(3) sinks."""
    import torch

    def run(module, place: str, position_ids: str, images: list[str]):
        batch = question_batch(module, images)
        with torch.no_grad():
            return rerouted(module, place, position_ids=position_ids)(batch).logits, batch

    return run


@pytest.fixture(scope="session")
def sink_order():
    """`sink_order(sinks, n_tokens, place)`: an image's token order by hand, its `sinks` (token indices, in order)
    first (`front`) or last (`end`) and the other tokens in order."""
    import torch

    def order(sinks: list[int], n_tokens: int, place: str) -> torch.Tensor:
        rest = [t for t in range(n_tokens) if t not in sinks]
        return torch.tensor(sinks + rest if place == "front" else rest + sinks)

    return order


@pytest.fixture(scope="session")
def keep_positions():
    """`keep_positions(positions, placeholders, orders)`: the `original` position mode by hand, in place: the
    positions [..., B, L] of each row's image block permuted like its tokens (`orders`, one per row)."""

    def permute(positions, placeholders, orders) -> None:
        for row, order in enumerate(orders):
            block = placeholders[row].nonzero().squeeze(1)
            positions[..., row, block] = positions[..., row, block[order]]

    return permute


@pytest.fixture(scope="session")
def qwen_vit_attention():
    """`qwen_vit_attention(model, batch, block)`: [heads, T, T], a Qwen-VL ViT block's attention probabilities
    recomputed eagerly (softmax(q k^T / sqrt(d)) within each attention chunk) from the block's input hidden states."""
    import sys

    import torch

    def brute_force(model, batch, block: int) -> torch.Tensor:
        tower = model.model.visual
        seen = {}
        hook = tower.blocks[block].attn.register_forward_pre_hook(
            lambda _, args, kwargs: seen.update(kwargs, hidden=args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True,
        )
        with torch.no_grad():
            tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        hook.remove()
        attn, hidden = tower.blocks[block].attn, seen["hidden"]
        rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision  # the model's own
        q, k, _ = attn.qkv(hidden).reshape(len(hidden), 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = rotary(q, k, *seen["position_embeddings"])
        probs = torch.zeros(attn.num_heads, len(hidden), len(hidden))
        bounds = seen["cu_seqlens"].tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * attn.head_dim**-0.5
            probs[:, start:end, start:end] = scores.softmax(dim=-1)
        return probs

    return brute_force


@pytest.fixture(scope="session")
def qwen_reference_inputs():
    """`qwen_reference_inputs(reference, batch)`: what a plain transformers Qwen-VL model is fed for the batch (its
    image-token types marked from the placeholders)."""

    def inputs(reference, batch: dict) -> dict:
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        return {
            **{k: batch[k] for k in keys},
            "mm_token_type_ids": (batch["input_ids"] == reference.config.image_token_id).int(),
        }

    return inputs


@pytest.fixture(scope="session")
def wandb_offline_runs():
    """`wandb_offline_runs(folder)`: every W&B offline run under `folder` (its `offline-run-*/run-*.wandb` files, in
    time order), read from the run's records: name, group, job_type, tags, config (top-level key -> value), the keys it
    logged, its artifacts (type, name, files: path in the artifact -> local copy) and its exit code (None: never
    finished). W&B's offline folders hold no config.yaml: the records are all there is."""
    import json
    import struct
    from types import SimpleNamespace

    from wandb.proto import wandb_internal_pb2

    def records(path: Path):
        # LevelDB's log format: 32 KiB blocks of chunks (crc, length, type: full / first / middle / last) after W&B's
        # 7-byte header.
        data = path.read_bytes()
        assert data[:4] == b":W&B", f"{path}: not a W&B run file"
        position, pending = 7, b""
        while position + 7 <= len(data):
            room = 32768 - position % 32768
            if room < 7:
                position += room
                continue
            _, length, kind = struct.unpack("<IHB", data[position : position + 7])
            if kind == 0:
                return
            pending += data[position + 7 : position + 7 + length]
            position += 7 + length
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                pending = b""
                yield record

    def read(path: Path) -> SimpleNamespace:
        run = SimpleNamespace(config={}, logged=set(), artifacts=[], exit_code=None)
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.name, run.group = record.run.display_name, record.run.run_group
                run.job_type, run.tags = record.run.job_type, list(record.run.tags)
            elif kind == "config":
                run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                run.logged |= {"/".join(item.nested_key) or item.key for item in record.history.item}
            elif kind == "artifact":
                files = {item.path: Path(item.local_path) for item in record.artifact.manifest.contents}
                run.artifacts.append(SimpleNamespace(type=record.artifact.type, name=record.artifact.name, files=files))
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run

    def runs(folder: Path) -> list[SimpleNamespace]:
        return [read(path) for path in sorted(Path(folder).rglob("offline-run-*/run-*.wandb"))]

    return runs
