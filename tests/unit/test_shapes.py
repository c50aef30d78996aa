"""The synthetic shapes generator: determinism, caching, official formats and answers that match the pixels."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from sinkflow.benchmarks.common import SHORT_ANSWER
from sinkflow.benchmarks.mme import YES_NO_SUFFIX, load_mme
from sinkflow.benchmarks.mmstar import LETTER_ANSWER, load_mmstar
from sinkflow.benchmarks.open_qa import load_open_qa
from sinkflow.benchmarks.pope import load_pope
from sinkflow.data.instruct import load_instruct
from sinkflow.shapes import (
    BACKGROUNDS,
    GLOBAL_KINDS,
    LOCAL_KINDS,
    SHAPE_COLORS,
    SHAPES,
    annotate_scope,
    build_shapes,
    generate_shapes,
    question_scope,
    scope_of,
)
from sinkflow.shapes.questions import TRAIN_STYLES

SMALL = {"n_train": 24, "n_eval": 16, "image_size": 64}
ROUTING = {"image_prompt": "Symbolic or real-world?", "question_prompt": "Global or local: {question}"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes"), seed=3, **SMALL)


@pytest.fixture(scope="module")
def data():
    """The questions behind `root`, as the builders made them (with their kinds)."""
    return build_shapes(seed=3, turns_per_image=2, **SMALL)


@pytest.fixture(scope="module")
def scenes(root) -> dict:
    return json.loads((root / "scenes.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(scene: dict) -> set[tuple[str, str]]:
    return {(o["color"], o["shape"]) for o in scene["objects"]}


def _eval_scene(scenes: dict, image: str) -> dict:
    return scenes[f"eval_images/{image}"]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a = _files(generate_shapes(tmp_path / "a", seed=7, **SMALL))
    b = _files(generate_shapes(tmp_path / "b", seed=7, **SMALL))
    c = _files(generate_shapes(tmp_path / "c", seed=8, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.json"] != c["train.json"]
    assert a["eval_images/eval_00000.png"] != c["eval_images/eval_00000.png"]


def test_same_parameters_reuse_the_cache_and_new_parameters_regenerate(tmp_path):
    root = generate_shapes(tmp_path, seed=1, **SMALL)
    (root / "train.json").write_text("[]")
    assert generate_shapes(tmp_path, seed=1, **SMALL) == root
    assert (root / "train.json").read_text() == "[]"
    generate_shapes(tmp_path, seed=1, **SMALL, overwrite=True)
    assert len(json.loads((root / "train.json").read_text())) == SMALL["n_train"]
    generate_shapes(tmp_path, seed=1, n_train=5, n_eval=4)
    assert len(list((root / "images").glob("*.png"))) == 5
    assert json.loads((root / "manifest.json").read_text())["params"]["n_train"] == 5


def test_invalid_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="turns_per_image"):
        generate_shapes(tmp_path, turns_per_image=5)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="routing_questions needs `dataset.prepare.image_prompt`"):
        generate_shapes(tmp_path, routing_questions=True)
    with pytest.raises(ValueError, match=r"with '\{question\}'"):
        generate_shapes(tmp_path, routing_questions=True, image_prompt="Symbolic?", question_prompt="Global?")


def test_manifest_counts_match_the_files(root):
    manifest = json.loads((root / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["train_images"] == len(list((root / "images").glob("*.png"))) == SMALL["n_train"]
    assert counts["eval_images"] == len(list((root / "eval_images").glob("*.png"))) == SMALL["n_eval"]
    for category, n in counts["pope"].items():
        assert len((root / "pope" / f"shapes_pope_{category}.json").read_text().splitlines()) == n
    for subtask, n in counts["mme"].items():
        assert len((root / "mme" / f"{subtask}.txt").read_text().splitlines()) == n
    assert len((root / "mmstar" / "mmstar.jsonl").read_text().splitlines()) == counts["mmstar"]
    assert manifest["scopes"] == {**dict.fromkeys(GLOBAL_KINDS, "global"), **dict.fromkeys(LOCAL_KINDS, "local")}


def test_routing_records_are_deterministic_and_answer_with_the_first_questions_scope(tmp_path, root, data):
    """The routing records come after the unchanged training records, in the configured words; nothing else moves,
    and the prompts join the manifest's parameters (an edited prompt regenerates the data)."""
    a = _files(generate_shapes(tmp_path / "a", seed=3, routing_questions=True, **ROUTING, **SMALL))
    b = _files(generate_shapes(tmp_path / "b", seed=3, routing_questions=True, **ROUTING, **SMALL))
    assert a == b
    plain = _files(root)
    assert {k: v for k, v in a.items() if k not in ("train.json", "manifest.json")} == {
        k: v for k, v in plain.items() if k not in ("train.json", "manifest.json")
    }
    records, n = json.loads(a["train.json"]), SMALL["n_train"]
    assert records[:n] == json.loads(plain["train.json"])
    for i, (record, routing, questions) in enumerate(zip(records[:n], records[n:], data.train, strict=True)):
        first = questions[0]
        prompt, answer = (
            (ROUTING["image_prompt"], "symbolic")
            if i % 2
            else (ROUTING["question_prompt"].replace("{question}", first.text), first.scope)
        )
        assert routing == {
            "id": f"{record['id']}_routing",
            "image": record["image"],
            "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}],
        }
    params = json.loads(a["manifest.json"])["params"]
    assert params == {**json.loads(plain["manifest.json"])["params"], "routing_questions": True, **ROUTING}


def test_every_question_carries_its_kind_and_a_scope_the_manifest_and_the_loaded_items_agree_with(root, data):
    """Kinds and scopes come from the builders: the manifest's table, and each loaded item's `scope` (from its
    benchmark and category, as not every file format can hold a kind), agree with the question behind each line."""
    scopes = json.loads((root / "manifest.json").read_text())["scopes"]
    train = [q for questions in data.train for q in questions]
    evaluation = [
        *(a for asked in data.pope.values() for a in asked),
        *(a for asked in data.mme.values() for a in asked),
        *data.mmstar,
        *data.open,
    ]
    assert {q.kind for q in train} == {a.question.kind for a in evaluation} == set(scopes)
    assert all(q.scope == scopes[q.kind] for q in train + [a.question for a in evaluation])
    images = root / "eval_images"
    items = (
        load_pope(root / "pope", images)
        + load_mme(root / "mme", images)
        + load_mmstar(root / "mmstar" / "mmstar.jsonl", images)
        + load_open_qa(root / "open" / "open.jsonl", images)
    )
    assert len(items) == len(evaluation)
    for item, asked in zip(items, evaluation):
        assert (item["image"], item["question"].removesuffix(YES_NO_SUFFIX)) == (
            f"eval_{asked.image:05d}.png",
            asked.question.text,
        )
        assert annotate_scope(item) == {"scope": asked.question.scope}


def test_images_match_their_scene_description(root, scenes):
    for rel, scene in scenes.items():
        image = Image.open(root / rel).convert("RGB")
        assert image.size == (64, 64)
        assert image.getpixel((0, 0)) == BACKGROUNDS[scene["background"]]
        assert 1 <= len(scene["objects"]) <= 4
        for o in scene["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == SHAPE_COLORS[o["color"]]


def _style(prompt: str) -> str:
    """A training prompt's style, from its single evaluation suffix and its question."""
    prompt = prompt.removeprefix("<image>\n")
    suffixes = [s for s in (SHORT_ANSWER, LETTER_ANSWER) if s in prompt]
    assert len(suffixes) == 1 and prompt.count(suffixes[0]) == 1 and prompt.endswith(suffixes[0]), prompt
    assert YES_NO_SUFFIX not in prompt
    if suffixes[0] == LETTER_ANSWER:
        return "choice"
    open_question = re.match(r"What |How many |Is the \w+ \w+ on the left or the right\?", prompt)
    return "open" if open_question else "verify"


def _side(obj: dict) -> str | None:
    x0, _, x1, _ = obj["box"]
    center = (x0 + x1) / 2
    return "left" if center < 64 / 3 else "right" if center > 2 * 64 / 3 else None


def _named(scene: dict, color: str, shape: str) -> dict:
    (obj,) = [o for o in scene["objects"] if (o["color"], o["shape"]) == (color, shape)]
    return obj


def _expected_answer(prompt: str, kind: str, scene: dict) -> str:
    """Re-derive a training answer from the scene description."""
    objects, present = scene["objects"], _objects(scene)
    colors = Counter(o["color"] for o in objects)
    dominant = next((c for c, n in colors.items() if 2 * n > len(objects)), None)
    style = _style(prompt)
    question = prompt.split("\n")[0]
    if style == "choice":
        parsed = re.fullmatch(r"A: (.+), B: (.+), C: (.+), D: (.+)", prompt.split("\n")[1].removeprefix("Options: "))
        options = parsed.groups()
        if kind == "existence":
            (correct,) = [o for o in options if tuple(o.split()) in present]
        elif kind == "position":
            row, col = _named(scene, *re.fullmatch(r"Where is the (\w+) (\w+)\?", question).groups())["cell"]
            correct = f"{('top', None, 'bottom')[row]} {('left', None, 'right')[col]}"
        else:
            correct = {"background": scene["background"], "count": str(len(objects))}[kind]
        assert options.count(correct) == 1
        return "ABCD"[options.index(correct)]
    if style == "open":
        if kind == "position":
            obj = _named(scene, *re.search(r"the (\w+) (\w+) on", question).groups())
            return _side(obj)
        return {"background": scene["background"], "dominant_color": dominant, "count": str(len(objects))}[kind]
    if kind == "existence":
        truth = tuple(re.search(r"an? (\w+) (\w+) in", question).groups()) in present
    elif kind == "position":
        color, shape, side = re.fullmatch(r"Is the (\w+) (\w+) on the (\w+) of the image\?", question).groups()
        truth = _side(_named(scene, color, shape)) == side
    elif kind == "count":
        truth = int(re.search(r"\d", question).group()) == len(objects)
    else:
        asked = question.split()[-1].rstrip("?")
        truth = asked == {"background": scene["background"], "dominant_color": dominant}[kind]
    return "Yes" if truth else "No"


def test_training_records_are_llava_format_with_correct_answers(root, scenes, data):
    records = load_instruct(root / "train.json", root)
    assert len(records) == SMALL["n_train"]
    styles, yes_no, letters = Counter(), Counter(), Counter()
    for record, built in zip(records, data.train, strict=True):
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 2
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])
        scene = scenes[str(Path(record["image"]).relative_to(root.resolve()))]
        scopes = set()
        for question, answer, made in zip(turns[0::2], turns[1::2], built, strict=True):
            prompt = question["value"].removeprefix("<image>\n")
            assert (prompt, answer["value"]) == (made.text, made.answer)
            assert answer["value"] == _expected_answer(prompt, made.kind, scene), prompt
            style = _style(prompt)
            styles[style] += 1
            if style == "verify":
                yes_no[answer["value"]] += 1
            if style == "choice":
                letters[answer["value"]] += 1
            scopes.add(made.scope)
        assert scopes == {"global", "local"}
    assert set(styles) == set(TRAIN_STYLES)
    assert set(yes_no) == {"Yes", "No"} and abs(yes_no["Yes"] / sum(yes_no.values()) - 0.5) <= 0.1
    assert len(letters) > 1


def test_training_prompts_are_the_evaluation_prompts_of_the_same_questions(root):
    """Training prompts are exactly what the loaders make of the shapes evaluation questions."""
    items = (
        load_pope(root / "pope", root / "eval_images")
        + load_mme(root / "mme", root / "eval_images")
        + load_mmstar(root / "mmstar" / "mmstar.jsonl", root / "eval_images")
    )
    words = "|".join([*SHAPE_COLORS, *BACKGROUNDS, *SHAPES, r"\d", r"[A-D]: [\w ]+"])
    generic = re.compile(rf"\b({words})\b")
    eval_prompts = {generic.sub("_", i["prompt"]) for i in items}
    train = json.loads((root / "train.json").read_text())
    train_prompts = {
        generic.sub("_", t["value"].removeprefix("<image>\n"))
        for r in train
        for t in r["conversations"][0::2]
        if _style(t["value"]) != "open"
    }
    assert train_prompts <= eval_prompts


def test_more_turns_per_image_are_distinct_questions(tmp_path):
    generate_shapes(tmp_path, seed=5, n_train=64, n_eval=2, turns_per_image=4)
    built = build_shapes(seed=5, n_train=64, n_eval=2, image_size=64, turns_per_image=4).train
    for record, questions in zip(json.loads((tmp_path / "train.json").read_text()), built, strict=True):
        prompts = [t["value"].removeprefix("<image>\n") for t in record["conversations"][0::2]]
        assert len(set(prompts)) == 4 and prompts == [q.text for q in questions]
        assert [q.scope for q in questions] in (["global", "local"] * 2, ["local", "global"] * 2)


def test_pope_files_are_official_format_balanced_and_correct(root, scenes):
    for category in ("random", "popular", "adversarial"):
        lines = (root / "pope" / f"shapes_pope_{category}.json").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert [list(r) for r in rows] == [["question_id", "image", "text", "label"]] * len(rows)
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        assert Counter(r["label"] for r in rows) == {"yes": len(rows) // 2, "no": len(rows) // 2}
        for r in rows:
            assert isinstance(r["image"], str) and re.fullmatch(r"Is there an? \w+ \w+ in the image\?", r["text"])
            scene = _eval_scene(scenes, r["image"])
            color, shape = r["text"].split()[3:5]
            assert ((color, shape) in _objects(scene)) == (r["label"] == "yes")
            if category == "adversarial" and r["label"] == "no":
                assert any(color == c or shape == s for c, s in _objects(scene))
    assert len(load_pope(root / "pope", root / "eval_images", check_images=True)) == 3 * len(rows)


def test_pope_popular_negatives_are_the_most_frequent_absent_objects(root, scenes):
    frequency = Counter(o for rel, s in scenes.items() if rel.startswith("eval_") for o in _objects(s))
    negatives: dict[str, set] = {}
    for line in (root / "pope" / "shapes_pope_popular.json").read_text().splitlines():
        row = json.loads(line)
        if row["label"] == "no":
            negatives.setdefault(row["image"], set()).add(tuple(row["text"].split()[3:5]))
    for image, chosen in negatives.items():
        others = {(c, s) for c in SHAPE_COLORS for s in SHAPES} - chosen - _objects(_eval_scene(scenes, image))
        assert min(frequency[o] for o in chosen) >= max(frequency[o] for o in others)


def test_mme_files_have_yes_then_no_per_image_and_correct_answers(root, scenes, data):
    for subtask in ("existence", "count", "position", "color"):
        rows = [line.split("\t") for line in (root / "mme" / f"{subtask}.txt").read_text().splitlines()]
        assert rows and all(len(r) == 3 for r in rows)
        assert all(q.endswith(" Please answer yes or no.") for _, q, _ in rows)
        for first, second in zip(rows[0::2], rows[1::2]):
            assert first[0] == second[0] and (first[2], second[2]) == ("Yes", "No")
        for image, question, answer in rows:
            scene = _eval_scene(scenes, image)
            text = question.removesuffix(" Please answer yes or no.")
            if subtask == "existence":
                color, shape = text.split()[3:5]
                assert ((color, shape) in _objects(scene)) == (answer == "Yes")
            elif subtask == "count":
                assert (int(re.search(r"\d", text).group()) == len(scene["objects"])) == (answer == "Yes")
            elif subtask == "color" and text.startswith("Is the background"):
                assert (text.split()[-1].rstrip("?") == scene["background"]) == (answer == "Yes")
        assert {asked.question.scope for asked in data.mme[subtask]} == {scope_of("mme", subtask)}
    items = load_mme(root / "mme", root / "eval_images", check_images=True)
    assert {i["category"] for i in items} == {"existence", "count", "position", "color"}


def test_mmstar_lines_have_four_options_and_a_correct_letter(root, scenes, data):
    rows = [json.loads(line) for line in (root / "mmstar" / "mmstar.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(rows)))
    letters = Counter()
    for r, asked in zip(rows, data.mmstar, strict=True):
        question, options = r["question"].split("\nOptions: ")
        parsed = re.fullmatch(r"A: (.+), B: (.+), C: (.+), D: (.+)", options)
        assert parsed and r["answer"] in "ABCD"
        letters[r["answer"]] += 1
        correct = parsed.group("ABCD".index(r["answer"]) + 1)
        scene = _eval_scene(scenes, r["image"])
        if r["l2_category"] == "image scene and topic":
            assert correct == scene["background"]
        elif r["l2_category"] == "object counting":
            assert correct == str(len(scene["objects"]))
        elif r["l2_category"] == "recognition":
            assert tuple(correct.split()) in _objects(scene)
            assert sum(tuple(o.split()) in _objects(scene) for o in parsed.groups()) == 1
        assert r["question"] == asked.question.text
        assert scope_of("mmstar", r["category"], r["l2_category"]) == asked.question.scope
    assert set(letters) == set("ABCD")
    assert len(load_mmstar(root / "mmstar" / "mmstar.jsonl", root / "eval_images", check_images=True)) == len(rows)


def test_scope_mapping_rejects_unknown_inputs():
    assert scope_of("pope", "adversarial") == "local"
    assert scope_of("mmstar", "coarse perception", "image scene and topic") == "global"
    with pytest.raises(ValueError, match="'scene'"):
        scope_of("mme", "scene")
    with pytest.raises(ValueError, match="'shape_size'"):
        question_scope("shape_size")


def test_open_lines_answer_from_the_scene(root, scenes, data):
    rows = [json.loads(line) for line in (root / "open" / "open.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == list(range(len(rows)))
    assert json.loads((root / "manifest.json").read_text())["counts"]["open"] == len(rows)
    assert {r["category"] for r in rows} == {"background", "dominant_color", "count", "position"}
    for r, asked in zip(rows, data.open, strict=True):
        scene = _eval_scene(scenes, r["image"])
        assert (r["question"], asked.question.kind) == (asked.question.text, r["category"])
        assert scope_of("open", r["category"]) == question_scope(r["category"])
        if r["category"] == "background":
            assert r["answer"] == scene["background"]
        elif r["category"] == "count":
            assert r["answer"] == str(len(scene["objects"]))
        elif r["category"] == "position":
            color, shape = re.fullmatch(r"Is the (\w+) (\w+) on the left or the right\?", r["question"]).groups()
            (col,) = [o["cell"][1] for o in scene["objects"] if (o["color"], o["shape"]) == (color, shape)]
            assert r["answer"] == {0: "left", 2: "right"}[col]
    items = load_open_qa(root / "open" / "open.jsonl", root / "eval_images", check_images=True)
    assert len(items) == len(rows) and all(i["prompt"].endswith(SHORT_ANSWER) for i in items)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_one_image_evaluation_set_writes_no_empty_question_file(tmp_path, seed):
    """A subtask the single image asks nothing of gets no file (an empty one is a loading error)."""
    root = generate_shapes(tmp_path, seed=seed, n_train=2, n_eval=1)
    counts = json.loads((root / "manifest.json").read_text())["counts"]
    assert sorted(p.stem for p in (root / "mme").iterdir()) == sorted(counts["mme"]) and 0 < len(counts["mme"]) < 14
    images = root / "eval_images"
    assert len(load_mme(root / "mme", images)) == sum(counts["mme"].values())
    assert len(load_pope(root / "pope", images)) == sum(counts["pope"].values())
    assert len(load_mmstar(root / "mmstar" / "mmstar.jsonl", images)) == counts["mmstar"]
    assert len(load_open_qa(root / "open" / "open.jsonl", images)) == counts["open"]


def test_a_registered_format_is_written_with_its_own_stream_and_changes_no_other_file(tmp_path, monkeypatch):
    """The extension point of new benchmarks: a format module registers a writer; the built-in files stay
    byte-identical, the manifest counts its questions and names it (so cached datasets regenerate)."""
    from sinkflow.shapes.formats.base import FORMATS, ShapesFormat

    def write_toy(folder, scenes, rng, image_name):
        lines = [f"{image_name(i)}\t{scene.background}\t{rng.random():.6f}\n" for i, scene in enumerate(scenes)]
        (folder / "toy.tsv").write_text("".join(lines))
        return len(lines)

    plain = generate_shapes(tmp_path / "plain", seed=3, n_train=4, n_eval=5)
    monkeypatch.setattr(FORMATS, "_entries", dict(FORMATS._entries))  # forget the toy after the test
    FORMATS.register("toy", ShapesFormat(folder="toy", write=write_toy))
    with_toy = generate_shapes(tmp_path / "toy", seed=3, n_train=4, n_eval=5)
    rows = [row.split("\t")[:2] for row in (with_toy / "toy" / "toy.tsv").read_text().splitlines()]
    scenes = json.loads((with_toy / "scenes.json").read_text())
    assert rows == [[f"eval_{i:05d}.png", scenes[f"eval_images/eval_{i:05d}.png"]["background"]] for i in range(5)]
    manifest = json.loads((with_toy / "manifest.json").read_text())
    assert manifest["counts"]["toy"] == 5 and "toy" in manifest["params"]["formats"]
    for path in plain.rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            assert path.read_bytes() == (with_toy / path.relative_to(plain)).read_bytes(), path


def test_caption_records_name_every_shape_with_the_colour_its_pixels_have_and_the_cell_its_box_sits_in(tmp_path, root):
    """Captions come after the unchanged training records; each names the background and every shape once, its
    colour the pixel colour at the shape's centre and its cell the 3x3 cell of that centre, in reading order."""
    captioned = generate_shapes(tmp_path, seed=3, captions=True, **SMALL)
    records, n = json.loads((captioned / "train.json").read_text()), SMALL["n_train"]
    assert records[:n] == json.loads((root / "train.json").read_text())
    assert len(records) == 2 * n
    scenes = json.loads((captioned / "scenes.json").read_text())
    rows, columns = ("top", "middle", "bottom"), ("left", "center", "right")
    cell = 64 / 3
    for record, caption_record in zip(records[:n], records[n:], strict=True):
        assert caption_record["id"] == f"{record['id']}_caption" and caption_record["image"] == record["image"]
        (human, gpt) = caption_record["conversations"]
        assert human == {"from": "human", "value": "<image>\nDescribe the image briefly."}
        scene, image = scenes[record["image"]], Image.open(captioned / record["image"]).convert("RGB")
        background, listed = re.fullmatch(r"An? (\w+) background with (.+)\.", gpt["value"]).groups()
        assert image.getpixel((0, 0)) == BACKGROUNDS[background]
        named = [
            re.fullmatch(r"an? (\w+) (\w+) at the ([\w ]+)", part).groups() for part in re.split(r", | and ", listed)
        ]
        expected = []
        for o in scene["objects"]:
            x0, y0, x1, y1 = o["box"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            row, column = int(cy // cell), int(cx // cell)
            where = "center" if (row, column) == (1, 1) else f"{rows[row]} {columns[column]}"
            color = next(c for c, rgb in SHAPE_COLORS.items() if rgb == image.getpixel((cx, cy)))
            expected.append(((row, column), (color, o["shape"], where)))
        assert named == [name for _, name in sorted(expected)]
    params = json.loads((captioned / "manifest.json").read_text())["params"]
    assert params == {**json.loads((root / "manifest.json").read_text())["params"], "captions": True}
