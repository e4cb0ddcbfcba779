"""The registry: typed configs, clear errors, and third-party plugins via entry points."""

import textwrap

import pytest

from lorabench.api import conformance, registry
from lorabench.api.registry import available_methods, build_config, get_method, parse_assignments
from lorabench.errors import ConfigError, UnknownMethodError


def test_builtin_methods_are_registered_with_size_knobs():
    assert {"lora", "mora", "melora", "moe-lora", "moe-lora-top2", "mor"} <= set(
        available_methods()
    )
    for name in available_methods():
        spec = get_method(name)
        # (IA)³ scales activations: it has no rank, so no size knob
        assert spec.size_knob == (None if name == "ia3" else "r"), name
        assert spec.description
    assert get_method("lora").mergeable and get_method("mora").mergeable
    assert get_method("melora").mergeable
    assert not get_method("mor").mergeable and not get_method("moe-lora").mergeable


def test_presets_share_a_layer_with_different_defaults():
    dense, top2 = build_config("moe-lora"), build_config("moe-lora-top2")
    assert (dense.top_k, dense.aux_loss_coef, dense.num_experts) == (None, 0.0, 8)
    assert (top2.top_k, top2.aux_loss_coef, top2.num_experts) == (2, 0.001, 8)
    assert get_method("moe-lora").layer_cls is get_method("moe-lora-top2").layer_cls


def test_unknown_method_lists_known_ones():
    with pytest.raises(UnknownMethodError) as err:
        get_method("dora2")
    assert str(err.value).startswith(
        "unknown method 'dora2'; known methods: ia3, loha, lokr, lora, melora"
    )


@pytest.mark.parametrize(
    "method,overrides,message",
    [
        ("lora", {"rank": "8"}, "method 'lora' has no config field 'rank'; fields: r, alpha"),
        ("lora", {"r": "eight"}, "lora.r: expected an integer, got 'eight'"),
        ("lora", {"r": 2.5}, "lora.r: expected an integer, got 2.5"),
        ("lora", {"r": True}, "lora.r: expected an integer, got True"),
        ("lora", {"use_rslora": "maybe"}, "lora.use_rslora: expected a boolean"),
        ("lora", {"r": 0}, "lora.r: expected a positive integer, got 0"),
        ("lora", {"dropout": "1.5"}, "lora.dropout: expected a probability in [0, 1), got 1.5"),
        ("mora", {"mora_type": "3"}, "mora.mora_type: expected 1 or 6, got 3"),
        ("mor", {"router": "topk"}, "mor.router: expected one of ['softmax', 'mean', 'balanced']"),
        (
            "moe-lora",
            {"top_k": "9"},
            "moe-lora.top_k: expected None or an integer in [1, num_experts=8]",
        ),
    ],
)
def test_config_errors_name_field_and_expectation(method, overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(method, overrides)
    assert message in str(err.value)


def test_string_values_are_parsed_to_field_types():
    cfg = build_config(
        "moe-lora", parse_assignments(["r=4", "top_k=none", "alpha=3", "dropout=0.1"])
    )
    assert (cfg.r, cfg.top_k, cfg.alpha, cfg.dropout) == (4, None, 3.0, 0.1)
    assert isinstance(cfg.alpha, float)
    assert build_config("lora", {"use_rslora": "true"}).use_rslora is True
    assert build_config("mora", {"mora_type": "1"}).mora_type == 1
    with pytest.raises(ConfigError, match="expected key=value, got 'r8'"):
        parse_assignments(["r8"])


TOY_PLUGIN = textwrap.dedent(
    '''
    """A third-party plugin: a diagonal-scaled LoRA, written only against lorabench.api."""
    from dataclasses import dataclass

    import torch

    from lorabench.api.layer import AdaptedLinear, kaiming_uniform_, knob
    from lorabench.api.registry import MethodSpec


    @dataclass
    class ToyConfig:
        r: int = knob(2, "rank")


    class ToyLinear(AdaptedLinear):
        """Toy: Δ(x) = B diag(d) A x."""

        mergeable = True

        def __init__(self, base_layer, config):
            super().__init__(base_layer)
            self.A = self.new_param(config.r, self.in_features)
            self.d = self.new_param(config.r)
            self.B = self.new_param(self.out_features, config.r)
            kaiming_uniform_(self.A, self.in_features)
            with torch.no_grad():
                self.d.fill_(1.0)

        @staticmethod
        def param_count(config, d_in, d_out):
            return config.r * (d_in + d_out + 1)

        def delta(self, x_dropped, x):
            return ((x_dropped @ self.A.T) * self.d) @ self.B.T


    SPEC = MethodSpec("toy-diag", ToyConfig, ToyLinear, "r", "toy plugin from an entry point")
    '''
)


@pytest.fixture
def toy_entry_point(tmp_path, monkeypatch):
    """Install a real distribution on sys.path that declares a lorabench.methods entry point."""
    (tmp_path / "toy_lorabench_plugin.py").write_text(TOY_PLUGIN)
    dist = tmp_path / "toy_lorabench_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toy-lorabench-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[lorabench.methods]\ntoy-diag = toy_lorabench_plugin:SPEC\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    registry._REGISTRY.pop("toy-diag", None)


def test_entry_point_plugin_is_registered_and_passes_the_kit(toy_entry_point):
    assert "toy-diag" not in registry._REGISTRY
    assert "toy-diag" in registry.load_entry_points()
    assert "toy-diag" in available_methods()
    spec = get_method("toy-diag")
    assert spec.description == "toy plugin from an entry point"
    conformance.run_all("toy-diag")
    conformance.run_all("toy-diag", {"r": 3}, family="qwen2")


def test_registering_a_config_without_the_size_knob_fails():
    from dataclasses import dataclass

    @dataclass
    class NoKnob:
        rank: int = 2

    with pytest.raises(TypeError, match="size knob 'r' is not a config field"):
        registry.register_method("broken", config=NoKnob)(get_method("lora").layer_cls)
