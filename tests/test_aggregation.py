import json
import math

import numpy as np
import pandas as pd
import pytest

from ecdna_exp.aggregation import aggregate_trials, aggregate_values, majority_vote


@pytest.mark.parametrize(
    ("values", "method", "expected"),
    [
        ([3, 4, 8], "mean", 5.0),
        ([3, 4, 8], "median", 4.0),
        ([3, 3, 8], "majority", 3.0),
        ([3, np.nan, 5], "median", 4.0),
        ([2, 2, 6, 6, 5], "majority", 6.0),
        ([2, 2, 6, 6], "majority", 2.0),
        ([7], "majority", 7.0),
    ],
)
def test_aggregate_values(values, method, expected):
    assert aggregate_values(values, method) == expected


def test_all_unparsed_stays_unparsed():
    assert math.isnan(aggregate_values([np.nan, np.nan], "median"))
    assert math.isnan(majority_vote([]))


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="invalid aggregation 'mode'"):
        aggregate_values([1.0], "mode")


def test_aggregate_trials_one_row_per_image():
    rows = []
    for trial, (a, b) in enumerate([(3, np.nan), (5, np.nan), (4, 9)]):
        rows.append({"image_id": "a", "trial": trial, "count_true": 4, "count_pred": a, "answer_text": str(a),
                     "parse_status": "exact", "confidence": np.nan, "latency_s": 0.5, "error": None})
        rows.append({"image_id": "b", "trial": trial, "count_true": 8, "count_pred": b,
                     "answer_text": "unclear" if np.isnan(b) else str(b), "parse_status": "none" if np.isnan(b) else "exact",
                     "confidence": np.nan, "latency_s": 0.5, "error": None})
    frame = aggregate_trials(pd.DataFrame(rows), "median")
    assert frame["image_id"].tolist() == ["a", "b"]
    assert frame["count_pred"].tolist() == [4.0, 9.0]
    assert frame["n_parsed"].tolist() == [3, 1]
    assert frame["parse_status"].tolist() == ["aggregate", "aggregate"]
    assert json.loads(frame.loc[1, "answers"]) == ["unclear", "unclear", "9"]
    assert frame.loc[0, "latency_s"] == pytest.approx(1.5)
