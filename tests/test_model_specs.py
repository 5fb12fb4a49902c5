"""The CLI's model specs (torchvision:, timm:, file.py:factory), --weights and imagefolder: data,
all offline and with random weights."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import rdprune as rp
from rdprune.lab import data as D
from rdprune.lab import train

FACTORY = '''
from torch import nn

def tiny(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes))
'''


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rdprune", *args], capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY)
    return path


def test_torchvision_spec_builds_for_the_data_sets_channels_and_classes():
    net = rp.models.build("torchvision:resnet18", 7, 1, image_size=28)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 7
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert "/" not in rp.models.slug("torchvision:resnet18") and ":" not in rp.models.slug(
        "torchvision:resnet18")


def test_file_spec_passes_what_the_factory_accepts_and_its_slug_follows_the_contents(model_file):
    spec = f"{model_file}:tiny"
    net = rp.models.build(spec, 3, 1)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    before = rp.models.slug(spec)
    model_file.write_text(FACTORY + "\n# edited\n")
    assert rp.models.slug(spec) != before  # an edited file never reuses an old checkpoint


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnet_nope", "torchvision has no classification model"),
    ("torchvision:fasterrcnn_resnet50_fpn", "torchvision has no classification model"),
    ("nothere.py:tiny", "does not exist"),
    ("resnet21", "unknown model"),
    ("timm:resnet18", None),  # needs timm: a clear error without it, a model with it
])
def test_bad_specs_are_refused_with_what_to_do(spec, message):
    if spec.startswith("timm:"):
        try:
            import timm  # noqa: F401
        except ImportError:
            with pytest.raises(ValueError, match="pip install"):
                rp.models.check(spec)
            return
        net = rp.models.build(spec, 10, 1).eval()
        assert net(torch.randn(1, 1, 32, 32)).shape == (1, 10)
        return
    with pytest.raises(ValueError, match=message):
        rp.models.check(spec)


def test_a_factory_that_returns_no_module_is_refused(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    return 3\n")
    with pytest.raises(ValueError, match="not an nn.Module"):
        rp.models.build(f"{path}:f", 10, 1)


def test_weights_load_into_the_built_model_and_a_mismatch_says_so(model_file, tmp_path):
    spec = f"{model_file}:tiny"
    src = rp.models.build(spec, 10, 1)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    net = train.pretrained(spec, "fashion_mnist", weights=tmp_path / "w.pt", verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 src.state_dict().values()))
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit"):
        train.pretrained(spec, "fashion_mnist", weights=tmp_path / "other.pt", verbose=False)


def test_cli_baselines_on_a_users_model_and_weights(model_file, tmp_path):
    """The whole path from the shell: a file spec, a checkpoint, nothing trained."""
    spec = f"{model_file}:tiny"
    torch.manual_seed(0)
    torch.save(rp.models.build(spec, 10, 1).state_dict(), tmp_path / "w.pt")
    env = {**os.environ, "RDPRUNE_DATA": str(tmp_path / "data")}
    out = cli("baselines", "--model", spec, "--weights", str(tmp_path / "w.pt"), "--methods",
              "uniform", "lamp", "rd", "--targets", "0.5", "--calib-n", "16", "--grid", "3",
              "--quiet", env=env)
    assert out.returncode == 0, out.stderr
    assert "using weights" in out.stdout and "lamp" in out.stdout
    assert not list((tmp_path / "data").glob("checkpoints/*"))  # nothing was trained
    bad = cli("baselines", "--model", spec, "--weights", str(tmp_path / "none.pt"), env=env)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def _image_folder(root, classes=2, per_class=3):
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                px = (torch.rand(20, 24, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def test_an_image_folder_is_a_data_set(tmp_path):
    name = _image_folder(tmp_path / "imgs")
    inf = D.info(name)
    assert (inf.num_classes, inf.in_channels, inf.image_size) == (2, 3, 224)
    calib = D.calibration(name, 4, seed=0)
    assert calib.shape == (4, 3, 224, 224) and torch.equal(calib, D.calibration(name, 4, seed=0))
    _, test = D.loaders(name, 4)
    x, y = next(iter(test))
    assert x.shape == (4, 3, 224, 224) and set(y.tolist()) <= {0, 1}
    assert "/" not in D.slug(name)
    with pytest.raises(ValueError, match="class folders"):
        D.info(f"imagefolder:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="has 6"):
        D.calibration(name, 7)


def test_hf_spec_builds_an_image_classifier_from_a_local_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, patch_size=7, image_size=224)
    cfg.save_pretrained(tmp_path / "vit")
    net = rp.models.build(f"hf:{tmp_path / 'vit'}", 10, 1).eval()  # Fashion-MNIST's shape
    out = rp.distortion.output_tensor(net(torch.randn(2, 1, 28, 28)))
    assert out.shape == (2, 10)
    from rdprune.core.loops import TensorLoader, evaluate
    loader = TensorLoader(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), 2, shuffle=False)
    assert 0 <= evaluate(net, loader)["top1"] <= 1  # .logits outputs train and evaluate too
    with pytest.raises(ValueError, match="no config"):
        rp.models.check(f"hf:{tmp_path / 'missing'}")
