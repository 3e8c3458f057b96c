"""The translate entry point on a trained workdir: greedy and beam search."""

import subprocess
import sys

import pytest
from tiny_training import REPO

from flaxformer_lite.translate import Translator


def test_translate_cli_reads_lines_and_writes_one_output_each(trained_run, tmp_path):
    workdir, _ = trained_run
    source = tmp_path / "in.txt"
    source.write_text("0123\n321\n\n")
    for beam_size in (1, 3):
        output = tmp_path / f"out{beam_size}.txt"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flaxformer_lite.translate",
                f"--workdir={workdir}",
                f"--input={source}",
                f"--output={output}",
                f"--beam_size={beam_size}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(output.read_text().splitlines()) == 3


def test_translator_output_does_not_depend_on_batching(trained_run):
    """The copying model gives each line its own output, so a row mixed up between
    batches, or a padding row leaking into the output, changes the result."""
    workdir, _ = trained_run
    translator = Translator(str(workdir))
    lines = ["0123", "5555", "98", "741", "30", "86429"]  # in batches of 4: 4, then 2 + 2 padding
    for beam_size in (1, 3):
        one_by_one = [
            translator.translate([line], beam_size=beam_size, batch_size=1)[0] for line in lines
        ]
        assert one_by_one == lines  # the model copies: every output differs
        batched = translator.translate(lines, beam_size=beam_size, batch_size=4)
        assert batched == one_by_one, beam_size


def test_translator_names_a_missing_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        Translator(str(tmp_path))
