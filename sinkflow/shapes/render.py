"""Drawing a scene with PIL: filled shapes on a flat background, no anti-aliasing, so every pixel is a palette
colour."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from sinkflow.shapes.scene import BACKGROUNDS, SHAPE_COLORS, Scene


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw a scene as an RGB image."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        fill = SHAPE_COLORS[o.color]
        x0, y0, x1, y1 = o.box
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        if o.shape == "circle":
            draw.ellipse(o.box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(o.box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        else:  # star: ten points alternating between the outer and inner radius
            points = [
                (
                    cx + r * (1 if k % 2 == 0 else 0.45) * math.sin(math.pi * k / 5),
                    cy - r * (1 if k % 2 == 0 else 0.45) * math.cos(math.pi * k / 5),
                )
                for k in range(10)
            ]
            draw.polygon(points, fill=fill)
    return image
