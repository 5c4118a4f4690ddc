"""Paired permutation test used by the RW paper to compare losses case by case."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of a paired permutation test.

    Attributes:
        statistic: observed absolute mean difference ``|mean(a - b)|``.
        p_value: permutation p-value (``>= 1 / (n_permutations + 1)``; exact when all sign patterns fit).
        n_pairs: number of finite pairs used.
        n_dropped: pairs dropped because a value was NaN or infinite.
        mean_difference: signed ``mean(a - b)`` over the pairs used.
    """

    statistic: float
    p_value: float
    n_pairs: int
    n_dropped: int
    mean_difference: float


def _absolute_mean_difference(first: np.ndarray, second: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.mean(first - second, axis=axis))


def paired_permutation_test(
    first: np.ndarray | list[float],
    second: np.ndarray | list[float],
    n_permutations: int = 10_000,
    seed: int | None = 0,
) -> PairedTestResult:
    """Two-sided paired permutation test with the absolute mean difference as statistic.

    Under the null hypothesis the two values of each pair (for example the Dice of one case under two losses) are
    exchangeable, so each permutation swaps the values of every pair with probability 1/2 (`scipy.stats.
    permutation_test` with ``permutation_type="samples"``). With ``2**n_pairs <= n_permutations`` scipy enumerates
    all swaps and the p-value is exact. Pairs with a NaN or infinite value (absent structures, infinite Hausdorff
    distances) are dropped and counted.

    Args:
        first: values of the first method, one per case.
        second: values of the second method for the same cases, in the same order.
        n_permutations: random permutations when exact enumeration is larger.
        seed: random seed (``None`` for fresh entropy).

    Returns:
        A `PairedTestResult`; ``p_value`` is 1 when fewer than two pairs remain or the pairs are identical.

    Raises:
        ValueError: when the inputs are not 1D sequences of the same length.
    """
    first_array = np.asarray(first, dtype=np.float64)
    second_array = np.asarray(second, dtype=np.float64)
    if first_array.ndim != 1 or first_array.shape != second_array.shape:
        raise ValueError(
            f"paired samples must be 1D of equal length, got {first_array.shape} and {second_array.shape}."
        )
    finite = np.isfinite(first_array) & np.isfinite(second_array)
    first_array, second_array = first_array[finite], second_array[finite]
    n_pairs = int(finite.sum())
    n_dropped = len(finite) - n_pairs
    mean_difference = float(np.mean(first_array - second_array)) if n_pairs else float("nan")
    if n_pairs < 2:
        return PairedTestResult(abs(mean_difference), 1.0, n_pairs, n_dropped, mean_difference)
    result = stats.permutation_test(
        (first_array, second_array),
        _absolute_mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_permutations,
        alternative="greater",
        random_state=np.random.default_rng(seed),  # `rng` only from scipy 1.15; the project allows 1.12
    )
    return PairedTestResult(float(result.statistic), float(result.pvalue), n_pairs, n_dropped, mean_difference)
