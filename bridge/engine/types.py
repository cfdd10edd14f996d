"""The DSPy side of signature field types: the annotation DSPy is given for a checked type
(`dspy.Image`, `dspy.History`, pydantic models built from a JSON schema as data), and
checked wire values made into the objects DSPy expects (an image's bytes or URL into a
`dspy.Image`, a conversation into a `dspy.History`).

Nothing here fetches: a `dspy.Image` made from a URL keeps the URL (the provider reads
it), and one made from bytes is a data URL of them with the MIME type sniffed from their
first bytes (never decoded by PIL).
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

import dspy
import pydantic

from dspy_bridge.domain.field_types import (
    AnyMap,
    Choice,
    FieldType,
    History,
    Image,
    ListOf,
    MapOf,
    Nullable,
    Object,
    Scalar,
    contains,
)
from dspy_bridge.domain.field_values import image_mime

if TYPE_CHECKING:
    from dspy_bridge.domain.signatures import FieldSpec, SignatureSpec

SCALAR_ANNOTATIONS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool,
                                      "null": type(None)}


class WireImage(dspy.Image):  # type: ignore[misc]
    """A `dspy.Image` whose formatting is not cached: `dspy.Image.format` keeps its last
    32 images alive in an LRU cache, which in a long-lived worker pins tenants' images
    (each up to the input limit) in memory."""

    def format(self) -> list[dict[str, Any]]:
        return [{"type": "image_url", "image_url": {"url": self.url}}]


class WireObject(pydantic.BaseModel):
    """The base of the models built from a JSON schema. Properties are pydantic fields
    under generated names, aliased to their own (any name a schema allows, even one
    pydantic reserves). An optional property the answer left out is left out of the map
    sent back, as is one it set to null when its type does not admit null."""

    model_config = pydantic.ConfigDict(
        serialize_by_alias=True, validate_by_alias=True, validate_by_name=False,
        allow_inf_nan=False, extra="ignore",
    )
    # Optional properties (by their own names) whose type does not admit null.
    bridge_absent_when_none: ClassVar[frozenset[str]] = frozenset()

    @pydantic.model_serializer(mode="wrap")
    def _wire(self, handler: pydantic.SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not isinstance(data, dict):
            return data
        fields = type(self).model_fields
        unset = {info.alias for name, info in fields.items()
                 if name not in self.model_fields_set and not info.is_required()}
        absent = type(self).bridge_absent_when_none
        return {key: value for key, value in data.items()
                if key not in unset and not (value is None and key in absent)}


class ClosedWireObject(WireObject):
    """`additionalProperties: false`: an answer with other keys does not fit."""

    model_config = pydantic.ConfigDict(extra="forbid")


def model_name(text: str | None, fallback: str) -> str:
    """A class name from a schema's title or a field or property name."""
    words = re.findall(r"[A-Za-z0-9]+", text or "") or re.findall(r"[A-Za-z0-9]+", fallback)
    name = "".join(word[:1].upper() + word[1:] for word in words)[:100]
    return name if name[:1].isalpha() else f"Object{name}"


@functools.lru_cache(maxsize=256)  # types are bounded (domain.field_schema): so is this
def annotation_for(node: FieldType, name: str) -> Any:
    """The annotation DSPy is given for a type (`name` names the models built)."""
    if isinstance(node, Scalar):
        return SCALAR_ANNOTATIONS[node.name]
    if isinstance(node, AnyMap):
        return dict[str, Any]
    if isinstance(node, ListOf):
        return list[annotation_for(node.item, name)]  # type: ignore[misc]
    if isinstance(node, MapOf):
        return dict[str, annotation_for(node.value, name)]  # type: ignore[misc]
    if isinstance(node, Nullable):
        return Optional[annotation_for(node.inner, name)]  # noqa: UP045 - built at run time
    if isinstance(node, Choice):
        return Literal.__getitem__(node.values)
    if isinstance(node, Image):
        return dspy.Image
    if isinstance(node, History):
        return dspy.History
    return _model(node, name)


def _model(node: Object, name: str) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    absent: set[str] = set()
    for index, prop in enumerate(node.properties):
        hint = annotation_for(prop.type, prop.name)
        if prop.required:
            info = pydantic.Field(alias=prop.name, description=prop.description)
        else:
            # An LM often writes null for a property it leaves out: taken as absent.
            hint = Optional[hint]  # noqa: UP045
            info = pydantic.Field(None, alias=prop.name, description=prop.description)
            if not isinstance(prop.type, Nullable):
                absent.add(prop.name)
        fields[f"p{index}"] = (hint, info)
    base = ClosedWireObject if node.closed else WireObject
    model: type[WireObject] = pydantic.create_model(
        model_name(node.title, name), __base__=base, __doc__=node.description, **fields)
    model.bridge_absent_when_none = frozenset(absent)
    return model


def annotation(spec_field: FieldSpec) -> Any:
    """The annotation of a signature field, for DSPy."""
    return annotation_for(spec_field.field_type(), spec_field.name)


# ----- values -----


def image_of(value: bytes | str) -> WireImage:
    """A checked image (bytes, or an http(s) or data URL) as DSPy's Image, fetching
    nothing and decoding nothing."""
    if isinstance(value, bytes):
        mime = image_mime(value) or "application/octet-stream"
        return WireImage(url=f"data:{mime};base64,{base64.b64encode(value).decode('ascii')}")
    return WireImage(url=value)


def dspy_value(value: Any, node: FieldType, fields: Mapping[str, FieldType]) -> Any:
    """A checked wire value as DSPy takes it: images and histories made into DSPy's
    objects, everything else as it is."""
    if value is None or not (contains(node, Image) or contains(node, History)):
        return value
    if isinstance(node, Image):
        return image_of(value)
    if isinstance(node, Nullable):
        return dspy_value(value, node.inner, fields)
    if isinstance(node, ListOf):
        return [dspy_value(item, node.item, fields) for item in value]
    if isinstance(node, MapOf):
        return {key: dspy_value(item, node.value, fields) for key, item in value.items()}
    if isinstance(node, History):
        return dspy.History(messages=[
            {key: dspy_value(item, fields[key], fields) if key in fields else item
             for key, item in message.items()}
            for message in value["messages"]])
    return value


def dspy_values(spec: SignatureSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """A checked map of field values (a call's inputs, a demo) as DSPy takes it."""
    fields = spec.field_types()
    return {name: dspy_value(value, fields[name], fields) if name in fields else value
            for name, value in values.items()}
