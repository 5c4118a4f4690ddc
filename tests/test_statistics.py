from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from common.evaluation.statistics import paired_permutation_test


def exact_sign_flip_p_value(first: np.ndarray, second: np.ndarray) -> float:
    """Independent derivation: enumerate every swap pattern of the pairs."""
    differences = first - second
    observed = abs(differences.mean())
    statistics = [
        abs((differences * np.array(signs)).mean()) for signs in itertools.product((1, -1), repeat=len(differences))
    ]
    return float(np.mean(np.array(statistics) >= observed - 1e-12))


def test_identical_inputs_give_p_one():
    values = np.linspace(0.5, 0.9, 12)
    result = paired_permutation_test(values, values.copy())
    assert result.p_value == 1.0
    assert result.statistic == 0.0
    assert result.n_pairs == 12


def test_constant_shift_of_five_pairs_has_closed_form_p_value():
    # only the all-original and all-swapped patterns reach |mean| = 1: p = 2 / 2**5
    result = paired_permutation_test(np.arange(5.0), np.arange(5.0) + 1)
    assert result.p_value == pytest.approx(2 / 32)
    assert result.mean_difference == pytest.approx(-1.0)


def test_exact_enumeration_matches_brute_force():
    rng = np.random.default_rng(4)
    first, second = rng.normal(size=9), rng.normal(size=9) + 0.4
    result = paired_permutation_test(first, second)
    assert result.p_value == pytest.approx(exact_sign_flip_p_value(first, second))
    assert result.statistic == pytest.approx(abs((first - second).mean()))


def test_random_permutations_approximate_the_exact_p_value_and_are_seeded():
    rng = np.random.default_rng(5)
    first, second = rng.normal(size=15), rng.normal(size=15) + 0.3  # 2**15 > 10,000: Monte Carlo
    exact = exact_sign_flip_p_value(first, second)
    result = paired_permutation_test(first, second, seed=1)
    # binomial standard error of 10,000 draws is below 0.005
    assert result.p_value == pytest.approx(exact, abs=0.02)
    assert paired_permutation_test(first, second, seed=1).p_value == result.p_value


def test_non_finite_pairs_are_dropped_and_counted():
    result = paired_permutation_test([0.5, math.nan, 0.7, 0.9], [0.4, 0.6, math.inf, 0.8])
    assert (result.n_pairs, result.n_dropped) == (2, 2)
    assert result.mean_difference == pytest.approx(0.1)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="equal length"):
        paired_permutation_test([1.0, 2.0], [1.0])
