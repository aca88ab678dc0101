import numpy as np
import pytest

from shared import reference
from shared.experiments.trace import load_trace


def write(tmp_path, text):
    path = tmp_path / "t.txt"
    path.write_text(text)
    return path


def test_a_trace_is_arrivals_in_seconds_with_reference_prompts(tmp_path):
    trace = load_trace(write(tmp_path, "1500.0,2\n500,7\n\n2500,4999\n"))
    assert list(trace.arrival_s) == [0.5, 1.5, 2.5] and list(trace.prompt_ids) == [7, 2, 4999]
    assert trace.prompt(0) == reference.prompts()[7] and trace.duration_s == 2.5
    assert len(trace.head(2.0)) == 2


def test_a_bad_line_names_its_number(tmp_path):
    with pytest.raises(ValueError, match=r"t.txt:2: expected 'arrival_ms,prompt_id'"):
        load_trace(write(tmp_path, "10,1\nten,2\n"))
    with pytest.raises(ValueError, match="no arrivals"):
        load_trace(write(tmp_path, "\n"))


def test_scaling_multiplies_the_rate_over_the_same_span(tmp_path):
    trace = load_trace(write(tmp_path, "".join(f"{i * 100},{i}\n" for i in range(50))))
    scaled = trace.scaled(8)
    assert len(scaled) == 8 * len(trace)
    assert np.all(np.diff(scaled.arrival_s) >= 0)
    assert scaled.arrival_s[0] == trace.arrival_s[0] and scaled.duration_s < trace.duration_s + 0.1
    assert len(set(scaled.prompt_ids.tolist())) > len(set(trace.prompt_ids.tolist()))


def test_compressing_replays_the_same_jobs_sooner(tmp_path):
    trace = load_trace(write(tmp_path, "".join(f"{i * 1000},{i}\n" for i in range(1, 21))))
    fast = trace.compressed(10)
    assert list(fast.prompt_ids) == list(trace.prompt_ids) and fast.duration_s == pytest.approx(2.0)
    assert fast.name.endswith("@10x") and trace.compressed(1) is trace
    with pytest.raises(ValueError):
        trace.compressed(0)
