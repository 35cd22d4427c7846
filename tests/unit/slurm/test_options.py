"""What a student may ask Slurm for: rootless_gpu_spawner.slurm.options."""

import pytest
from tornado import web

from rootless_gpu_spawner.slurm.options import SlurmLimits, form_to_options, render_slurm_fields, validate_slurm_options

LIMITS = SlurmLimits("gpu", ("gpu", "long"), 60, 240, 1, 2, 1, 8, 0, 32000, ("partition", "time", "gpus"))


def test_defaults_when_nothing_is_asked():
    assert validate_slurm_options({}, LIMITS) == {"partition": "gpu", "time": 60, "gpus": 1, "cpus": 1, "memory": 0}


def test_allowed_changes():
    got = validate_slurm_options({"partition": "long", "time": "120", "gpus": 2}, LIMITS)
    assert got["partition"] == "long" and got["time"] == 120 and got["gpus"] == 2


@pytest.mark.parametrize("options,words", [
    ({"partition": "debug"}, "not offered"),
    ({"partition": ["gpu"]}, "not offered"),
    ({"time": 0}, "out of range"),
    ({"time": 241}, "out of range"),
    ({"time": "1e3"}, "whole number"),
    ({"time": "١٢"}, "whole number"),  # non-ASCII digits
    ({"gpus": 3}, "out of range"),
    ({"gpus": True}, "whole number"),
    ({"gpus": 1.5}, "whole number"),
    ({"cpus": 2}, "cannot be changed"),
    ({"memory": 100}, "cannot be changed"),
])
def test_refusals_are_400(options, words):
    with pytest.raises(web.HTTPError) as e:
        validate_slurm_options(options, LIMITS)
    assert e.value.status_code == 400 and words in e.value.log_message


def test_form_offers_only_what_may_change_and_escapes():
    limits = SlurmLimits("gpu", ("gpu", "<b>"), 60, 240, 1, 2, 1, 8, 0, 32000, ("partition", "gpus"))
    html = render_slurm_fields(limits)
    assert 'name="gpus"' in html and 'max="2"' in html and 'name="time"' not in html
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert form_to_options({"gpus": ["2"], "time": ["5"], "other": ["x"]}) == {"gpus": "2", "time": "5"}
