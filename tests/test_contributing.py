"""CONTRIBUTING.md's recipe for a new explanation method works as written."""

import re
from pathlib import Path

import numpy as np
import pytest

from lungviz.inference.explanations import METHODS, get_explainer
from tests.model_factory import INPUT_SIZE, nested_sigmoid_model

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


@pytest.fixture
def guide_method():
    """The method of the guide's example, registered for one test and removed after it."""
    section = GUIDE.read_text().split("## Add an explanation method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    before = set(METHODS)
    exec(compile(code, str(GUIDE), "exec"), {})
    added = set(METHODS) - before
    assert len(added) == 1, "the guide's example registers exactly one method"
    key = added.pop()
    yield key
    del METHODS[key]


def test_the_guides_example_method_registers_and_explains_a_nested_model(guide_method):
    explainer = get_explainer(guide_method, nested_sigmoid_model(), "base_last_conv")
    image = np.random.default_rng(0).uniform(0, 255, (1, *INPUT_SIZE, 3)).astype(np.float32)
    probabilities, heatmap = explainer.explain_with_probabilities(image, lambda p: int(np.argmax(p)))
    assert probabilities.shape == (2,)
    assert heatmap.shape == INPUT_SIZE
    assert heatmap.min() >= 0
    assert heatmap.max() == pytest.approx(1.0, abs=1e-3)
