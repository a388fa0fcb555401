"""Runtime: profile choice, sections, device/AMP, seeds, folders, hub check, summary."""
import os
import time

import numpy as np
import pytest
import torch

from course_lib import runtime


def test_profile_env_override(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "full")
    assert runtime.get_profile().name == "full"
    monkeypatch.setenv("COURSE_PROFILE", "quick")
    assert runtime.get_profile().name == "quick"


def test_ci_means_quick(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert runtime.get_profile().name == "quick"


def test_default_without_cuda_is_quick(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(runtime, "_cuda_available", lambda: False)
    assert runtime.get_profile().name == "quick"
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    assert runtime.get_profile().name == "full"


def test_unknown_profile_names_the_fix():
    with pytest.raises(ValueError, match=r"unknown profile 'fast'.*COURSE_PROFILE=quick"):
        runtime.get_profile("fast")


def test_quick_is_smaller_than_full():
    q, f = runtime.get_profile("quick"), runtime.get_profile("full")
    for key in ("image_size", "n_train", "n_test", "epochs"):
        assert getattr(q, key) < getattr(f, key), key
    assert q.with_(epochs=1).epochs == 1 and q.epochs != 1  # with_ derives, does not mutate


def test_sections_register_and_read():
    runtime.register_section("_test_section", quick=dict(steps=3), full=dict(steps=300))
    assert runtime.get_profile("quick").section("_test_section").steps == 3
    assert runtime.get_profile("full").section("_test_section").steps == 300
    with pytest.raises(ValueError, match="same keys"):
        runtime.register_section("_bad", quick=dict(a=1), full=dict(b=1))
    with pytest.raises(KeyError, match="Import the module"):
        runtime.get_profile("quick").section("_never_registered")


def test_device_and_amp_on_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    dev = runtime.get_device()
    assert isinstance(dev, torch.device)
    cpu = torch.device("cpu")
    assert runtime.amp_dtype(cpu) is None
    with runtime.autocast(cpu):  # a no-op on CPU
        assert torch.ones(2).dtype == torch.float32
    assert not runtime.grad_scaler(cpu).is_enabled()


def test_requesting_absent_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        runtime.get_device("cuda")


def test_seed_everything_repeats():
    runtime.seed_everything(7)
    a = (np.random.rand(3), torch.rand(3))
    runtime.seed_everything(7)
    b = (np.random.rand(3), torch.rand(3))
    assert np.allclose(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "c"))
    p = runtime.cache_dir("features", "x")
    assert p == tmp_path / "c" / "features" / "x" and p.is_dir()


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    explicit = tmp_path / "explicit" / "busi_gt"
    env = tmp_path / "env" / "busi_gt"
    for d in (explicit, env):
        d.mkdir(parents=True)
        (d / "x.png").write_bytes(b"")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "env"))
    assert runtime.find_data_dir("busi_gt", tmp_path / "explicit") == explicit
    assert runtime.find_data_dir("busi_gt", explicit) == explicit  # the dataset folder itself
    assert runtime.find_data_dir("busi_gt") == env
    # an explicit path that does not hold the dataset never falls back to another copy
    assert runtime.find_data_dir("busi_gt", tmp_path / "nowhere") is None


def test_missing_dataset_error_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(runtime.DatasetNotFoundError) as info:
        runtime.require_data_dir("nothing_here", "Some dataset", "https://example.org/get", path=tmp_path)
    msg = str(info.value)
    assert "Some dataset" in msg and str(empty) in msg and "https://example.org/get" in msg
    assert "COURSE_DATA_DIR" in msg


def test_real_data_required_flag(monkeypatch):
    monkeypatch.setenv("COURSE_REQUIRE_REAL_DATA", "1")
    assert runtime.real_data_required()
    monkeypatch.setenv("COURSE_REQUIRE_REAL_DATA", "0")
    assert not runtime.real_data_required()


def test_hub_check_honours_offline_and_is_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert runtime.hub_reachable() is False
    assert time.perf_counter() - t0 < 0.1
    # a probe that hangs (e.g. DNS without network) must not block beyond the timeout
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("COURSE_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("unreachable")

    monkeypatch.setattr(runtime.socket, "create_connection", hang)
    runtime._HUB_CACHE.clear()
    t0 = time.perf_counter()
    assert runtime.hub_reachable("hub.invalid", timeout=0.5) is False
    assert time.perf_counter() - t0 < 1.0
    runtime._HUB_CACHE.clear()


def test_colab_detection(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert runtime.is_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-x")
    assert runtime.is_colab() is True


def test_summary_is_short_and_complete():
    text = runtime.summary(runtime.get_profile("quick"), print_=False)
    lines = text.splitlines()
    assert len(lines) <= 8
    for word in ("profile", "device", "torch", "backbone", "data"):
        assert word in text


def test_timer_measures_the_block():
    import time

    with runtime.Timer() as t:
        time.sleep(0.05)
    assert 0.04 <= t.seconds < 5


# --------------------------------------------------------------------------- bad input (issue 19)
@pytest.mark.parametrize("changes, match", [
    (dict(batch_size=0), "batch_size must be an integer"),
    (dict(epochs=-1), "epochs must be an integer"),
    (dict(image_size=100_000), "image_size must be an integer in"),
    (dict(image_size=4), "image_size must be an integer in"),
    (dict(n_train=2.5), "n_train must be an integer"),
    (dict(lr=float("nan")), "lr must be a number"),
    (dict(seeds=()), "seeds must be a non-empty"),
    (dict(shots=(0, 1)), "shots must be a non-empty"),
    (dict(threads=-1), "threads must be an integer"),
])
def test_profile_rejects_bad_sizes(changes, match):
    P = runtime.get_profile("quick")
    with pytest.raises(ValueError, match=match):
        P.with_(**changes)


def test_bad_profile_env_names_the_variable(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="COURSE_PROFILE='fast'.*quick"):
        runtime.get_profile()
    monkeypatch.setenv("COURSE_PROFILE", "quick")
    monkeypatch.setenv("COURSE_THREADS", "two")
    with pytest.raises(ValueError, match="COURSE_THREADS must be an integer"):
        runtime.get_profile()
    monkeypatch.setenv("COURSE_THREADS", "2")
    assert runtime.get_profile().threads == 2


@pytest.mark.parametrize("value", ["gpu", "cuda0", "tpu", "cpu:x"])
def test_bad_course_device_names_the_variable_and_choices(monkeypatch, value):
    monkeypatch.setenv("COURSE_DEVICE", value)
    with pytest.raises(ValueError, match=r"COURSE_DEVICE.*cpu.*cuda"):
        runtime.get_device()


def test_cuda_requested_without_cuda_is_a_clear_error(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available.*COURSE_DEVICE"):
        runtime.get_device()
    monkeypatch.delenv("COURSE_DEVICE")
    with pytest.raises(RuntimeError, match="prefer"):
        runtime.get_device("cuda:0")


def test_unwritable_cache_names_course_cache(monkeypatch, tmp_path):
    ro = tmp_path / "ro"
    ro.write_text("a file, not a folder")
    monkeypatch.setenv("COURSE_CACHE", str(ro))
    with pytest.raises(PermissionError, match="COURSE_CACHE"):
        runtime.cache_dir("features")


def test_setup_fixes_the_thread_count(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("COURSE_THREADS", "2")
        P = runtime.setup("quick", quiet=True)
        assert P.threads == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv("COURSE_THREADS")
        runtime.setup("quick", quiet=True)
        assert torch.get_num_threads() == 1  # the quick profile's default
    finally:
        torch.set_num_threads(before)


def test_smoke_mode_keeps_full_shapes_with_quick_counts(monkeypatch):
    runtime.register_section("smoke_test_section", quick=dict(image_size=64, steps=10, lora_rank=2, shots=(1, 2)),
                             full=dict(image_size=224, steps=5000, lora_rank=8, shots=(1, 2, 4, 8, 16)))
    monkeypatch.setenv("COURSE_SMOKE", "1")
    P = runtime.get_profile("full")
    assert P.smoke and P.name == "full" and P.image_size == 224 and P.clip_image_size == 224
    assert P.n_train == runtime.SMOKE_SAMPLES["n_train"] <= runtime._BASE["quick"]["n_train"] and P.epochs == min(runtime._BASE["quick"]["epochs"], runtime.SMOKE_MAX_EPOCHS)
    assert P.seeds == (0,)
    sec = P.section("smoke_test_section")
    assert (sec.image_size, sec.lora_rank, sec.steps, sec.shots) == (224, 8, min(10, runtime.SMOKE_MAX_STEPS), (1, 2))
    monkeypatch.setenv("COURSE_SMOKE", "maybe")
    with pytest.raises(ValueError, match="COURSE_SMOKE"):
        runtime.get_profile("full")
    monkeypatch.delenv("COURSE_SMOKE")
    assert not runtime.get_profile("full").smoke and runtime.get_profile("full").section("smoke_test_section").steps == 5000


def test_smoke_mode_keeps_code_path_strings_and_caps_counts(monkeypatch):
    """Names that pick a code path (encoder, mode) keep the full profile's value; steps/epochs/seeds are capped."""
    runtime.register_section("smoke_test_paths", quick=dict(encoder="sonoclip-tiny", mode="lit", steps=30, epochs=6,
                                                            seeds=3, stage1_seeds=(0, 1, 2), n_train=64),
                             full=dict(encoder="facebook/sam2.1-hiera-small", mode="clip", steps=6000, epochs=50,
                                       seeds=3, stage1_seeds=(0, 1, 2), n_train=2000))
    monkeypatch.setenv("COURSE_SMOKE", "1")
    sec = runtime.get_profile("full").section("smoke_test_paths")
    assert (sec.encoder, sec.mode) == ("facebook/sam2.1-hiera-small", "clip")
    assert (sec.steps, sec.epochs, sec.seeds, sec.stage1_seeds, sec.n_train) == (
        runtime.SMOKE_MAX_STEPS, runtime.SMOKE_MAX_EPOCHS, 1, (0,), 64)
    monkeypatch.delenv("COURSE_SMOKE")
    q = runtime.get_profile("quick").section("smoke_test_paths")  # the quick profile is untouched
    assert (q.encoder, q.mode, q.steps, q.seeds) == ("sonoclip-tiny", "lit", 30, 3)


def test_smoke_shots_leave_test_images_in_the_real_pools(monkeypatch):
    """BUSI pools hold max_real // 2 images per class (notebooks 03/04) and notebook 02 draws k shots from max_real
    per class: the largest k must leave test images in both (it did not: k=16 with 8 per class)."""
    monkeypatch.setenv("COURSE_SMOKE", "1")
    P = runtime.get_profile("full")
    assert max(P.shots) < P.max_real // 2 and min(P.shots) >= 1
    assert max(P.shots) < P.n_train // 4  # SonoSynth pools (two classes, ~25 % malignant) hold the largest k too


def test_section_smoke_overrides_counts_only(monkeypatch):
    runtime.register_section("smoke_test_override", quick=dict(n_val=10, image_size=64), full=dict(n_val=150, image_size=512),
                             smoke=dict(n_val=2))
    monkeypatch.setenv("COURSE_SMOKE", "1")
    assert vars(runtime.get_profile("full").section("smoke_test_override")) == dict(n_val=2, image_size=512)
    monkeypatch.delenv("COURSE_SMOKE")
    assert runtime.get_profile("quick").section("smoke_test_override").n_val == 10
    assert runtime.get_profile("full").section("smoke_test_override").n_val == 150
    with pytest.raises(ValueError, match="only override counts"):
        runtime.register_section("smoke_test_bad", quick=dict(image_size=64), full=dict(image_size=512),
                                 smoke=dict(image_size=64))
    with pytest.raises(ValueError, match="unknown keys"):
        runtime.register_section("smoke_test_bad", quick=dict(steps=1), full=dict(steps=2), smoke=dict(stepz=1))
