"""The model catalog: its data hangs together, and every name resolves on every platform class."""

import pytest

from moshikit import catalog
from moshikit.catalog import ALIASES, ENTRIES, FAMILIES, choose, explain, runs_on
from moshikit.errors import ModelError, UsageError
from moshikit.platform import GPU, PlatformInfo

APPLE_16 = PlatformInfo("Darwin", "arm64", "3.11", "Apple M2", 8, 16.0, True, mps=True)
APPLE_64 = PlatformInfo("Darwin", "arm64", "3.11", "Apple M3 Max", 16, 64.0, True, mps=True)
CUDA_16 = PlatformInfo("Linux", "x86_64", "3.11", "x86", 16, 64.0, False, [GPU(0, "NVIDIA T4", 16.0, 15.0)])
CUDA_80 = PlatformInfo("Linux", "x86_64", "3.11", "x86", 32, 256.0, False, [GPU(0, "NVIDIA H100", 80.0, 79.0)])
CPU_ONLY = PlatformInfo("Linux", "x86_64", "3.11", "x86", 2, 32.0, False)
PLATFORMS = {"apple-16": APPLE_16, "apple-64": APPLE_64, "cuda-16": CUDA_16, "cuda-80": CUDA_80, "cpu": CPU_ONLY}

EXPECTED = {  # (platform, alias) -> variant
    ("apple-16", "moshika"): "mlx-q4", ("apple-64", "moshika"): "mlx-q8",
    ("cuda-16", "moshika"): "pytorch-q8", ("cuda-80", "moshika"): "pytorch-bf16", ("cpu", "moshika"): "pytorch-bf16",
    ("apple-16", "stt"): "mlx-bf16", ("cuda-16", "stt"): "pytorch-bf16", ("cpu", "stt-en"): "pytorch-bf16",
    ("apple-64", "mimi"): "fp32", ("cuda-80", "mimi"): "fp32",
    ("cpu", "tts"): "pytorch-bf16", ("apple-16", "tts"): "pytorch-bf16", ("cuda-16", "tts-public"): "pytorch-bf16",
    ("cpu", "tts-voices"): "any-fp32", ("apple-16", "pocket"): "any-fp32", ("cuda-80", "pocket-tts-open"): "any-fp32",
}


@pytest.mark.parametrize("plat_name", list(PLATFORMS))
@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_resolves_to_something_that_runs(alias, plat_name):
    plat = PLATFORMS[plat_name]
    c = choose(alias, plat)
    assert c.entry.family == ALIASES[alias]
    assert runs_on(c.entry, plat)[0], runs_on(c.entry, plat)[1]
    assert c.entry.backend != "candle"  # moshikit cannot run those itself
    if c.entry.kind in ("moshi", "stt"):  # TTS runs on PyTorch everywhere (speak has no MLX backend yet)
        assert c.entry.backend == ("mlx" if plat.apple_silicon else "pytorch")
    assert c.reasons[-1] == f"-> {c.entry.repo} (about {c.entry.size_gb:g} GB)"
    want = EXPECTED.get((plat_name, alias))
    if want:
        assert c.entry.variant == want


def test_catalog_is_consistent():
    ids = [e.id for e in ENTRIES]
    assert len(ids) == len(set(ids))
    repos = [e.repo for e in ENTRIES]
    shared = {r for r in repos if repos.count(r) > 1}
    assert shared == {"kyutai/moshiko-pytorch-bf16"}  # Mimi is one file of it
    for e in ENTRIES:
        assert e.family in FAMILIES and e.repo.startswith("kyutai/") and catalog.is_repo_id(e.repo)
        assert e.files and len(set(e.files)) == len(e.files)
        assert e.size_gb > 0 and e.min_memory_gb > 0 and e.purpose
        assert e.backend in catalog.BACKENDS and e.precision in catalog.PRECISION_ORDER
        if e.kind == "voices":  # voice clips and their embeddings (kyutai/tts-voices)
            assert any(f.endswith(".wav") for f in e.files) and any(f.endswith(".safetensors") for f in e.files)
            continue
        if e.family.startswith("pocket-tts"):  # pocket-tts's layout: weights, tokenizer.json, voice states
            assert e.files[0] == "languages/english/model.safetensors" and e.variant == "any-fp32"
            assert any(f.endswith("/tokenizer.json") for f in e.files)
            assert any(f.endswith("/embeddings/alba.safetensors") for f in e.files)
            assert ("GATED" in e.notes) == (e.repo == "kyutai/pocket-tts")
            continue
        if e.family != "mimi":
            assert e.variant == f"{e.backend}-{e.precision}"
            weights = "dsm_tts_" if e.kind == "tts" else "model"  # Kyutai TTS names its weights by model id
            assert any(f.endswith((".safetensors", ".gguf")) and f.startswith(weights) for f in e.files)
            assert any(f.endswith(".model") for f in e.files)  # the text tokenizer
        assert any("mimi" in f or f == catalog.MIMI_FILE for f in e.files)
        if e.precision == "q8" and e.backend != "candle":
            assert "model.q8.safetensors" in e.files
        if e.precision == "q4":
            assert "model.q4.safetensors" in e.files
    # The mimi entry is contained in the repo that holds it.
    mimi = catalog.entries("mimi")[0]
    assert set(mimi.files) <= set(catalog.by_repo(mimi.repo).files)
    for alias, family in ALIASES.items():
        assert family in FAMILIES, alias
    # The Moshi voices have every backend/precision the issue lists.
    for voice in ("moshiko", "moshika"):
        assert {e.variant for e in catalog.entries(voice)} == {
            "pytorch-bf16", "pytorch-q8", "mlx-bf16", "mlx-q8", "mlx-q4", "candle-bf16", "candle-q8"}
    for stt in ("stt-1b-en_fr", "stt-2.6b-en"):
        assert {e.variant for e in catalog.entries(stt)} == {"pytorch-bf16", "mlx-bf16"}


def test_memory_rules_and_explain():
    lines = explain("moshika", CUDA_16)
    assert any(line.startswith("backend pytorch") for line in lines)
    assert any("precision q8" in line and "bf16 wants 24 GB" in line for line in lines)
    assert lines[-1] == "-> kyutai/moshika-pytorch-q8 (about 8.6 GB)"
    assert "precision bf16: 79 GB covers" in " ".join(explain("moshiko", CUDA_80))  # the free memory
    small_gpu = PlatformInfo("Linux", "x86_64", "3", "x", 4, 16.0, False, [GPU(0, "small", 6.0)])
    c = choose("moshika", small_gpu)
    assert c.entry.variant == "pytorch-q8" and any("may not fit" in w for w in c.warnings)
    cpu = choose("moshiko", CPU_ONLY)
    assert any("pytorch-q8 cannot run here" in r for r in cpu.reasons)
    assert any("CPU" in w for w in cpu.warnings)


def test_variant_overrides():
    assert choose("moshika", CUDA_80, "q8").entry.repo == "kyutai/moshika-pytorch-q8"
    assert choose("moshika", APPLE_64, "q4").entry.repo == "kyutai/moshika-mlx-q4"
    assert choose("moshika", APPLE_64, "bf16").entry.variant == "mlx-bf16"
    assert choose("moshiko", CUDA_80, "torch-q8").entry.variant == "pytorch-q8"
    assert choose("moshiko", CUDA_80, "candle-q8").entry.files[0] == "model.q8.gguf"
    assert choose("kyutai/moshiko-pytorch-q8", CUDA_16).entry.variant == "pytorch-q8"
    with pytest.raises(UsageError, match="has no variant 'q2'") as e:
        choose("moshika", CUDA_80, "q2")
    assert "pytorch-bf16" in e.value.hint
    with pytest.raises(UsageError, match="does not match"):
        choose("kyutai/moshiko-pytorch-q8", CUDA_80, "mlx-q4")


def test_mlx_variant_on_linux_says_so():
    with pytest.raises(ModelError) as e:
        choose("moshika", CUDA_80, "mlx-q4")
    msg = str(e.value)
    assert "MLX" in msg and "Apple silicon" in msg and "CUDA GPU" in msg
    assert "--variant pytorch-bf16 or pytorch-q8" in e.value.hint and "--any-platform" in e.value.hint
    with pytest.raises(ModelError, match="MLX variant"):
        choose("kyutai/stt-1b-en_fr-mlx", CPU_ONLY)
    c = choose("moshika", CUDA_80, "mlx-q4", any_platform=True)
    assert c.entry.repo == "kyutai/moshika-mlx-q4" and "MLX" in c.warnings[0]
    with pytest.raises(ModelError, match="bitsandbytes, which needs a CUDA GPU"):
        choose("moshika", APPLE_64, "pytorch-q8")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ModelError) as e:
        choose("moshka", CPU_ONLY)
    assert "unknown model 'moshka'" in str(e.value) and "moshika" in e.value.hint
    assert "stt-en" in catalog.suggest("stt-enn")
    assert "kyutai/moshiko-mlx-q8" in catalog.suggest("kyutai/moshiko-mlx-q9")
    assert catalog.lookup("someone/other-model", CPU_ONLY) is None
    with pytest.raises(UsageError, match="--variant applies to catalog names"):
        catalog.lookup("someone/other-model", CPU_ONLY, "q8")


def test_platform_specs(monkeypatch):
    assert catalog.platform_from_spec("apple:24").apple_silicon
    assert catalog.platform_from_spec("cuda:80").cuda[0].total_gb == 80
    assert not catalog.platform_from_spec("cpu:8").cuda
    with pytest.raises(UsageError):
        catalog.platform_from_spec("tpu:8")
    monkeypatch.setenv("MOSHIKIT_PLATFORM", "apple:16")
    assert choose("moshiko", catalog.current_platform()).entry.variant == "mlx-q4"
