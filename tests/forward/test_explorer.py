"""The explorer's data without a browser: escaping of embedded JSON, the normalised error's undefined cases,
the arrays beside the page, and bad input (one message, exit status 2)."""

import json
import re

import numpy as np
import torch

from selfmodels.cli import main
from selfmodels.forward.explore import (
    FLAG_NEAR_ZERO,
    FLAG_OK,
    FLAG_POSITION0,
    category_bits,
    normalised_error,
    worst_positions,
)
from selfmodels.forward.explorer.page import embed_json, render_page


def test_embedded_json_cannot_close_its_script_element_and_reads_back_the_same():
    data = {"title": "t", "vocab": {"1": "</script><script>alert(1)</script>", "2": "<!-- & -->", "3": "a\u2028b"}}
    text = embed_json(data)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == data


def test_the_rendered_page_holds_exactly_its_own_two_scripts():
    data = {"title": "</script> & <b>", "vocab": {"7": "</script><script>window.bad=1</script>"}}
    html = render_page(data)
    assert len(re.findall(r"<script\b", html, flags=re.IGNORECASE)) == 2 and len(re.findall(r"</script", html, flags=re.IGNORECASE)) == 2
    assert "<title>&lt;/script&gt; &amp; &lt;b&gt;</title>" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # no network


def test_normalised_error_is_the_ratio_except_at_position_0_and_near_zero_updates():
    error = torch.tensor([[1.0, 2.0, 3.0, 1.0]])
    update = torch.tensor([[1.0, 4.0, 6.0, 1e-9]])
    ratio, flag = normalised_error(error, update)
    assert flag.tolist() == [[FLAG_POSITION0, FLAG_OK, FLAG_OK, FLAG_NEAR_ZERO]]
    assert ratio[0, 1:3].tolist() == [0.5, 0.5] and torch.isnan(ratio[0, 0]) and torch.isnan(ratio[0, 3])
    # a perfect prediction has error 0 everywhere it is defined
    zero, _ = normalised_error(torch.zeros(2, 3), torch.ones(2, 3))
    assert zero[:, 1:].eq(0).all()


def test_worst_positions_rank_the_whole_set_and_skip_flagged_ones():
    data = {"normalised_error": np.array([[np.nan, 0.1, 0.9], [np.nan, 2.0, 0.3]]),
            "flag": np.array([[1, 0, 0], [1, 0, 0]], dtype=np.int8)}
    assert worst_positions(data, 3) == [(1, 1), (0, 2), (1, 2)]
    assert worst_positions(data, 10)[-1] == (0, 1) and len(worst_positions(data, 10)) == 4


def test_category_bits_follow_the_category_order():
    from selfmodels.forward.categories import CATEGORIES

    masks = {name: torch.tensor([[i == 0, i == 2]]) for i, name in enumerate(CATEGORIES)}
    assert category_bits(masks).tolist() == [[1, 4]]


def test_bad_input_is_one_message_and_exit_status_2(tmp_path, capsys):
    assert main(["forward", "explore", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"experiment": "forward-self-models", "config": {}}))
    assert main(["forward", "explore", str(run)]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "selfmodels forward train" in err and "Traceback" not in err
    (run / "results.json").write_text("{}")
    assert main(["forward", "explore", str(run)]) == 2
    err = capsys.readouterr().err
    assert "forward_model/" in err and "selfmodels forward eval" in err
    assert main(["forward", "explore", str(run), "--out", str(tmp_path / "missing" / "page.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.json").write_text(json.dumps({"experiment": "forward-profile", "config": {}}))
    (profile / "results.json").write_text(json.dumps({"stages": {}}))
    assert main(["forward", "explore", str(profile)]) == 2
    assert "selfmodels forward profile" in capsys.readouterr().err
