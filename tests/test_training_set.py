"""training_set.py: the checks made once when the training set is opened (image sizes against input_size,
at least two classes, every label in range); the images skipped while training are tested on real runs in
test_trainer.py and test_train.py."""
import pytest

from uniformface.base.config import load_config
from uniformface.data import open_train_set
from uniformface.train.training_set import check_training_set


def checked(tree, *overrides):
    """check_training_set on `tree` as the trainer opens it."""
    cfg = load_config(None, [f"dataset.train={tree}", "dataset.exclude_identities=[]", *overrides])
    check_training_set(open_train_set(cfg.dataset.train), cfg, report=True)


def test_image_size_must_match_input_size(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "square", size=(112, 112))
    with pytest.raises(ValueError, match=r"are 112x112 but input_size is \[112, 96\]"):
        checked(tree)
    checked(tree, "input_size=[112, 112]")  # accepted


def test_single_class_is_refused(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "one", n_classes=1, per_class=10)
    with pytest.raises(ValueError, match="1 class"):
        checked(tree)


def test_training_labels_are_checked_once_when_the_set_is_opened(small_tree, monkeypatch):
    from uniformface.data import ImageFolderTrainSet

    original = ImageFolderTrainSet.label
    monkeypatch.setattr(ImageFolderTrainSet, "label", lambda self, i: 7 if i == 3 else original(self, i))
    with pytest.raises(ValueError, match=r"0000000/003.jpg has label 7, outside \[0, 2\)"):
        checked(small_tree)
