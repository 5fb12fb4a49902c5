"""The transformer half of the zoo: ``vit_tiny`` (torchvision's VisionTransformer) and
``lm_tiny`` (Hugging Face's GPT2LMHeadModel over bytes of the standard library's source), end to
end: the corpus and its split, smoke training, fast curves = reference with no per-layer
fallback, every allocator under params and FLOPs budgets with both criteria, masks and
evaluation (top-1, perplexity), the KL distortion, and the bad inputs of a language model."""
import copy
import math

import numpy as np
import pytest
import torch

import rdprune as rp
from rdprune import masks as M
from rdprune.core import criteria as C
from rdprune.lab import data as D
from rdprune.lab import models, text

pytest.importorskip("transformers")

ALLOCATORS = ["rd", "owl", "lamp", "uniform", "global", "erk"]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return models.build("lm_tiny", 256, 0, image_size=text.WINDOW).eval()


@pytest.fixture(scope="module")
def windows():
    return D.calibration("pystdlib", 4, seed=0)[:, :32]  # 4 windows of 32 tokens


def test_corpus_is_split_by_file_and_windows_predict_the_next_byte():
    train, test = text.files("train"), text.files("test")
    assert train and test and not set(train) & set(test)
    assert 0.03 < len(test) / (len(train) + len(test)) < 0.2  # about a tenth, by hash
    x, y = D.tensors("pystdlib", "test")
    assert x.dtype == torch.int64 and x.shape[1] == text.WINDOW
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:-1, -1], x[1:, 0])
    blob = text.text("train")
    a = D.calibration("pystdlib", 8, seed=1)
    assert torch.equal(a, D.calibration("pystdlib", 8, seed=1))  # same arguments, same windows
    assert not torch.equal(a, D.calibration("pystdlib", 8, seed=2))
    stride, w = (len(blob) - text.WINDOW) // 8, a.numpy().astype(np.uint8)
    raw, first = bytes(blob), bytes(w[0])
    starts, s = [], raw.find(first)
    while 0 <= s < stride:  # the first window may occur more than once (licence headers)
        starts.append(s)
        s = raw.find(first, s + 1)
    assert any(all((blob[s + i * stride: s + i * stride + text.WINDOW] == w[i]).all()
                   for i in range(8)) for s in starts)  # even strides through the training text
    assert D.slug("pystdlib").startswith("pystdlib-py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data folder for the module: the smoke checkpoints trained once, then reused."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("name,dataset", [("lm_tiny", "pystdlib"), ("vit_tiny", "fashion_mnist")])
def test_smoke_recipe_trains_in_seconds(name, dataset, data_dir, monkeypatch):
    monkeypatch.setenv("RDPRUNE_DATA", str(data_dir))
    _, test = D.loaders(dataset, 64, subset=32)
    torch.manual_seed(0)  # the seed pretrained() builds its model with
    inf = D.info(dataset)
    start = models.build(name, inf.num_classes, inf.in_channels, image_size=inf.image_size)
    before = rp.train.evaluate(start, test)
    net = rp.train.pretrained(name, dataset, "smoke", progress=False, verbose=False)
    after = rp.train.evaluate(net, test)
    assert after["loss"] < before["loss"]
    if inf.text:
        assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    def no_training(*args, **kwargs):
        raise AssertionError("the cached checkpoint should have been loaded")

    monkeypatch.setattr(rp.train, "fit", no_training)
    again = rp.train.pretrained(name, dataset, "smoke", progress=False, verbose=False)
    assert rp.train.state_hash(again) == rp.train.state_hash(net)  # cached, not retrained


@pytest.mark.parametrize("kind", ["lm", "vit"])
def test_fast_curves_equal_the_reference_with_no_per_layer_fallback(kind, lm, windows):
    if kind == "lm":
        net, x = lm, windows
    else:
        torch.manual_seed(0)
        net, x = models.build("vit_tiny").eval(), torch.randn(4, 1, 28, 28)
    fast = rp.rd.curves(net, x, grid=5, cache=False, progress=False)
    ref = rp.rd.curves(net, x, grid=5, cache=False, progress=False, method="reference")
    # the ViT is traced (attention a leaf re-run with the weight swapped in); GPT-2 is not
    # traceable, and every layer replays what precedes it: no layer falls back to the reference
    want = "replay" if kind == "lm" else "fast"
    assert set(fast.attrs["paths"].values()) == {want}, fast.attrs["paths"]
    assert len(fast.attrs["paths"]) == len(M.prunable(net))
    for layer, f in fast.groupby("layer"):
        r = ref[ref.layer == layer]
        scale = r.distortion.abs().max()
        assert np.abs(f.distortion.to_numpy() - r.distortion.to_numpy()).max() <= 1e-5 * scale


@pytest.mark.parametrize("kind,criterion", [("lm", "magnitude"), ("lm", "wanda"),
                                            ("vit", "magnitude")])
def test_every_allocator_meets_params_and_flops_targets(kind, criterion, lm, windows):
    if kind == "lm":
        model, x, (_, test) = lm, windows, D.loaders("pystdlib", 64, subset=8)
    else:
        torch.manual_seed(0)
        model, x = models.build("vit_tiny").eval(), torch.randn(4, 1, 28, 28)
        _, test = D.loaders("fashion_mnist", 64, subset=16)
    curves = rp.rd.curves(model, x, grid=11, cache=False, progress=False, criterion=criterion)
    dense_flops = M.flops(model)
    for method in ALLOCATORS:
        for budget, target in (("params", 0.6), ("flops", 0.5)):
            net, record = rp.prune(model, method, target, budget, calib=x, curves=curves,
                                   criterion=criterion)
            if budget == "params":
                assert M.sparsity(net) >= target - 1e-9, method
            else:
                assert 1 - M.flops(net) / dense_flops >= target - 1e-6, method
            row = rp.train.evaluate(net, test)
            if kind == "lm":
                assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
            else:
                assert 0 <= row["top1"] <= 1 and "perplexity" not in row
    # the masks follow the criterion: Wanda's are not magnitude's
    amounts = {k: 0.5 for k in M.prunable(model)}
    wanda = C.apply(copy.deepcopy(model), amounts, "wanda", x)
    magnitude = M.apply(copy.deepcopy(model), amounts)
    assert any(not torch.equal(a, b) for a, b in zip(M.masks(wanda).values(),
                                                      M.masks(magnitude).values()))


def test_zero_shot_applies_the_criterion_it_is_given(lm, windows):
    curves = rp.rd.curves(lm, windows, grid=5, cache=False, progress=False, criterion="wanda")
    _, test = D.loaders("pystdlib", 64, subset=4)
    table = rp.pipeline.zero_shot(lm, ["rd", "owl"], [0.5], windows, test, curves=curves,
                                  criterion="wanda")
    for (method, target), amounts in table.attrs["amounts"].items():
        direct = C.apply(copy.deepcopy(lm), amounts, "wanda", windows)
        row = table[(table.method == method) & (table.target == target)].iloc[0]
        assert row.distortion == rp.rd.distortion(lm, direct, windows)  # Wanda's masks, exactly
    with pytest.raises(ValueError, match="criterion 'wanda', not 'magnitude'"):
        rp.pipeline.zero_shot(lm, ["rd"], [0.5], windows, test, curves=curves)


def test_kl_distortion_is_zero_at_amount_zero_and_never_negative(lm, windows):
    kl = rp.rd.curves(lm, windows, grid=5, cache=False, progress=False, distortion="kl")
    assert (kl[kl.amount == 0].distortion == 0).all()
    assert (kl.distortion >= 0).all() and (kl[kl.amount == 1].distortion > 0).all()


def test_language_model_bad_inputs_name_the_fix(lm, windows):
    with pytest.raises(ValueError, match="vocabulary has 256"):
        rp.rd.curves(lm, windows + 200, grid=3, cache=False, progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        rp.prune(lm, "owl", 0.5, calib=torch.full_like(windows, -1), criterion="wanda")
    long = D.calibration("pystdlib", 2, seed=0)
    long = torch.cat([long, long], 1)  # 256 tokens, the context is 128
    with pytest.raises(ValueError, match="longer than the model's context of 128"):
        rp.rd.curves(lm, long, grid=3, cache=False, progress=False)
    with pytest.raises(ValueError, match="pass calib="):
        C.apply(copy.deepcopy(lm), {k: 0.5 for k in M.prunable(lm)}, "wanda")
    embedding_only = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no matrix weights"):
        rp.allocate("owl", embedding_only, 0.5, calib=torch.randint(0, 10, (2, 3)))
    with pytest.raises(ValueError, match="text data set"):
        rp.train.pretrained("lm_tiny", "fashion_mnist", "smoke", progress=False, verbose=False)
    with pytest.raises(ValueError, match="images"):
        rp.train.pretrained("resnet20", "pystdlib", "smoke", progress=False, verbose=False)


def test_the_pipeline_prunes_and_fine_tunes_the_lm(data_dir, tmp_path, monkeypatch):
    """``rp.pipeline.run`` (the CLI's ``prune``) on the language model: curves on token windows,
    magnitude masks, a fine-tune on the next-byte loss, perplexity in every round."""
    monkeypatch.setenv("RDPRUNE_DATA", str(data_dir))  # the smoke checkpoint of the test above
    table = rp.pipeline.run("lm_tiny", "pystdlib", "rd", "oneshot", 0.5, recipe="smoke",
                            calib_n=4, grid=3, finetune_steps=2, eval_subset=8, val_n=8,
                            out=tmp_path / "run", progress=False)
    assert table["round"].tolist() == [0, 1]
    assert (table.perplexity > 1).all() and table.sparsity.iloc[-1] >= 0.5 - 1e-9
    assert (tmp_path / "run" / "results.csv").is_file()


def test_token_checks_read_only_the_ids_and_leave_other_models_alone(lm, windows):
    from rdprune.core import batch as B
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, type_vocab_size=2))
    ids = torch.randint(0, 64, (2, 12))
    ok = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
          "token_type_ids": torch.zeros_like(ids), "labels": torch.full((2,), -100)}
    B.check_tokens(bert, ok)  # masks, type ids and ignored labels are not token ids
    with pytest.raises(ValueError, match="vocabulary has 64"):
        B.check_tokens(bert, {**ok, "input_ids": ids + 60})
    with pytest.raises(ValueError, match="context of 32"):
        B.check_tokens(bert, {k: v.repeat(1, 3) if v.dim() == 2 else v for k, v in ok.items()})
    with pytest.raises(ValueError, match="reads token ids"):
        B.check_tokens(lm, torch.randn(2, 1, 28, 28))  # images to a language model
    B.check_tokens(models.build("vit_tiny"), torch.randint(0, 255, (2, 1, 28, 28)))  # no vocabulary
    B.check_tokens(lm, windows)


def test_token_loss_keeps_the_class_axis_of_other_outputs():
    from rdprune.core.loops import token_loss
    torch.manual_seed(0)
    for out, y in ((torch.randn(2, 5, 7, 5), torch.randint(0, 5, (2, 7, 5))),  # C == W
                   (torch.randn(2, 5, 4, 4), torch.randint(0, 5, (2, 4, 4))),
                   (torch.randn(6, 5), torch.randint(0, 5, (6,)))):
        assert torch.equal(token_loss(out, y), torch.nn.functional.cross_entropy(out, y))
    out, y = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))  # (N, T, V) against (N, T)
    assert torch.allclose(token_loss(out, y),
                          torch.nn.functional.cross_entropy(out.transpose(1, 2), y))
