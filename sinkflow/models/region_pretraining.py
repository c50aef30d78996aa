"""Stage 0 of the tiny base's recipe (conf/experiment/tiny_base.yaml): the ViT, trained from scratch, learns what each
region of a shapes image shows before any language is involved, the role CLIP pretraining plays for a real LLaVA.

One linear head, shared by all patches, reads each patch's projector-input features and predicts the colour and kind
of the shape under the patch (or none), the patch's cell row and column in the scene's 3x3 grid, and the
background. Scenes are drawn fresh from the generator (`n_images` of them, a stream of their own, so
the LLaVA stage's training and evaluation images are not reused); the head is dropped afterwards.

Without this stage, training ViT, projector and LLM together from random weights on the question-answer turns
alone left local questions at chance after 600 steps, with the answer formats already learned.
"""

from __future__ import annotations

import logging
import random

import torch
from rich.progress import track
from torch import nn
from torch.nn import functional as F

from sinkflow.checks import number
from sinkflow.shapes.render import render_scene
from sinkflow.shapes.scene import BACKGROUNDS, GRID, SHAPE_COLORS, SHAPES, Scene, sample_scene

log = logging.getLogger(__name__)

_COLORS, _BACKGROUNDS = list(SHAPE_COLORS), list(BACKGROUNDS)


def patch_targets(scene: Scene, image_size: int, patch_size: int) -> dict[str, torch.Tensor]:
    """Per patch (raster order): the colour and kind of the shape whose box holds the patch centre as class ids (0:
    none), the grid row and column of that centre, and the background's id (one per image)."""
    side = image_size // patch_size
    centres = (torch.arange(side) * patch_size + patch_size / 2).tolist()
    colors, shapes = torch.zeros(side * side, dtype=torch.long), torch.zeros(side * side, dtype=torch.long)
    rows, columns = torch.zeros(side * side, dtype=torch.long), torch.zeros(side * side, dtype=torch.long)
    cell = image_size / GRID
    for index, (y, x) in enumerate((y, x) for y in centres for x in centres):
        rows[index], columns[index] = int(y // cell), int(x // cell)
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            if x0 <= x < x1 and y0 <= y < y1:
                colors[index], shapes[index] = 1 + _COLORS.index(o.color), 1 + SHAPES.index(o.shape)
    return {
        "colors": colors,
        "shapes": shapes,
        "rows": rows,
        "columns": columns,
        "backgrounds": torch.tensor(_BACKGROUNDS.index(scene.background)),
    }


class RegionHead(nn.Module):
    """One linear map shared by every patch: its shape's colour and kind, its grid row and column, the background.
    Shared, so that a shape is written the same way wherever it sits, and a question's words can find it."""

    def __init__(self, width: int):
        super().__init__()
        self.sizes = {"colors": len(_COLORS) + 1, "shapes": len(SHAPES) + 1, "rows": GRID, "columns": GRID}
        self.sizes["backgrounds"] = len(_BACKGROUNDS)
        self.linear = nn.Linear(width, sum(self.sizes.values()))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.sizes, self.linear(features).split(list(self.sizes.values()), dim=-1)))


def _scenes(n: int, seed: int, stream: str, image_processor, image_size: int, patch_size: int) -> dict:
    rng = random.Random(f"region_pretraining/{seed}/{stream}")
    scenes = [sample_scene(rng, image_size) for _ in range(n)]
    inputs = dict(image_processor([render_scene(s, image_size) for s in scenes], return_tensors="pt"))
    targets = [patch_targets(s, image_size, patch_size) for s in scenes]
    return {**inputs, **{f"target_{k}": torch.stack([t[k] for t in targets]) for k in targets[0]}}


def pretrain_vision(
    module,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1.0e-3,
    warmup_steps: int = 50,
    n_images: int = 16384,
    n_val: int = 512,
    seed: int = 0,
) -> dict[str, float]:
    """Train `module`'s ViT (a SinkflowModule of an untiled, square-patch family: LLaVA) on patch labels; returns
    held-out accuracies over patches: colour and kind under shape patches, empty patches called empty, grid row and
    column, background."""
    for key, value in {"steps": steps, "batch_size": batch_size, "n_images": n_images, "n_val": n_val}.items():
        number(f"vision_pretraining.{key}", value, integer=True, at_least=1)
    number("vision_pretraining.lr", lr, above=0)
    tower = module.family.vision_tower(module.hf)
    if not any(p.requires_grad for p in tower.parameters()):
        raise ValueError("vision_pretraining trains the ViT: set model.freeze_vision=false with it")
    vision = module.hf.config.vision_config
    data = {
        name: _scenes(n, seed, name, module.processor.image_processor, vision.image_size, vision.patch_size)
        for name, n in (("train", n_images), ("val", n_val))
    }

    def predict(batch: dict) -> dict[str, torch.Tensor]:
        features = module.family.encode(module.hf, {k: v for k, v in batch.items() if not k.startswith("target_")})
        if features.features.shape[1] != batch["target_colors"].shape[1]:
            raise ValueError(
                f"vision_pretraining labels {batch['target_colors'].shape[1]} square patches, the ViT gives "
                f"{features.features.shape[1]} tokens (a family with merged or tiled patches?)"
            )
        return head(features.features)

    def targets(batch: dict) -> dict[str, torch.Tensor]:
        n_patches = batch["target_colors"].shape[1]
        return {
            k.removeprefix("target_"): v if v.dim() == 2 else v[:, None].expand(-1, n_patches)
            for k, v in batch.items()
            if k.startswith("target_")
        }

    with torch.random.fork_rng(devices=[]):  # the head's initialisation is the seed's, whatever ran before
        torch.manual_seed(seed)
        head = RegionHead(module.hf.config.vision_config.hidden_size)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    module.hf.train()
    train = data["train"]
    for step in track(range(steps), description=f"stage 0: ViT on patch labels ({n_images} scenes)"):
        index = torch.randint(0, n_images, (batch_size,), generator=generator)
        batch = {k: v[index] for k, v in train.items()}
        logits, truth = predict(batch), targets(batch)
        loss = sum(F.cross_entropy(logits[k].flatten(0, 1), truth[k].flatten()) for k in logits)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits, truth = predict(data["val"]), targets(data["val"])
    hit = {k: logits[k].argmax(-1) == truth[k] for k in logits}
    shape = truth["colors"] > 0
    accuracy = {
        "color": hit["colors"][shape],
        "shape": hit["shapes"][shape],
        "empty": hit["colors"][~shape],
        "row": hit["rows"],
        "column": hit["columns"],
        "background": hit["backgrounds"],
    }
    accuracy = {f"vision_pretraining/{k}_accuracy": round(float(v.float().mean()), 4) for k, v in accuracy.items()}
    log.info("stage 0 (ViT on patch labels), held-out accuracy: %s", accuracy)
    return accuracy
