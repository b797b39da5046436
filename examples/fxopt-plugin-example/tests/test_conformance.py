"""What a plugin's own test suite runs: fxopt's conformance kit on its pass."""

from fxopt_plugin_example.magnitude import MagnitudeThreshold

from fxopt.testing import assert_conformant


def test_magnitude_threshold_conforms():
    assert_conformant(MagnitudeThreshold, {"fraction": 0.1})
