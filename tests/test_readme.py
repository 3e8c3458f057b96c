"""The README's API example runs and prints what it claims."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    text = README.read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "(1, 5, 1000) (1, 4, 5, 5)" in printed


def test_readme_language_model_example_runs():
    example = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    names = {}
    exec(compile(example, "README.md", "exec"), names)
    assert names["logits"].shape == (1, 6, 300)
    out = names["out"]
    assert out.shape == (1, 16) and out[0, :3].tolist() == [72, 101, 108]  # the prompt is kept
