"""Model cards rendered from the Jinja templates in `model_cards/` (shipped as `hf_mrl.model_cards`)."""

from __future__ import annotations

from importlib import resources

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["render_card", "card_template"]


def card_template(kind: str) -> str:
    """The template text for `reuser` or `student`, read from the installed package."""
    try:
        return resources.files("hf_mrl.model_cards").joinpath(f"{kind}.md").read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ValueError(f"No model card template {kind!r}: expected model_cards/{kind}.md.") from err


def render_card(kind: str, data: dict) -> ModelCard:
    """Render the `kind` template; `data["card_data"]` (a dict) becomes the YAML metadata header."""
    data = dict(data)
    meta = data.pop("card_data", None) or {}
    card_data = ModelCardData(**meta)
    return ModelCard.from_template(card_data, template_str=card_template(kind), **data)
