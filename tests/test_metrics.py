import math

import numpy as np
import pytest

from ecdna_exp.metrics import bootstrap_interval, count_metrics, objective, paired_bootstrap_not_worse


def test_exact_values_on_small_case():
    counts_true = np.array([0, 2, 4, 10])
    counts_pred = np.array([1, 2, 7, 6])
    m = count_metrics(counts_true, counts_pred, n_resamples=200)
    assert m["n"] == 4
    assert m["coverage"] == 1.0
    assert m["mae"] == pytest.approx(2.0)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 9 + 16) / 4))
    assert m["bias"] == pytest.approx(0.0)
    assert m["pearson_r"] == pytest.approx(np.corrcoef(counts_true, counts_pred)[0, 1])
    assert m["spearman_rho"] == pytest.approx(0.8)
    # Median of the true counts is 3, so the median predictor errs by 3, 1, 1, 7.
    assert m["mae_median_baseline"] == pytest.approx(3.0)
    assert m["skill"] == pytest.approx(1 - 2.0 / 3.0)
    assert m["mae_ci_low"] <= m["mae"] <= m["mae_ci_high"]


def test_unparsed_answers_lower_coverage_not_error():
    counts_true = np.array([1, 5, 9])
    counts_pred = np.array([1, np.nan, 10])
    m = count_metrics(counts_true, counts_pred, n_resamples=100)
    assert m["n"] == 3
    assert m["n_parsed"] == 2
    assert m["coverage"] == pytest.approx(2 / 3)
    assert m["mae"] == pytest.approx(0.5)
    # The unparsed image costs |5 - 5| + 1.
    assert m["objective"] == pytest.approx((0 + 1 + 1) / 3)


def test_objective_finite_when_nothing_parses():
    counts_true = np.array([0, 4, 8])
    value = objective(counts_true, np.full(3, np.nan))
    assert value == pytest.approx((4 + 0 + 4) / 3 + 1)
    m = count_metrics(counts_true, np.full(3, np.nan), n_resamples=10)
    assert math.isnan(m["mae"])
    assert m["coverage"] == 0.0
    assert math.isfinite(m["objective"])


def test_objective_rejects_empty_input():
    with pytest.raises(ValueError, match="empty"):
        objective(np.array([]), np.array([]))


def test_constant_predictions_give_nan_correlation():
    m = count_metrics(np.array([1, 2, 3]), np.array([4, 4, 4]), n_resamples=10)
    assert math.isnan(m["pearson_r"])
    assert m["mae"] == pytest.approx(2.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    errors = np.array([-3.0, 1.0, 0.0, 2.0, 5.0, -1.0])
    first = bootstrap_interval(errors, "mae", seed=4)
    assert first == bootstrap_interval(errors, "mae", seed=4)
    assert first[0] <= np.abs(errors).mean() <= first[1]
    with pytest.raises(ValueError, match="invalid statistic"):
        bootstrap_interval(errors, "median", seed=4)


def test_paired_bootstrap_separates_clear_loser():
    rng = np.random.default_rng(0)
    good = rng.uniform(0, 1, 60)
    close = good + rng.normal(0, 0.05, 60)
    bad = good + 3.0
    result = paired_bootstrap_not_worse({"good": good, "close": close, "bad": bad})
    assert result["best"] in {"good", "close"}
    assert result["not_worse"]["good"] is True
    assert result["not_worse"]["close"] is True
    assert result["not_worse"]["bad"] is False
