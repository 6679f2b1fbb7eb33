import numpy as np
import pytest

from rs_hashing.data.noisy_pairs import NoisyPairs


def test_realised_rate_is_close_to_the_requested_rate():
    labels = np.arange(5000) % 10
    for rate in (0.1, 0.3, 0.5):
        pairs = NoisyPairs.inject(labels, rate, seed=3)
        # Binomial(5000, p): 4 standard deviations is at most 0.029.
        assert abs(pairs.realised_rate - rate) < 0.03
        assert pairs.summary()["num_noisy"] == int(pairs.noisy.sum())


def test_replaced_captions_come_from_another_class_and_clean_pairs_keep_theirs():
    labels = np.arange(300) % 3
    pairs = NoisyPairs.inject(labels, 0.5, seed=0)
    assert np.all(labels[pairs.caption_source[pairs.noisy]] != labels[pairs.noisy])
    np.testing.assert_array_equal(pairs.caption_source[~pairs.noisy], np.flatnonzero(~pairs.noisy))


def test_protected_subset_is_never_corrupted():
    labels = np.arange(1000) % 4
    pairs = NoisyPairs.inject(labels, 1.0, seed=1, clean_fraction=0.2)
    assert pairs.protected.sum() == 200
    assert not np.any(pairs.noisy & pairs.protected)
    assert np.all(pairs.noisy[~pairs.protected])
    assert pairs.realised_rate == pytest.approx(0.8)


def test_zero_rate_and_determinism():
    labels = np.arange(50) % 5
    assert not NoisyPairs.inject(labels, 0.0).noisy.any()
    a, b = NoisyPairs.inject(labels, 0.4, seed=9), NoisyPairs.inject(labels, 0.4, seed=9)
    np.testing.assert_array_equal(a.caption_source, b.caption_source)


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise_rate=1.2"):
        NoisyPairs.inject(np.zeros(4, int), 1.2)
    with pytest.raises(ValueError, match="two classes"):
        NoisyPairs.inject(np.zeros(40, int), 0.5)
