"""The command-line converters of the analyses' config fields (`landscape.configs`): each turns a flag's
text into the field's value, or raises argparse.ArgumentTypeError with the fix. Light: no torch."""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Optional, Union

from distill.config import SupervisedConfig
from distill.options import _named as _set_name

SPLITS = ("train", "test")


def _named(name: str) -> Any:
    return functools.partial(_set_name, name)  # argparse names the converter in its messages


@_named("alphas")
def path_alphas(text: str) -> Union[int, list]:
    """``--alphas``: N (that many evenly spaced points on [0, 1], ends included) or comma-separated
    values in [0, 1]."""
    text = text.strip()
    try:
        if "," not in text and "." not in text:
            n = int(text)
            if n < 2:
                raise argparse.ArgumentTypeError(f"{text!r}: a path needs at least 2 points (both ends)")
            return n
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: pass a number of points (e.g. 21) or comma-separated values in [0, 1] (e.g. 0,0.25,0.5,0.75,1)"
        ) from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: the values must lie in [0, 1]")
    return values


@_named("splits")
def split_names(text: str) -> tuple[str, ...]:
    """``--split``: train, test or train,test."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names or any(s not in SPLITS for s in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: pass train, test or train,test")
    return names


@_named("numbers")
def numbers(text: str) -> Any:
    """Comma-separated numbers as a tuple; text that is no list of numbers comes back as it is, for the
    config to refuse with its fix."""
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        return text


@_named("resolution")
def resolution(text: str) -> Union[int, list]:
    """Grid points per axis: N, or NX,NY (a list)."""
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: pass a number of points per axis, or NX,NY") from None
    return values[0] if len(values) == 1 else values


@_named("batches")
def batches(text: str) -> Optional[int]:
    """A number of mini-batches; 0 (or none) for the whole split."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: pass a number of mini-batches >= 0 (0: the whole split)")
    return n


@_named("names")
def names(text: str) -> Union[str, list]:
    """One name, or several comma-separated (a list)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing")
    return names[0] if len(names) == 1 else names


@_named("names")
def name_tuple(text: str) -> tuple[str, ...]:
    """Comma-separated names; none (or nothing) for none."""
    return () if text.strip().lower() in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


@_named("prunable")
def prunable(text: str) -> Union[str, list]:
    """What is pruned: weights or all."""
    value = names(text)
    if value not in ("weights", "all"):
        raise argparse.ArgumentTypeError(f"{text!r}: choose weights or all (from Python also a list of names)")
    return value


@_named("recipe")
def recipe(text: str) -> SupervisedConfig:
    """A `distill.SupervisedConfig` written as JSON."""
    try:
        return SupervisedConfig.from_dict(json.loads(text))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a SupervisedConfig as JSON ({e})") from None
