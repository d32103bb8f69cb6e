"""The one cache: keyed on the weights (the model's fingerprint), the image and the spec."""
import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import models
from cnnviz.app import cache
from cnnviz.images import load_image
from cnnviz.predict import PredictSpec, probabilities


@pytest.fixture
def cat(samples):
    data = samples["cat"].read_bytes()
    return load_image(data, "cat.jpg"), cache.sha(data)


def test_random_models_are_the_same_in_every_build():
    a, b = models.load("torchvision:resnet18@random"), models.load("torchvision:resnet18@random")
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != models.load("torchvision:mobilenet_v2@random").fingerprint


def test_a_rebuilt_model_with_other_weights_never_gets_the_old_result(cat):
    image, sha = cat
    old = models.load("torchvision:resnet18@random")
    before = cache.run(PredictSpec(), old, image, sha).probs
    # Evicted and rebuilt under the same id, but with other weights (another seed, a
    # re-exported checkpoint): the cache must not hand back the old model's numbers.
    new = models.load("torchvision:resnet18@random")
    new.net.fc.weight = nn.Parameter(torch.randn_like(new.net.fc.weight), requires_grad=False)
    assert new.id == old.id and new.fingerprint != old.fingerprint
    after = cache.run(PredictSpec(), new, image, sha).probs
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, probabilities(new, image))
    # ... and the old weights still get theirs (a hit, same numbers).
    np.testing.assert_array_equal(cache.run(PredictSpec(), old, image, sha).probs, before)


def test_the_key_is_the_spec_not_only_the_model(cat):
    image, sha = cat
    model = models.load("torchvision:resnet18@random")
    assert len(cache.run(PredictSpec(3), model, image, sha).top) == 3
    assert len(cache.run(PredictSpec(5), model, image, sha).top) == 5
