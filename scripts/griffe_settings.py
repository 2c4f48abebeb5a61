"""A griffe extension for the API reference (mkdocs.yml): a function decorated with
`distill.options.with_config` is documented as it runs, not as its source reads. The running function's
docstring ends with the settings section generated from its config class, and its signature lists
every setting with its default; the source declares the settings once, in the config class."""

from __future__ import annotations

import inspect
from typing import Any

import griffe


class ConfigSettings(griffe.Extension):
    """Replace the docstring and parameters of ``@with_config`` functions with the runtime ones."""

    def on_function_instance(self, *, node: Any, func: griffe.Function, **kwargs: Any) -> None:
        if isinstance(node, griffe.ObjectNode) or not any("with_config" in str(d.value) for d in func.decorators):
            return
        runtime = griffe.dynamic_import(func.path)
        old = func.docstring
        func.docstring = griffe.Docstring(
            inspect.getdoc(runtime) or "",
            parent=func,
            parser=old.parser if old else None,
            parser_options=old.parser_options if old else None,
        )
        static = {p.name: p for p in func.parameters}
        params = []
        for p in inspect.signature(runtime).parameters.values():
            own = static.get(p.name) if p.name != "config" else None
            if own is not None and not (own.default is None and p.default is not p.empty):
                params.append(own)  # the function's own argument, annotated as in the source
                continue
            params.append(
                griffe.Parameter(
                    p.name,
                    annotation=None if p.annotation is p.empty else inspect.formatannotation(p.annotation),
                    kind=griffe.ParameterKind(p.kind.description),
                    default=None if p.default is p.empty else repr(p.default),
                )
            )
        func.parameters = griffe.Parameters(*params)
