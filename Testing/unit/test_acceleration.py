"""Execution planning (precision, backend), the OpenVINO backend (numerics, dynamic batch, disk cache), wiring."""

from __future__ import annotations

import pytest
import torch
from engine_fakes import FakeModel, phantom

from automedsam import acceleration, openvino_backend
from automedsam import runner as runner_module
from automedsam.acceleration import ExecutionPlan, autocast_dtype, plan_execution
from automedsam.engine import EmbeddingCache, EngineOptions, segment
from automedsam.errors import InputError
from automedsam.model.tiny_vit import TinyViT
from automedsam.runner import default_batch_size

CPU = torch.device("cpu")


class TinyModel:
    """Just what `plan_execution` looks at: a TinyViT image encoder."""

    image_size = 64

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.image_encoder = TinyViT(img_size=64, embed_dims=(8, 16, 20, 40), depths=(1, 1, 1, 1),
                                     num_heads=(1, 2, 2, 4), out_chans=32).eval()


@pytest.mark.parametrize(("installed", "expected"), [(True, ExecutionPlan("openvino", "fp32", "bf16")),
                                                      (False, ExecutionPlan("torch", "fp32"))])
def test_auto_plan_on_the_cpu_is_fp32_in_openvino_when_installed(monkeypatch, installed, expected):
    monkeypatch.setattr(acceleration, "openvino_available", lambda: installed)
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: True)
    assert plan_execution(CPU, model=TinyModel()) == expected
    assert plan_execution(CPU, "bf16", model=TinyModel()).precision == "bf16"


def test_the_openvino_decoder_is_bf16_only_on_native_bf16_cpus_and_never_when_fp32_is_asked_for(monkeypatch):
    monkeypatch.setattr(acceleration, "openvino_available", lambda: True)
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: False)
    assert plan_execution(CPU, model=TinyModel()).decoder_precision == "fp32"
    monkeypatch.setattr(acceleration, "cpu_has_native_bf16", lambda: True)
    assert plan_execution(CPU, "fp32", model=TinyModel()).decoder_precision == "fp32"
    assert plan_execution(CPU, "bf16", model=TinyModel()).decoder_precision == "bf16"
    fallback = plan_execution(CPU, "auto", "torch", TinyModel())
    assert fallback.decoder_precision == "fp32" and fallback.description == "torch-fp32, decoder fp32 (PyTorch)"
    assert plan_execution(CPU, model=TinyModel()).description == "openvino-fp32, decoder bf16"


def test_models_without_our_encoder_stay_on_torch_and_fp16_becomes_fp32_in_openvino(monkeypatch):
    monkeypatch.setattr(acceleration, "openvino_available", lambda: True)
    assert plan_execution(CPU, "fp32", model=FakeModel()).backend == "torch"
    assert plan_execution(CPU, "fp16", "openvino", TinyModel()).label == "openvino-fp32"
    assert autocast_dtype(ExecutionPlan("torch", "bf16"), CPU) is None  # CPU decoding stays fp32


def test_bad_settings_are_refused_with_a_message(monkeypatch):
    with pytest.raises(InputError, match="precision"):
        plan_execution(CPU, "int4")
    with pytest.raises(InputError, match="backend"):
        plan_execution(CPU, "fp32", "tensorrt")
    with pytest.raises(InputError, match="CPU only"):
        plan_execution(torch.device("cuda"), "fp32", "openvino")
    monkeypatch.setattr(acceleration, "openvino_available", lambda: False)
    with pytest.raises(InputError, match=r"automedsam\[cpu\]"):
        plan_execution(CPU, "fp32", "openvino", TinyModel())


@pytest.mark.parametrize("options", [EngineOptions(device="cpu", precision="bf16"),
                                     EngineOptions(device="cpu", precision="fp16"),
                                     EngineOptions(device="cpu", precision="fp32", encoder_backend="torch")])
def test_engine_runs_each_precision_setting_with_the_same_labels(options):
    fp32 = EngineOptions(device="cpu", precision="fp32")
    reference = segment(phantom(), ["liver", "spleen"], FakeModel(), fp32).labels
    labels = segment(phantom(), ["liver", "spleen"], FakeModel(), options).labels
    assert (labels == reference).mean() > 0.99 and (labels > 0).any()


def test_cache_keys_differ_between_precisions():
    cache = EmbeddingCache()
    model = FakeModel()
    segment(phantom(), ["liver"], model, EngineOptions(device="cpu", precision="fp32", cache=cache))
    first = model.encoded_slices
    segment(phantom(), ["liver"], model, EngineOptions(device="cpu", precision="bf16", cache=cache))
    assert model.encoded_slices == 2 * first  # bf16 embeddings are not served for an fp32 run, nor vice versa
    segment(phantom(), ["liver"], model, EngineOptions(device="cpu", precision="bf16", cache=cache))
    assert model.encoded_slices == 2 * first


@pytest.mark.parametrize(("free_gb", "expected"), [(0.1, 1), (4.0, 16), (100.0, 64)])
def test_gpu_batch_size_is_sized_from_free_memory(monkeypatch, free_gb, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gb * 1024**3), 80 * 1024**3))
    assert default_batch_size(torch.device("cuda")) == expected
    assert default_batch_size(CPU) == 1


def test_openvino_encoder_matches_pytorch_and_is_cached_on_disk(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    model = TinyModel()
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        expected = model.image_encoder(images)
    fp32 = openvino_backend.openvino_encoder(model.image_encoder, 64, "fp32", cache_root=tmp_path)
    got = fp32(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.allclose(fp32(images[:1]), expected[:1], rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert len(list((tmp_path / "openvino").glob("tinyvit-*.xml"))) == 1

    openvino_backend._COMPILED.clear()
    monkeypatch.setattr(openvino_backend, "convert_module", lambda *a: pytest.fail("converted again despite the cache"))
    bf16 = openvino_backend.openvino_encoder(model.image_encoder, 64, "bf16", cache_root=tmp_path)(images)
    relative = float((bf16 - expected).abs().max() / expected.abs().max())
    assert relative < 0.1
    with pytest.raises(InputError, match="model input"):
        fp32(torch.rand(1, 3, 32, 32))


def test_changed_weights_sizes_or_export_code_name_a_new_conversion(monkeypatch):
    pytest.importorskip("openvino")
    model = TinyModel()
    examples = (torch.rand(2, 3, 64, 64),)
    before = openvino_backend.module_digest(model.image_encoder, examples)
    digest = openvino_backend.module_digest
    assert digest(model.image_encoder, (torch.rand(5, 3, 64, 64),)) == before  # the batch size is dynamic
    assert digest(model.image_encoder, (torch.rand(2, 3, 32, 32),)) != before
    monkeypatch.setattr(openvino_backend, "EXPORT_REVISION", openvino_backend.EXPORT_REVISION + 1)
    assert openvino_backend.module_digest(model.image_encoder, examples) != before
    monkeypatch.undo()
    with torch.no_grad():
        model.image_encoder.neck[0].weight.add_(1.0)
    assert openvino_backend.module_digest(model.image_encoder, examples) != before


def test_cli_defaults_to_the_automatic_fast_path_and_accepts_overrides():
    from automedsam.cli import build_parser

    defaults = build_parser().parse_args(["segment", "ct.nii.gz", "-c", "liver", "-o", "out.seg.nrrd"])
    assert (defaults.precision, defaults.encoder_backend) == ("auto", "auto")
    chosen = build_parser().parse_args(["segment", "ct.nii.gz", "-c", "liver", "-o", "o.nii.gz", "--precision",
                                        "fp32", "--encoder-backend", "torch"])
    assert (chosen.precision, chosen.encoder_backend) == ("fp32", "torch")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "ct.nii.gz", "-o", "o.nii.gz", "--precision", "int8"])


def test_openvino_telemetry_is_off_whenever_openvino_is_used():
    """OpenVINO's converter would send usage events by default; the project never sends data anywhere.

    `openvino` is imported first on purpose: telemetry must stay off even when something else imported it."""
    pytest.importorskip("openvino")
    from automedsam.openvino_backend import import_openvino

    import_openvino()
    import openvino.tools.ovc as ovc

    assert ovc.telemetry.consent is False


def test_openvino_decoder_matches_the_pytorch_decoder_for_any_number_of_pairs(tmp_path):
    pytest.importorskip("openvino")
    from automedsam.model import build_lite_medsam

    torch.manual_seed(0)
    model = build_lite_medsam().eval()
    embeddings, sparse, dense = torch.randn(3, 256, 64, 64), torch.randn(3, 2, 256), torch.randn(3, 256, 64, 64)
    with torch.inference_mode():
        expected = model.decode(embeddings, sparse, dense)[0]
        decoder = openvino_backend.openvino_decoder(model, "fp32", cache_root=tmp_path)
        got = decoder(embeddings, sparse, dense)
        one = decoder(embeddings[1:2], sparse[1:2], dense[1:2])
    scale = float(expected.abs().max())
    assert got.shape == (3, 1, 256, 256) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4 * scale)
    assert torch.allclose(one, expected[1:2], atol=1e-4 * scale)
    assert len(list((tmp_path / "openvino").glob("sam-decoder-*.xml"))) == 1
    with pytest.raises(InputError, match="one prompt per image"):
        decoder(embeddings, sparse[:2], dense)


def test_openvino_decoder_in_chunks_gives_the_logits_of_one_pair_at_a_time(tmp_path):
    pytest.importorskip("openvino")
    from automedsam.model import build_lite_medsam

    torch.manual_seed(0)
    model = build_lite_medsam().eval()
    n = openvino_backend.PAIR_CHUNK * 2 + 1  # two chunks and one pair alone
    embeddings, sparse, dense = torch.randn(n, 256, 64, 64), torch.randn(n, 2, 256), torch.randn(n, 256, 64, 64)
    with torch.inference_mode():
        decoder = openvino_backend.openvino_decoder(model, "fp32", cache_root=tmp_path)
        together = decoder(embeddings, sparse, dense)
        alone = torch.cat([decoder(embeddings[i:i + 1], sparse[i:i + 1], dense[i:i + 1]) for i in range(n)])
        assert decoder(embeddings[:0], sparse[:0], dense[:0]).shape == (0, 1, 256, 256)
    assert together.shape == (n, 1, 256, 256)
    assert torch.allclose(together, alone, atol=1e-5 * float(alone.abs().max()))


def test_the_decoder_follows_the_encoder_plan(monkeypatch):
    from automedsam.model import build_lite_medsam

    made = []
    monkeypatch.setattr(runner_module, "openvino_decoder", lambda model, precision: made.append(precision) or "ov")
    model = build_lite_medsam()
    make = runner_module.make_backend_decoder
    assert make(model, CPU, ExecutionPlan("openvino", "fp32", "bf16")) == "ov"
    assert make(model, CPU, ExecutionPlan("openvino", "bf16")) == "ov"
    assert made == ["bf16", "fp32"]
    assert make(model, CPU, ExecutionPlan("torch", "fp32")) is None
    assert make(FakeModel(), CPU, ExecutionPlan("openvino", "fp32")) is None


def test_the_digest_is_remembered_but_follows_in_place_weight_changes():
    pytest.importorskip("openvino")
    model = TinyModel()
    examples = (torch.rand(2, 3, 64, 64),)
    first = openvino_backend.module_digest(model.image_encoder, examples)
    assert openvino_backend.module_digest(model.image_encoder, examples) == first
    with torch.no_grad():
        model.image_encoder.neck[0].weight.mul_(2.0)  # same storage, new version
    assert openvino_backend.module_digest(model.image_encoder, examples) != first


def test_an_openvino_failure_on_the_automatic_path_falls_back_to_pytorch_with_a_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("conversion failed (simulated)")

    monkeypatch.setattr(runner_module, "plan_execution", lambda device, precision, backend, model: ExecutionPlan(
        "openvino" if backend == "auto" else backend, "fp32"))
    monkeypatch.setattr(runner_module, "make_encode", lambda model, device, plan: broken() if plan.backend == "openvino"
                        else model.encode)
    warnings: list[str] = []
    reference = segment(phantom(), ["liver"], FakeModel(), EngineOptions(device="cpu", encoder_backend="torch"))
    result = segment(phantom(), ["liver"], FakeModel(), EngineOptions(device="cpu", warn=warnings.append))
    assert (result.labels == reference.labels).all() and result.labels.any()
    assert len(warnings) == 1 and "OpenVINO" in warnings[0] and "simulated" in warnings[0]
    assert result.messages == warnings
    with pytest.raises(RuntimeError, match="simulated"):  # asked for OpenVINO explicitly: no silent fallback
        segment(phantom(), ["liver"], FakeModel(), EngineOptions(device="cpu", encoder_backend="openvino"))


def test_the_decoder_is_prepared_once_per_model(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from automedsam.model import build_lite_medsam

    model = build_lite_medsam().eval()
    first = openvino_backend.openvino_decoder(model, "fp32", cache_root=tmp_path)
    monkeypatch.setattr(openvino_backend, "_cached_ir", lambda *a: pytest.fail("prepared again for the same model"))
    monkeypatch.setattr(openvino_backend.hashlib, "blake2b", lambda *a, **k: pytest.fail("weights hashed again"))
    assert openvino_backend.openvino_decoder(model, "fp32", cache_root=tmp_path) is first


def test_the_refinement_decoder_matches_pytorch_for_any_number_of_tokens(tmp_path):
    pytest.importorskip("openvino")
    from automedsam.model import build_lite_medsam

    torch.manual_seed(0)
    model = build_lite_medsam().eval()
    decoder = openvino_backend.openvino_prompt_decoder(model, "fp32", cache_root=tmp_path)
    assert len(list((tmp_path / "openvino").glob("sam-decoder-tokens-*.xml"))) == 1   # one IR for every count
    for tokens, pairs in ((2, 1), (3, 2), (9, 1)):
        embeddings, dense = torch.randn(pairs, 256, 64, 64), torch.randn(pairs, 256, 64, 64)
        sparse = torch.randn(pairs, tokens, 256)
        with torch.inference_mode():
            expected, got = model.decode(embeddings, sparse, dense)[0], decoder(embeddings, sparse, dense)
        assert got.shape == (pairs, 1, 256, 256)
        assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(InputError, match="one prompt per image"):
        decoder(embeddings, sparse[:0], dense)


def test_refinements_decode_in_openvino_on_its_plan_and_fall_back_to_pytorch(monkeypatch, caplog):
    from automedsam.model import build_lite_medsam

    model = build_lite_medsam().eval()
    made = []
    monkeypatch.setattr(runner_module, "openvino_prompt_decoder", lambda m, precision: made.append(precision) or "ov")
    make = runner_module.make_prompt_decoder
    assert make(model, CPU, ExecutionPlan("openvino", "fp32")) == "ov" and made == ["fp32"]
    assert make(model, CPU, ExecutionPlan("torch", "fp32")) is False
    assert make(FakeModel(), CPU, ExecutionPlan("openvino", "fp32")) is False

    def broken(m, precision):
        raise RuntimeError("conversion failed (simulated)\nmore lines")

    monkeypatch.setattr(runner_module, "openvino_prompt_decoder", broken)
    assert make(model, CPU, ExecutionPlan("openvino", "fp32")) is False
    assert "refinements run in PyTorch" in caplog.text and "simulated" in caplog.text
    runner = runner_module.ModelRunner(model, CPU, ExecutionPlan("torch", "fp32"))
    embeddings, sparse, dense = torch.randn(1, 256, 64, 64), torch.randn(1, 5, 256), torch.randn(1, 256, 64, 64)
    with torch.inference_mode():
        assert torch.equal(runner.decode_prompts(embeddings, sparse, dense), model.decode(embeddings, sparse, dense)[0])
