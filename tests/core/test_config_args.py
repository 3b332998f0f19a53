"""Tests for jaxkd.core.config_args: strict parsing of ``--config file.py:arg``."""

import pytest

from jaxkd.core.config_args import ConfigArgs, check_choice, parse_config_arg

FLAGS = ("smoke", "fast")
DEFAULTS = {"seed": 0, "lr": 0.1, "teacher": "resnet8x4", "augment": True}


def parse(arg):
    return parse_config_arg(arg, flags=FLAGS, defaults=DEFAULTS)


@pytest.mark.parametrize("arg", [None, "", "  "])
def test_empty_arg_gives_defaults(arg):
    args = parse(arg)
    assert args.as_dict() == {
        "smoke": False,
        "fast": False,
        "seed": 0,
        "lr": 0.1,
        "teacher": "resnet8x4",
        "augment": True,
    }


def test_flags_and_keys_are_coerced_to_the_default_types():
    args = parse("smoke, seed=3 ,lr=1e-3,teacher=wrn_40_2,augment=no")
    assert args.smoke is True and args.fast is False
    assert args.seed == 3 and type(args.seed) is int
    assert args.lr == pytest.approx(1e-3) and type(args.lr) is float
    assert args.teacher == "wrn_40_2"
    assert args.augment is False


def test_int_value_for_float_key_becomes_float():
    args = parse("lr=2")
    assert args.lr == 2.0 and type(args.lr) is float


def test_negative_int():
    assert parse("seed=-7").seed == -7


@pytest.mark.parametrize("text", ["False", "false", "FALSE", "0", "no", "No"])
def test_false_strings_parse_as_false(text):
    assert parse(f"augment={text}").augment is False


@pytest.mark.parametrize("text", ["True", "true", "1", "yes", "YES"])
def test_true_strings_parse_as_true(text):
    assert parse_config_arg(f"flag={text}", defaults={"flag": False}).flag is True


def _error(arg, **kwargs):
    with pytest.raises(ValueError) as info:
        parse_config_arg(arg, flags=FLAGS, defaults=DEFAULTS, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    "arg, token",
    [
        ("smok", "smok"),  # Unknown flag.
        ("smoke,sed=3", "sed=3"),  # Unknown key.
        ("smoke=true", "smoke=true"),  # A flag given a value.
        ("seed", "seed"),  # A key without a value.
        ("seed=", "seed="),  # An empty value.
        ("seed=1,seed=2", "seed=2"),  # Duplicate key.
        ("smoke,smoke", "smoke"),  # Duplicate flag.
        ("seed=3.5", "seed=3.5"),  # Not an int.
        ("seed=three", "seed=three"),
        ("lr=fast", "lr=fast"),  # Not a float.
        ("augment=maybe", "augment=maybe"),  # Not a bool.
        ("augment=False2", "augment=False2"),
        ("smoke,,seed=1", ""),  # Empty item.
        ("=3", "=3"),  # No name.
    ],
)
def test_errors_name_the_token_and_list_what_is_valid(arg, token):
    message = _error(arg, config_path="configs/kd/digits.py")
    assert message.startswith(f"Bad config arg item {token!r} in ")
    assert "smoke, fast" in message  # Valid flags.
    for key in ("seed=0", "lr=0.1", "teacher=resnet8x4", "augment=true"):
        assert key in message  # Valid keys with their defaults.
    assert "--config configs/kd/digits.py:smoke,seed=0" in message


def test_error_example_uses_the_callers_config_path(tmp_path):
    config_dir = tmp_path / "configs" / "kd"
    config_dir.mkdir(parents=True)
    config_file = config_dir / "digits.py"
    config_file.write_text(
        "from jaxkd.core.config_args import parse_config_arg\n"
        "def get_config(arg=None):\n"
        "    return parse_config_arg(arg, flags=('smoke',), defaults={'seed': 0})\n"
    )
    namespace = {"__file__": str(config_file)}
    exec(compile(config_file.read_text(), str(config_file), "exec"), namespace)
    with pytest.raises(ValueError, match=r"--config configs/kd/digits\.py:smoke,seed=0"):
        namespace["get_config"]("bogus")
    assert namespace["get_config"]("smoke,seed=3").seed == 3


def test_duplicate_message_says_so():
    assert "more than once" in _error("seed=1,seed=1")


def test_result_is_read_only():
    args = parse("smoke")
    assert isinstance(args, ConfigArgs)
    with pytest.raises(AttributeError):
        args.smoke = False
    with pytest.raises(AttributeError):
        args.new = 1


@pytest.mark.parametrize(
    "flags, defaults",
    [
        (("smoke",), {"smoke": 1}),  # Both a flag and a key.
        (("not valid",), {}),  # Not an identifier.
        ((), {"teacher": None}),  # Unsupported default type.
        ((), {"sizes": (1, 2)}),
    ],
)
def test_bad_spec_is_a_type_error(flags, defaults):
    with pytest.raises(TypeError):
        parse_config_arg(None, flags=flags, defaults=defaults)


def test_check_choice():
    check_choice("model", "mlp", ["mlp", "convnet"])
    check_choice("model", "mlp", {"mlp": object(), "convnet": object()})  # A registry.
    with pytest.raises(ValueError) as info:
        check_choice("model", "resnet", {"mlp": 1, "convnet": 2})
    assert str(info.value) == "model='resnet' is not valid; choose one of: mlp, convnet"
