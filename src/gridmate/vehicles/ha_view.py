"""What Home Assistant would display; moved to :mod:`gridmate.homeassistant.view`."""

from gridmate.homeassistant.view import Entity, HomeAssistantView, TemplateError, render_template

__all__ = ["Entity", "HomeAssistantView", "TemplateError", "render_template"]
