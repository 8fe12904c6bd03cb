import numpy as np

from backend.learn.heads import ZeroShotHead
from backend.labelstudio.labelconfig import ChoiceLabel
from backend.embed.prompts import label_prompts, label_prototypes
from tests.helpers import choose_labels


def test_prompts_fill_templates_with_every_name_and_split_hint():
    label = ChoiceLabel(output="ham", names=("Not spam", "ham"), hint="a chat message | see you later")
    prompts = label_prompts(label, ("a photo of a {}.", "{}"))
    assert prompts == ["a photo of a Not spam.", "Not spam", "a photo of a ham.", "ham",
                       "a chat message", "see you later"]


class _BagOfWords:
    """A tiny deterministic text encoder: enough to check prototype arithmetic exactly."""

    templates = ("{}", "a {}")
    vocab = ["cat", "dog", "a"]

    def encode_prompts(self, texts):
        rows = np.array([[t.split().count(w) for w in self.vocab] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_prototypes_are_unit_mean_of_prompt_embeddings():
    labels = (ChoiceLabel("cat", ("cat",), None), ChoiceLabel("dog", ("dog",), None))
    protos = label_prototypes(_BagOfWords(), labels)
    assert protos.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, rtol=1e-6)
    # "cat" -> [1,0,0]; "a cat" -> [1,0,1]/sqrt2; mean normalized
    expected = np.array([1 + 1 / np.sqrt(2), 0, 1 / np.sqrt(2)])
    np.testing.assert_allclose(protos[0], expected / np.linalg.norm(expected), rtol=1e-5)


def test_zero_shot_head_ranks_nearest_prototype_and_sums_to_one():
    head = ZeroShotHead(np.eye(3, dtype=np.float32), logit_scale=10.0)
    proba = head.predict_proba(np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.98]], dtype=np.float32))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(proba.argmax(axis=1)) == [0, 2]
    # a sharper temperature means a more confident top choice
    sharper = ZeroShotHead(np.eye(3), logit_scale=50.0).predict_proba(np.array([[0.9, 0.1, 0.0]]))
    assert sharper[0, 0] > proba[0, 0]


def test_choose_labels_single_and_multiple():
    row = np.array([0.1, 0.5, 0.3, 0.1])
    assert choose_labels(row, multiple=False) == [1]
    assert choose_labels(row, multiple=True) == [1, 2]  # 0.3 >= 0.5 * 0.5
