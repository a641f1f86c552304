"""edgekit/progress.py: the batch loop of evaluation and teacher logits, with a bar counting examples."""
from edgekit.progress import batch_starts


def test_batch_starts_are_the_range_and_the_bar_counts_examples(capsys):
    assert list(batch_starts(10, 4, "eval demo")) == [0, 4, 8]
    err = capsys.readouterr().err
    assert "eval demo: 100%" in err and "10/10" in err
    assert list(batch_starts(0, 4, "eval empty")) == []

