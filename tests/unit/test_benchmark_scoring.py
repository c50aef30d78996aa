"""The worked examples of docs/benchmarks.md, each parser, and the official MME tool's own results on real answers."""

import json
import random

import pytest

from sinkflow.benchmarks.mme import MME, parse_mme
from sinkflow.benchmarks.mmstar import MMStar, mmstar_lmms_eval_letter, mmstar_official_correct
from sinkflow.benchmarks.pope import POPE, parse_pope
from sinkflow.eval.benchmark_scores import BenchmarkScores
from sinkflow.eval.metrics import score_records
from sinkflow.eval.score import main as score_main

POPE_LABELS = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
POPE_RAW = [
    "Yes, there is a dog in the image.",
    "Yes",
    "No, there is no cat.",
    "No",
    "Yes.",
    "There is not a car in the image.",
    "I think so.",
    "no",
]


def pope(answers, predictions, category="random"):
    return [
        {"benchmark": "pope", "id": f"{category}/{i}", "category": category, "answer": a, "prediction": p}
        for i, (a, p) in enumerate(zip(answers, predictions))
    ]


@pytest.mark.parametrize(
    "parser,parsed",
    [
        ("official", ["yes", "yes", "no", "no", "yes", "no", "yes", "no"]),
        ("lmms_eval", [None, "yes", None, "no", None, None, None, "no"]),
        ("vlmevalkit", ["yes", "yes", "no", "no", "yes", None, None, "no"]),
    ],
)
def test_g_pope_2_parsing(parser, parsed):
    assert [parse_pope(r, parser) for r in POPE_RAW] == parsed


def test_g_pope_2_metrics_per_parser():
    scores = POPE.score(pope(POPE_LABELS, POPE_RAW), "official")
    for name in ("accuracy", "precision", "recall", "f1"):
        assert scores[f"pope/random/{name}"] == 0.75
    assert scores["pope/random/yes_ratio"] == 0.5
    scores = POPE.score(pope(POPE_LABELS, POPE_RAW), "lmms_eval")
    assert scores["pope/random/accuracy"] == 0.375
    assert scores["pope/random/precision"] == scores["pope/random/recall"] == scores["pope/random/f1"] == 1.0
    assert scores["pope/random/yes_ratio"] == 0.125  # of the predictions (lmms-eval's own counts the labels)


def test_g_pope_1_real_confusion_matrix_and_mean_f1():
    cells = {("yes", "Yes"): 1183, ("no", "Yes"): 31, ("no", "No"): 1379, ("yes", "No"): 317}
    answers, predictions = [], []
    for (answer, prediction), n in cells.items():
        answers += [answer] * n
        predictions += [prediction] * n
    scores = POPE.score(pope(answers, predictions), "official")
    assert scores["pope/random/accuracy"] == 0.8804123711340206
    assert scores["pope/random/precision"] == 0.9744645799011532
    assert scores["pope/random/recall"] == 0.7886666666666666
    assert scores["pope/random/f1"] == 0.8717759764185703
    assert scores["pope/random/yes_ratio"] == 0.41718213058419246
    assert scores["pope/f1_mean"] == scores["pope/random/f1"]


G_MME_1 = [
    ("existence", "a.jpg", "Yes", "Yes"),
    ("existence", "a.jpg", "No", "No"),
    ("existence", "b.jpg", "Yes", "Yes"),
    ("existence", "b.jpg", "No", "Yes"),
    ("existence", "c.jpg", "Yes", "no"),
    ("existence", "c.jpg", "No", "No"),
    ("code_reasoning", "x.png", "Yes", "yes, it is python"),
    ("code_reasoning", "x.png", "No", "No."),
    ("code_reasoning", "y.png", "Yes", "I am not sure"),
    ("code_reasoning", "y.png", "No", "no"),
]


def mme(rows):
    return [
        {"benchmark": "mme", "id": f"{c}/{img}/{i}", "category": c, "image": img, "answer": a, "prediction": p}
        for i, (c, img, a, p) in enumerate(rows)
    ]


@pytest.mark.parametrize("parser", ["official", "lmms_eval"])
def test_g_mme_1(parser):
    scores = MME.score(mme(G_MME_1), parser)
    assert scores["mme/existence/acc"] == pytest.approx(66.667, abs=1e-3)
    assert scores["mme/existence/acc_plus"] == pytest.approx(33.333, abs=1e-3)
    assert scores["mme/existence/score"] == pytest.approx(100.0)
    assert scores["mme/code_reasoning/score"] == 125.0
    assert scores["mme/perception"] == pytest.approx(100.0) and scores["mme/cognition"] == 125.0


@pytest.mark.parametrize("parser,score", [("official", 100.0), ("lmms_eval", 200.0)])
def test_g_mme_2_parsers_diverge(parser, score):
    records = mme(
        [
            ("count", "1.jpg", "Yes", "Y"),
            ("count", "1.jpg", "No", "N"),
            ("count", "2.jpg", "Yes", "Yes."),
            ("count", "2.jpg", "No", "No, there are three."),
        ]
    )
    assert MME.score(records, parser)["mme/count/score"] == score


@pytest.mark.parametrize(
    "response,official,lmms,pope_rule",
    [
        ("The answer is no", None, None, "no"),
        ("Nope.", "no", "no", "yes"),
        ("None of them", "no", "no", "yes"),
        ("Y", None, "yes", "yes"),
        ("I am not sure", None, None, "no"),
    ],
)
def test_g_mme_3_parser_table(response, official, lmms, pope_rule):
    assert parse_mme(response, "official") == official
    assert parse_mme(response, "lmms_eval") == lmms
    assert parse_pope(response, "official") == pope_rule


@pytest.mark.parametrize(
    "response,answer,official,lmms",
    [
        ("A", "A", True, "A"),
        ("(B) the cat", "B", True, "B"),
        ("Option C", "C", True, "C"),
        ("The answer is D.", "D", True, "D"),
        ("B. Paris", "B", True, "B"),
        ("Answer: B", "B", False, "B"),
        ("b", "B", True, ""),
        ("I think the answer is C", "C", False, "C"),
        ("", "A", False, ""),
        ("A and B are wrong, so D", "D", False, "A"),
    ],
)
def test_g_mms_1_extraction(response, answer, official, lmms):
    assert mmstar_official_correct(response, answer) is official
    assert mmstar_lmms_eval_letter(response) == lmms


def test_g_mms_2_micro_and_macro_aggregation():
    scores = [
        ("math", "geometry", [1, 0, 0]),
        ("math", "numeric commonsense and calculation", [1]),
        ("math", "statistical reasoning", [0]),
        ("coarse perception", "image emotion", [1]),
        ("coarse perception", "image scene and topic", [1]),
    ]
    records = [
        {
            "benchmark": "mmstar",
            "id": f"{l2}/{i}",
            "category": core,
            "l2_category": l2,
            "answer": "A",
            "question": "q",
            "prediction": "A" if hit else "B",
        }
        for core, l2, hits in scores
        for i, hit in enumerate(hits)
    ]
    micro, macro = MMStar.score(records, "official"), MMStar.score(records, "lmms_eval")
    assert micro["mmstar/math/accuracy"] == 0.4 and micro["mmstar/coarse perception/accuracy"] == 1.0
    assert micro["mmstar/overall"] == 4 / 7
    assert macro["mmstar/math/accuracy"] == pytest.approx(0.4444, abs=1e-4)
    assert macro["mmstar/average"] == pytest.approx(0.6667, abs=1e-4)


def test_padded_duplicates_count_once():
    """N = 5, world 2 -> the sampler repeats item 0; accuracy stays 3/5, not 4/6
    (docs/benchmarks.md#evaluation-under-ddp)."""
    records = pope(["yes", "no", "yes", "no", "yes"], ["yes", "yes", "yes", "no", "no"])
    metric = BenchmarkScores()
    metric.update(records[0::2])  # rank 0
    metric.update(records[1::2] + records[:1])  # rank 1, with the padded copy of item 0
    assert metric.compute()["pope/random/accuracy"] == 0.6


def test_the_official_mme_tool_results_are_reproduced_exactly(tmp_path, mme_fixtures):
    expected = json.loads((mme_fixtures / "mme_lavin_results" / "expected_official.json").read_text())
    out = tmp_path / "metrics.json"
    score_main([str(mme_fixtures / "mme_lavin_results"), "--out", str(out)])
    got = json.loads(out.read_text())
    assert {k: got[k] for k in expected} == expected  # equality to the last bit, not approx


def test_score_cli_reads_a_predictions_file_and_names_bad_input(tmp_path):
    path = tmp_path / "predictions.jsonl"
    lines = [dict(r, question="q", prompt="p") for r in pope(POPE_LABELS, POPE_RAW)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert score_main([str(path)]) == score_records(lines)
    assert score_main([str(path), "--parser", "lmms_eval"])["pope/random/accuracy"] == 0.375
    with pytest.raises(FileNotFoundError, match="neither a predictions file"):
        score_main([str(tmp_path / "missing.jsonl")])


def mmstar_file(path, hits):
    rows = [
        {
            "benchmark": "mmstar",
            "id": str(i),
            "category": "math",
            "l2_category": "geometry",
            "answer": "A",
            "question": "q",
            "prompt": "p",
            "prediction": "A" if hit else "B",
        }
        for i, hit in enumerate(hits)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_multimodal_gain_and_leakage_from_three_files(tmp_path):
    """MMStar README example scale: S_v 0.6, S_wv 0.3, S_t 0.2 -> MG 0.3, ML 0.1 (ML floors at 0)."""
    with_image = mmstar_file(tmp_path / "v.jsonl", [1] * 6 + [0] * 4)
    without = mmstar_file(tmp_path / "wv.jsonl", [1] * 3 + [0] * 7)
    text = mmstar_file(tmp_path / "t.jsonl", [1] * 2 + [0] * 8)
    scores = score_main([with_image, "--without-image", without, "--text-only", text])
    assert scores["mmstar/multimodal_gain"] == pytest.approx(0.3) and scores["mmstar/leakage"] == pytest.approx(0.1)
    assert score_main([with_image, "--without-image", without, "--text-only", with_image])["mmstar/leakage"] == 0.0
    assert "mmstar/leakage" not in score_main([with_image, "--without-image", without])
    with pytest.raises(SystemExit):
        score_main([with_image, "--text-only", text])


def test_prompt_suffixes_are_configurable(tmp_path):
    from sinkflow.benchmarks.mmstar import load_mmstar
    from sinkflow.benchmarks.pope import load_pope

    (tmp_path / "x_pope_random.json").write_text(
        json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}) + "\n"
    )
    assert load_pope(tmp_path, tmp_path)[0]["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    assert load_pope(tmp_path, tmp_path, suffix=" Please answer yes or no.")[0]["prompt"] == (
        "Is there a cat in the image? Please answer yes or no."
    )
    row = {
        "index": 0,
        "question": "Which?\nOptions: A: x, B: y, C: z, D: w",
        "image": "a.jpg",
        "answer": "A",
        "category": "math",
        "l2_category": "geometry",
    }
    (tmp_path / "mmstar.jsonl").write_text(json.dumps(row) + "\n")
    official = load_mmstar(tmp_path / "mmstar.jsonl", tmp_path)[0]["prompt"]
    lmms = load_mmstar(
        tmp_path / "mmstar.jsonl", tmp_path, suffix="\nAnswer with the option's letter from the given choices directly"
    )[0]["prompt"]
    assert official.endswith("directly.") and lmms.endswith("directly") and official == lmms + "."


def test_questions_can_be_asked_without_their_image():
    from sinkflow.data.datamodule import eval_sample

    item = {"id": "1", "benchmark": "mmstar", "image_path": "/x/a.jpg", "image": "a.jpg", "prompt": "Which?"}
    with_image, without = eval_sample(item), eval_sample(item, with_image=False)
    assert with_image["image"] == "/x/a.jpg" and with_image["conversations"][0]["value"] == "<image>\nWhich?"
    assert without["image"] is None and without["conversations"][0]["value"] == "Which?"
    assert without["meta"]["image"] == "a.jpg"


def mixed_records() -> list[dict]:
    """Every benchmark, scopes, and routing times whose plain float sum depends on the order they are added in."""
    records = pope(POPE_LABELS, POPE_RAW) + pope(POPE_LABELS[:5], POPE_RAW[3:], "adversarial") + mme(G_MME_1)
    records += [
        {
            "benchmark": "mmstar",
            "id": str(i),
            "category": "math",
            "l2_category": l2,
            "answer": "A",
            "question": "Which? Options: A: red, B: blue",
            "prediction": prediction,
        }
        for i, (l2, prediction) in enumerate(
            [
                ("geometry", "A"),
                ("geometry", "B"),
                ("statistical reasoning", "(A) red"),
                ("numeric commonsense and calculation", "red"),
            ]
        )
    ]
    records += [
        {
            "benchmark": "open",
            "id": str(i),
            "category": "count",
            "answer": "3",
            "prediction": prediction,
            "routing": {"route": route, "seconds": seconds},
        }
        for i, (prediction, route, seconds) in enumerate(
            [("3", "both", 0.1), ("4", "sinks_only", 0.2), ("3.", "both", 0.7), ("", "both", 1e-3)]
        )
    ]
    for k, record in enumerate(records):
        record["scope"] = ("global", "local")[k % 2]
    return records


@pytest.mark.parametrize("parser", ["official", "lmms_eval", "vlmevalkit"])
def test_scores_do_not_depend_on_how_records_are_split(parser):
    """Whatever the order, the repeats (padding, a resumed file), the batches and the ranks that saw them: each
    question counts once and every score is equal to the last bit (ranks joined as the all-gather joins them)."""
    records = mixed_records()
    reference = score_records(records, parser)
    assert reference["routing/seconds_per_image"] == pytest.approx(1.001 / 4)
    rng = random.Random(0)
    for _ in range(20):
        answered = records + rng.sample(records, len(records) // 3)
        rng.shuffle(answered)
        ranks = [BenchmarkScores(parser) for _ in range(rng.randint(1, 4))]
        while answered:
            size = rng.randint(1, 6)
            rng.choice(ranks).update(answered[:size])
            answered = answered[size:]
        joined = ranks[0]
        for rank in ranks[1:]:
            joined.merge_state(rank)
        assert joined.compute() == reference
