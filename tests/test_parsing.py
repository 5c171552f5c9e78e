"""Tests for reading counts and confidences out of model answers."""

import collections
import dataclasses
import time
from pathlib import Path

import pandas as pd
import pytest

from ecdna_exp.parsing import ParsedAnswer, ParseStatus, parse_confidence, parse_count

MINICPM_PREDICTIONS = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "seed_results"
    / "minicpm_predictions.csv"
)

EXACT, APPROXIMATE, RANGE, BOUND = "exact", "approximate", "range", "bound"
REFUSAL, NONE = "refusal", "none"

# (answer_text, expected value, expected status)
CASES = [
    # plain numbers and sentences
    ("12", 12, EXACT),
    (" 7\n", 7, EXACT),
    ("There are 12 ecDNA.", 12, EXACT),
    ("12.5", 12.5, EXACT),
    ("1,024", 1024, EXACT),
    ("The ecDNA count is 10,583.", 10583, EXACT),
    ("**7**", 7, EXACT),
    ("The count is **15**.", 15, EXACT),
    ("**Answer:** 9", 9, EXACT),
    ("The figure shows 2408.", 2408, EXACT),
    ("There are 10 instances of ecDNA in the figure.", 10, EXACT),
    ("There are 20 green dots in the patch.", 20, EXACT),
    ("I found 14 extrachromosomal DNA elements.", 14, EXACT),
    # number words
    ("four", 4, EXACT),
    ("twenty-one", 21, EXACT),
    ("twenty one ecDNA", 21, EXACT),
    ("ninety-nine", 99, EXACT),
    ("one hundred and five", 105, EXACT),
    ("a hundred ecDNA", 100, EXACT),
    ("two hundred thirty-four", 234, EXACT),
    ("nine hundred ninety-nine", 999, EXACT),
    ("one thousand ecDNA", 1000, EXACT),
    ("two thousand three hundred and five", 2305, EXACT),
    ("There is one ecDNA.", 1, EXACT),
    ("There is a single ecDNA near the nucleus.", 1, EXACT),
    # which number is the count
    ("I see 3 nuclei and 40 chromosomes. Answer: 14", 14, EXACT),
    ("Answer: 10. Final answer: 12", 12, EXACT),
    ("Final answer: 12. Answer: 10", 12, EXACT),
    ("Count: 8", 8, EXACT),
    ("Total = 31", 31, EXACT),
    ("Nuclei count: 3. ecDNA count: 12.", 12, EXACT),
    ("ecDNA count: 12. Nuclei count: 3.", 12, EXACT),
    ("ecDNA: 12, nuclei: 3", 12, EXACT),
    ("3 nuclei with 12 ecDNA", 12, EXACT),
    ("There are 12 ecDNA in 3 nuclei.", 12, EXACT),
    ("The 256x256 pixels patch shows 9 ecDNA", 9, EXACT),
    ("There are 12 ecDNA and 3 nuclei. Count: 3 nuclei", 12, EXACT),
    ("Count of nuclei = 2; count of ecDNA = 11", 11, EXACT),
    ("The number of ecDNA in this 256 × 256 image is 7", 7, EXACT),
    ("Reasoning: 4 clusters of about 3 dots each.\nFinal Answer: 12", 12, EXACT),
    ("Answer: 256x256", None, NONE),
    ("In this 256x256 image I count 6", 6, EXACT),
    # LaTeX and JSON
    ("\\boxed{12}", 12, EXACT),
    ("$\\boxed{12}$", 12, EXACT),
    ("First 5, then 7 more, so \\boxed{12}", 12, EXACT),
    ("The answer is \\boxed{approximately 20}", 20, APPROXIMATE),
    ('{"count": 12}', 12, EXACT),
    ('{"ecDNA_count": 12, "confidence": 0.8}', 12, EXACT),
    ('{"confidence": 0.95, "count": 7}', 7, EXACT),
    ('```json\n{"ecdna_count": 3}\n```', 3, EXACT),
    ('{"count": "10-15"}', 12.5, RANGE),
    # confidence is never the count
    ("Count: 12. Confidence: 0.8", 12, EXACT),
    ("Count: 6\nConfidence: low", 6, EXACT),
    ("Count: 2\n\nConfidence: 0.8", 2, EXACT),
    ("12 (confidence 0.8)", 12, EXACT),
    ("I am 90% sure there are 12 ecDNA", 12, EXACT),
    ("Confidence: 0.8", None, NONE),
    # hedged counts
    ("approximately 20", 20, APPROXIMATE),
    ("about 20 dots", 20, APPROXIMATE),
    ("around 12", 12, APPROXIMATE),
    ("roughly 30 ecDNA", 30, APPROXIMATE),
    ("~20", 20, APPROXIMATE),
    ("Estimated count: 20", 20, APPROXIMATE),
    ("20 or so", 20, APPROXIMATE),
    ("The count of ecDNA is approximately 34.", 34, APPROXIMATE),
    ("ecDNA count (approx.): 40", 40, APPROXIMATE),
    # ranges give the midpoint
    ("10-15", 12.5, RANGE),
    ("10\u201315", 12.5, RANGE),
    ("10 to 15", 12.5, RANGE),
    ("between 3 and 5", 4, RANGE),
    ("from 8 to 10 ecDNA", 9, RANGE),
    ("ten to fifteen", 12.5, RANGE),
    ("Answer: 10 - 14", 12, RANGE),
    ("Approximately 15-20 ecDNA", 17.5, RANGE),
    # bounds give the bound
    ("more than 10", 10, BOUND),
    ("at least 10", 10, BOUND),
    ("over 10 ecDNA", 10, BOUND),
    ("fewer than 5", 5, BOUND),
    ("< 5", 5, BOUND),
    ("10+", 10, BOUND),
    ("10 or more ecDNA", 10, BOUND),
    # a zero is a count
    ("0", 0, EXACT),
    ("zero", 0, EXACT),
    ("There are no ecDNA.", 0, EXACT),
    ("None are visible.", 0, EXACT),
    ("No visible ecDNA.", 0, EXACT),
    ("The image does not contain any ecDNA.", 0, EXACT),
    ("I don't see any ecDNA", 0, EXACT),
    ("None", 0, EXACT),
    # refusals
    ("The exact count cannot be determined", None, REFUSAL),
    ("I'm unable to count the ecDNA in this image.", None, REFUSAL),
    ("It is not possible to tell how many ecDNA are present.", None, REFUSAL),
    ("I cannot count them.", None, REFUSAL),
    ("There is no ecDNA count provided in the given text.", None, REFUSAL),
    (
        "I'm sorry, but I am unable to provide an answer as the figure does not contain any ecDNA.",
        None,
        REFUSAL,
    ),
    ("无法回答，因为缺少具体数据。", None, REFUSAL),
    # no usable number
    (None, None, NONE),
    ("", None, NONE),
    ("   ", None, NONE),
    ("NaN", None, NONE),
    ("N/A", None, NONE),
    ("I see many ecDNA", None, NONE),
    ("hundreds of ecDNA", None, NONE),
    ("I see 3 nuclei and 40 chromosomes.", None, NONE),
    ("256x256 pixels", None, NONE),
    ('{"count": null}', None, NONE),
    # negative numbers are not counts, dash bullets are
    ("-3", None, NONE),
    ("Answer: -3", None, NONE),
    ("- 3", 3, EXACT),
    ("- 12 ecDNA", 12, EXACT),
]


@pytest.mark.parametrize(("answer_text", "value", "status"), CASES)
def test_parse_count_table(answer_text, value, status):
    parsed = parse_count(answer_text)
    assert parsed.status == status
    assert parsed.value == value


def test_case_table_size():
    assert len(CASES) >= 60
    assert {status for _, _, status in CASES} == {s.value for s in ParseStatus}


def test_span_is_the_quantity_text():
    assert parse_count("The count of ecDNA is approximately 34.").span == "approximately 34"
    assert parse_count("I see 3 nuclei and 40 chromosomes. Answer: 14").span == "14"
    assert parse_count("between 3 and 5 ecDNA").span == "between 3 and 5"
    assert parse_count("-3").span is None


def test_status_is_a_string():
    parsed = parse_count("about 7")
    assert parsed.status == "approximate"
    assert str(parsed.status) == "approximate"


def test_parsed_answer_is_frozen():
    parsed = parse_count("12")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.value = 13


@pytest.mark.parametrize(
    ("answer_text", "confidence"),
    [
        ("Confidence: 0.8", 0.8),
        ("confidence: 80%", 0.8),
        ("Confidence: 85", 0.85),
        ("Count: 12 (confidence 7/10)", 0.7),
        ("I am 75% confident", 0.75),
        ('{"ecDNA_count": 12, "confidence": 0.8}', 0.8),
        ("high confidence", 0.9),
        ("Confidence level: medium", 0.6),
        ("confidence: low", 0.3),
        ("I am highly confident there are 12", 0.9),
        ("Confidence: 0.4. On reflection, confidence: 0.7", 0.7),
        ("Confidence: 150%", None),
        ("12", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_confidence(answer_text, confidence):
    assert parse_confidence(answer_text) == confidence


@pytest.fixture(scope="module")
def minicpm_outputs():
    if not MINICPM_PREDICTIONS.exists():
        pytest.skip(f"MiniCPM-V predictions not found at {MINICPM_PREDICTIONS}")
    frame = pd.read_csv(MINICPM_PREDICTIONS, keep_default_na=False)
    return frame["Output"].tolist()


def test_minicpm_outputs_status_counts(minicpm_outputs):
    started = time.perf_counter()
    parsed = [parse_count(output) for output in minicpm_outputs]
    elapsed_s = time.perf_counter() - started

    statuses = collections.Counter(answer.status.value for answer in parsed)
    assert len(minicpm_outputs) == 13434
    assert set(statuses) <= {s.value for s in ParseStatus}
    # Measured with this parser: 13,211 exact, 219 refusal, 3 approximate and 1 bound.
    assert 13150 <= statuses["exact"] <= 13260
    assert 200 <= statuses["refusal"] <= 240
    assert statuses["approximate"] == 3
    assert statuses["bound"] == 1
    assert statuses["range"] == 0
    assert statuses["none"] == 0
    assert elapsed_s < 2.0


def test_minicpm_outputs_value_matches_status(minicpm_outputs):
    for output in minicpm_outputs:
        parsed = parse_count(output)
        has_value = parsed.status not in (ParseStatus.REFUSAL, ParseStatus.NONE)
        assert (parsed.value is not None) == has_value, output
        assert parsed.value is None or parsed.value >= 0, output


# Real MiniCPM-V outputs, each read by hand.
MINICPM_ROWS = [
    ("The count of ecDNA is 10.", ParsedAnswer(10.0, ParseStatus.EXACT, "10")),
    ("There are 10 instances of ecDNA in the figure.", ParsedAnswer(10.0, ParseStatus.EXACT, "10")),
    ("There are 14 ecDNA points.", ParsedAnswer(14.0, ParseStatus.EXACT, "14")),
    ("There is only one ecDNA mentioned in the text.", ParsedAnswer(1.0, ParseStatus.EXACT, "one")),
    ("The ecDNA count is 10,583.", ParsedAnswer(10583.0, ParseStatus.EXACT, "10,583")),
    ("The numerical answer is 271.", ParsedAnswer(271.0, ParseStatus.EXACT, "271")),
    ("The exact count of ecDNA is 35.", ParsedAnswer(35.0, ParseStatus.EXACT, "35")),
    (
        "The count of ecDNA is approximately 250.",
        ParsedAnswer(250.0, ParseStatus.APPROXIMATE, "approximately 250"),
    ),
    (
        (
            "The exact count cannot be determined from the provided information, but there are at least 24 "
            "instances of ecDNA in different colors scattered across the image."
        ),
        ParsedAnswer(24.0, ParseStatus.BOUND, "at least 24"),
    ),
    (
        "The exact count of ecDNA cannot be determined from the given information.",
        ParsedAnswer(
            None,
            ParseStatus.REFUSAL,
            "The exact count of ecDNA cannot be determined from the given information.",
        ),
    ),
    (
        (
            "The exact count cannot be determined from the given description, but it is a quantity that can "
            "typically range between 10^4 to several billion."
        ),
        None,
    ),
    ("There is no ecDNA value provided in the given text.", None),
    (
        (
            "I'm sorry, but I cannot see any ecDNA in the image provided. Please provide me with a different "
            "figure or description of what you are looking for so that I can assist better!"
        ),
        None,
    ),
    ('无法回答，因为图片中缺少关于"ecDNA count = x, y.', None),
]


@pytest.mark.parametrize(("output", "expected"), MINICPM_ROWS)
def test_minicpm_rows_parse_as_read(minicpm_outputs, output, expected):
    assert output in minicpm_outputs
    parsed = parse_count(output)
    if expected is None:
        assert parsed.status == ParseStatus.REFUSAL
        assert parsed.value is None
    else:
        assert parsed == expected
