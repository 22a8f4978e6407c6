import pytest

from lungviz.inference.prediction import ModelResult
from lungviz.reporting.figures import comparison_chart, probability_chart
from tests.model_factory import model_result


def _result(name: str, p_covid: float, threshold: float) -> ModelResult:
    return model_result(
        name, p_covid, threshold, task="ct-covid", architecture="arch", method=None, explained_class=None
    )


def test_probability_chart_draws_each_class_and_the_threshold():
    figure = probability_chart(_result("lite0", 0.7, 0.6))
    (bars,) = figure.data
    assert list(bars.y) == ["non-COVID", "COVID"]
    assert list(bars.x) == pytest.approx([0.3, 0.7])
    (line,) = figure.layout.shapes
    assert line.x0 == line.x1 == 0.6
    assert "threshold 0.60" in figure.layout.annotations[0].text


def test_comparison_chart_has_one_bar_and_threshold_marker_per_model():
    results = [_result("lite0", 0.7, 0.6), _result("lite1", 0.2, 0.4), _result("cnn", 0.5, 0.5)]
    bars, thresholds = comparison_chart(results).data
    assert list(bars.x) == ["lite0", "lite1", "cnn"]
    assert list(bars.y) == pytest.approx([0.7, 0.2, 0.5])
    assert list(thresholds.y) == pytest.approx([0.6, 0.4, 0.5])
    assert bars.marker.color[0] != bars.marker.color[1]  # positive and negative decisions are told apart


def test_comparison_chart_of_nothing_is_empty():
    assert comparison_chart([]).data == ()
